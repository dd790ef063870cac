"""Scenes where users keep them: URLs of COGs as GDAL virtual file system paths.

A scene given as ``https://host/scene.tif`` or ``s3://bucket/scene.tif`` is read window by window
through GDAL's ``/vsicurl/`` and ``/vsis3/`` (byte-range requests; a COG never needs to be
downloaded whole). Every stage takes scenes as :class:`~pathlib.Path`, so a URL is kept as the
path GDAL opens (``/vsicurl/https://host/scene.tif``) rather than as a second type threaded
through every signature; :func:`display` turns it back into the URL for messages and records.

``Path`` folds ``//`` into ``/``; GDAL reads ``/vsicurl/https:/host/...`` the same, and
:func:`display` restores it. A URL whose own path holds ``//`` cannot be kept this way.

String work only (no GDAL import): the configs validate scene and output fields with it at
command-line start-up.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

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
            f"{value}: {scheme}:// URLs are not supported; use http(s)://, s3:// or gs://"
        )
    match = _URL.match(str(value))
    assert match is not None  # url_scheme matched it
    prefix, rest = _PREFIX[scheme], match["rest"]
    return Path(f"{prefix}{scheme}://{rest}" if prefix == "/vsicurl/" else prefix + rest)


def is_remote(path: str | Path) -> bool:
    """True for a scene read over the network (a URL or a GDAL network file system path)."""
    return url_scheme(path) is not None or str(path).startswith(NETWORK_PREFIXES)


def display(path: str | Path) -> str:
    """A remote scene as its URL (``https://...``, ``s3://...``); a local one as its path."""
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
    on it as "Missing url parameter"; the full URL gets GDAL's real reason.
    """
    text = str(path)
    return "/vsicurl/" + display(text) if text.startswith("/vsicurl/") else text


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
