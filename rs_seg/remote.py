"""Scenes where users keep them: URLs of COGs as GDAL virtual file system paths.

A scene given as ``https://host/scene.tif`` or ``s3://bucket/scene.tif`` is read window by window
through GDAL's ``/vsicurl/`` and ``/vsis3/`` (byte-range requests; a COG never needs to be
downloaded whole). Every stage takes scenes as :class:`~pathlib.Path`, so a URL is kept as the
path GDAL opens (``/vsicurl/https://host/scene.tif``) rather than as a second type threaded
through every signature; :func:`display` turns it back into the URL for messages and records.

``Path`` folds ``//`` into ``/``; GDAL reads ``/vsicurl/https:/host/...`` the same, and
:func:`display` restores it. A URL whose own path holds ``//`` cannot be kept this way.

A URL may carry secrets: ``user:password@`` or a presigned query (``X-Amz-Signature=...``, an
Azure SAS, a token). :func:`display`, which every message, log line and stored record uses,
leaves them out (:func:`redact_url`), and so does a config's JSON (a flow run's recorded
parameters); only :func:`gdal_name`, the name a scene is opened by, keeps them.
:func:`redact_text` does the same to URLs quoted in free text (GDAL's errors, log lines).

String work only (no GDAL import): the configs validate scene and output fields with it at
command-line start-up.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

# URL scheme -> GDAL virtual file system; the scheme matches with one or two slashes, since a
# URL that went through Path() has lost one.
_PREFIX = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/"}
_URL = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*):/{1,2}(?P<rest>.*)$", re.IGNORECASE)
_SCHEME = {"/vsis3/": "s3", "/vsigs/": "gs"}
# GDAL file systems that read over the network; the others (/vsimem/, /vsizip/ of a local
# file) are local.
NETWORK_PREFIXES = (
    "/vsicurl/", "/vsicurl?", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/",
    "/vsiswift/", "/vsiwebhdfs/",
)  # fmt: skip


def url_scheme(text: str | Path) -> str | None:
    """The URL scheme of ``text`` (``https``, ``s3``, ...), None for a path.

    One-letter schemes are Windows drive letters (``C:/data``), not URLs.
    """
    match = _URL.match(str(text))
    if match is None or len(match["scheme"]) < 2:
        return None
    return match["scheme"].lower()


def scene_path(value: str | Path) -> Path:
    """A scene as GDAL opens it: a URL becomes its ``/vsicurl/`` or ``/vsis3/`` path.

    Raises ValueError for a URL scheme GDAL has no reader for here (``ftp:``, ``file:``...),
    which would otherwise be taken for a relative file name.
    """
    scheme = url_scheme(value)
    if scheme is None:
        return Path(value)
    if scheme not in _PREFIX:
        raise ValueError(
            f"{display(value)}: {scheme}:// URLs are not supported; use http(s)://, s3:// or gs://"
        )
    match = _URL.match(str(value))
    assert match is not None  # url_scheme matched it
    prefix, rest = _PREFIX[scheme], match["rest"]
    return Path(f"{prefix}{scheme}://{rest}" if prefix == "/vsicurl/" else prefix + rest)


def is_remote(path: str | Path) -> bool:
    """True for a scene read over the network (a URL or a GDAL network file system path)."""
    return url_scheme(path) is not None or str(path).startswith(NETWORK_PREFIXES)


def display(path: str | Path) -> str:
    """A remote scene as its URL without secrets (:func:`redact_url`); a local one as its path."""
    text = str(path)
    if text.startswith("/vsicurl?"):  # GDAL's options form: /vsicurl?url=...&header...
        url = dict(parse_qsl(text.removeprefix("/vsicurl?"))).get("url")
        return redact_url(url) if url else redact_text(text)
    return redact_url(url_text(text)) if is_remote(text) else text


def url_text(path: str | Path) -> str:
    """The URL of a remote scene as given, secrets included: only to open it or pass it on.

    ``/vsicurl/https:/host/x`` is ``https://host/x``, ``/vsis3/b/k`` is ``s3://b/k``; anything
    else is returned as it is.
    """
    text = str(path)
    if text.startswith("/vsicurl/"):
        return re.sub(r"^(https?):/+", r"\1://", text.removeprefix("/vsicurl/"))
    for prefix, scheme in _SCHEME.items():
        if text.startswith(prefix):
            return f"{scheme}://{text.removeprefix(prefix)}"
    if url_scheme(text) is not None:
        return re.sub(r"^([a-z0-9+.-]+):/+", r"\1://", text, flags=re.IGNORECASE)
    return text


def gdal_name(path: str | Path) -> str:
    """The name to open a scene by: a ``/vsicurl/`` path with its URL's ``//`` back.

    GDAL reads ``/vsicurl/https:/host/...`` too, but reports a missing file or an HTTP error
    on it as "Missing url parameter"; the full URL gets GDAL's real reason. Secrets stay in:
    this name is for GDAL only, never for a message or a record.
    """
    text = str(path)
    return "/vsicurl/" + url_text(text) if text.startswith("/vsicurl/") else text


# Query parameters that sign a URL or carry a credential (compared lowercased): presigned S3
# and Google Cloud Storage URLs (every X-Amz-* / X-Goog-* part, and the older
# AWSAccessKeyId/GoogleAccessId + Expires + Signature form), CloudFront (Policy, Key-Pair-Id),
# Azure SAS (sv, se, sp, sig, ...) and generic tokens, keys and passwords. Words match anywhere
# in the name (access_token, api_key, X-Amz-Security-Token): leaving out a harmless parameter
# from a message costs nothing, printing a secret cannot be undone.
_SECRET_PREFIXES = ("x-amz-", "x-goog-", "x-ms-", "x-oss-")
_SECRET_WORDS = ("sig", "token", "key", "secret", "passw", "pwd", "credential", "auth",
                 "session", "expires", "policy", "accessid")  # fmt: skip
_SAS = frozenset((
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "si", "sdd", "skoid", "sktid", "skt",
    "ske", "sks", "skv", "saoid", "suoid", "scid", "sip", "ses", "rscc", "rscd", "rsce", "rscl",
    "rsct", "code",
))  # fmt: skip


def secret_parameter(name: str, in_query: bool = True) -> bool:
    """True for a query parameter that signs a URL or carries a credential.

    ``in_query`` False: a ``name=value`` seen in text outside a query string, where the short
    Azure SAS names (``st``, ``sp``, ``code``) are more likely words of the text.
    """
    key = unquote(name).strip().lower()
    return (
        key.startswith(_SECRET_PREFIXES)
        or any(word in key for word in _SECRET_WORDS)
        or (in_query and key in _SAS)
    )


def redact_url(url: str) -> str:
    """``url`` without its user info and the query parameters that are secrets.

    ``https://user:pw@host/a.tif?X-Amz-Signature=..&v=2`` is ``https://host/a.tif?v=2``. Other
    parameters are kept as they were written; so is a URL without secrets, byte for byte.
    """
    match = _URL.match(url)
    if match is None:
        return url
    scheme, rest = match["scheme"], match["rest"]
    parts = urlsplit(f"{scheme}://{rest}")
    netloc = parts.netloc.rpartition("@")[2]
    query, fragment = _public(parts.query), _public(parts.fragment)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url
    return str(urlunsplit((scheme, netloc, parts.path, query, fragment)))


def _public(query: str) -> str:
    """The ``&``-separated ``name=value`` pairs of ``query`` that are not secrets, as written."""
    pairs = [pair for pair in query.split("&") if pair]
    return "&".join(p for p in pairs if not secret_parameter(p.partition("=")[0]))


# A URL in free text: a scheme of two letters or more (one is a Windows drive), one or two
# slashes (a path through Path() has lost one), up to white space or a quote.
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]+:/{1,2}[^\s'\"<>]+", re.IGNORECASE)
# A secret parameter outside a URL (GDAL quoting a query string alone, a relative request).
_PARAMETER_IN_TEXT = re.compile(r"(?<![\w.-])([\w.-]+)=([^&\s'\"<>]+)")
_TRAILING = ".,;:)]}"  # punctuation after a URL in a sentence, not part of it


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (:func:`redact_url`) and stray secrets masked.

    For messages that quote URLs they did not build: GDAL's errors name the file it failed on,
    query string included; a log line may hold anything.
    """

    def url(match: re.Match[str]) -> str:
        found = match[0]
        kept = found.rstrip(_TRAILING)
        return redact_url(kept) + found[len(kept) :]

    urls_redacted = _URL_IN_TEXT.sub(url, text)

    def parameter(match: re.Match[str]) -> str:
        in_query = urls_redacted[match.start() - 1 : match.start()] in ("?", "&")
        if not secret_parameter(match[1], in_query):
            return match[0]
        value = match[2]
        return f"{match[1]}=***{value[len(value.rstrip(_TRAILING)) :]}"

    return _PARAMETER_IN_TEXT.sub(parameter, urls_redacted)


class RedactingFilter(logging.Filter):
    """A logging filter that takes the secrets out of every URL in a record's message.

    For loggers rs_seg does not write itself: rasterio logs GDAL's warnings ("HTTP error code:
    503 - <URL>. Retrying again"), query strings included, to whatever handler a flow or a
    worker has.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record, its message redacted."""
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def file_name(path: str | Path) -> str:
    """The file name of a scene, without a URL's query string (``?X-Amz-Signature=...``)."""
    if not is_remote(path):
        return Path(path).name
    return PurePosixPath(urlsplit(display(path)).path).name


def scene_stem(path: str | Path) -> str:
    """The file stem of a scene (``scene`` for ``https://host/a/scene.tif?sig=...``)."""
    return PurePosixPath(file_name(path)).stem


def check_local_output(value: str | Path) -> Path:
    """An output path; a URL is refused (outputs are local files, built and renamed in place)."""
    if is_remote(value):
        raise ValueError(
            f"{display(value)} is a URL; outputs are written to local files (staged, then "
            "renamed into place): give a path"
        )
    return Path(value)


def scene_text(value: Any) -> Any:
    """A config's scene field: a URL becomes the GDAL path text it is read through.

    Text, which pydantic's own path validation then takes (in JSON input too); anything else
    is left for that validation to refuse.
    """
    return str(scene_path(value)) if isinstance(value, str | Path) else value


def output_text(value: Any) -> Any:
    """A config's output field: refused when it is a URL (:func:`check_local_output`)."""
    return str(check_local_output(value)) if isinstance(value, str | Path) else value
