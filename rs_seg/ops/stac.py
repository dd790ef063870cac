"""Scenes from a STAC catalog or item collection: the new-imagery run's other source.

Imagery is often published where it is kept, as STAC items whose assets are COGs on a web server
or an object store. :func:`select_scenes` reads a static catalog (walking its child links) or an
ItemCollection file (what a STAC API search returns, saved), keeps the items that pass the
source's collection, bbox and datetime filters, and gives each kept item's asset as a scene: a
URL read window by window through GDAL (:mod:`rs_seg.remote`), or a local file. Items the filters
leave out are listed with the reason, so a report says why an expected scene was not mapped.

A catalog is input from elsewhere, so reading one is bounded and kept where it came from: only
``child`` and ``item`` links are followed, each file once; a link back up the tree (a cycle),
trees deeper than ``MAX_DEPTH``, more than ``MAX_ITEMS`` items and JSON files over
``MAX_DOCUMENT_BYTES`` end the scan in one line. A catalog read over the network may link to and
name only remote files (``stac.allow_local_assets`` lifts that), and the check is made on the
href's text before anything is opened, so a refusal says nothing about which local files exist.

A remote scene cannot be fingerprinted by its bytes without downloading it whole, so its ledger
key is a fingerprint of the item instead (id, collection, properties, the asset and where it
is, without signed query parameters): an item republished with new data or metadata (``updated``,
a new checksum) is mapped again, an unchanged one never is, also when its presigned URL is renewed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urljoin, urlsplit

import pystac

from rs_seg.config import StacSource
from rs_seg.errors import RsSegError
from rs_seg.remote import display, scene_path, url_scheme
from rs_seg.timespan import Interval, parse_range

HTTP_TIMEOUT = 30.0  # seconds per catalog request: a stalled server fails a run, not hangs it
HTTP_RETRIES = 3  # a catalog file that fails (5xx, 429, dropped connection) is asked again
HTTP_RETRY_DELAY = 1.0  # seconds before the first retry, doubled for each next one
# Bounds on what a catalog may make a scan read: hostile or broken sources end in one line.
MAX_DEPTH = 32  # catalogs below the root
MAX_ITEMS = 100_000
MAX_CATALOGS = 100_000
MAX_DOCUMENT_BYTES = 128 << 20  # one JSON file
_REMOTE_ONLY = (
    "a catalog read over the network may only name remote files (http(s)://, s3://, gs://); "
    "set stac.allow_local_assets: true if it may name local ones"
)
_RETRY_STATUS = {429, 500, 502, 503, 504}
# What reading a catalog raises for bad input: unreachable or missing files (urllib's errors are
# OSErrors), bad JSON (a ValueError), JSON that is not STAC (pystac's errors, or the KeyError,
# IndexError, TypeError or AttributeError of a missing, short or mistyped field).
_READ_ERRORS = (
    OSError, ValueError, LookupError, TypeError, AttributeError, pystac.STACError,
    pystac.STACTypeError,
)  # fmt: skip


@dataclass(frozen=True)
class StacScene:
    """One kept item: its scene (as GDAL opens it) and the key the ledger knows it by."""

    item_id: str
    scene: Path
    fingerprint: str


@dataclass(frozen=True)
class Excluded:
    """An item the source's filters left out, and which filter."""

    item_id: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """The items of one scan: scenes to map, and the ones left out."""

    scenes: list[StacScene]
    excluded: list[Excluded]


def select_scenes(source: StacSource) -> Selection:
    """Every item of ``source`` as a scene or as excluded, in item id order.

    Raises a one-line :class:`RsSegError` naming the source for a catalog that cannot be read
    (unreachable, not JSON, not STAC, a child cycle, too deep or too large), for a kept item
    without the source's asset, for a remote catalog that names a local file, and for two kept
    items that share an id but not their scene (they would share a folder).
    """
    root = _absolute(source.href)
    scenes: dict[str, StacScene] = {}
    excluded: list[Excluded] = []
    try:
        for found in _items(source, root):
            item = found.item
            if not isinstance(item.id, str):
                raise TypeError(f"an item's id is {item.id!r}, not text")
            reason = exclusion(source, item)
            if reason is not None:
                excluded.append(Excluded(item.id, reason))
                continue
            href = asset_href(source, item, found.base, found.document)
            scene = StacScene(item.id, _scene_path(root, item, href),
                              item_fingerprint(item, source, href))  # fmt: skip
            if scenes.setdefault(item.id, scene) != scene:
                raise RsSegError(
                    f"{display(root)}: two items have the id {item.id!r} but not the same "
                    "scene, so their maps would share a folder; narrow stac.collections or fix "
                    "the catalog"
                )
    except _READ_ERRORS as exc:
        raise RsSegError(
            f"{display(root)}: cannot read the STAC source ({_first_line(exc)})"
        ) from None
    return Selection(sorted(scenes.values(), key=lambda s: s.item_id),
                     sorted(excluded, key=lambda e: e.item_id))  # fmt: skip


@dataclass(frozen=True)
class _Found:
    """An item, the href its relative asset hrefs resolve against, and the file it came from.

    An item read over the network may name only remote assets.
    """

    item: pystac.Item
    base: str
    document: str


def _items(source: StacSource, root: str) -> list[_Found]:
    """The items of the catalog, collection, item collection or item at ``root``.

    Read all at once (a static catalog's child links are read as they are walked), so a
    broken child fails the scan before anything is claimed.
    """
    data = _read_json(root)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        features = data.get("features")
        if isinstance(features, list) and len(features) > MAX_ITEMS:
            raise RsSegError(f"{display(root)}: {_too_many(len(features))}")
        collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
        return [_Found(item, _self_href(item, root), root) for item in collection]
    if kind == "Feature":
        return [_Found(pystac.Item.from_dict(data, href=root, preserve_dict=False), root, root)]
    if kind not in ("Catalog", "Collection"):
        raise RsSegError(
            f"{display(root)}: not a STAC catalog, collection or item collection "
            f"(type {kind!r}); stac.href must name one"
        )
    return _walk(source, root, data)


def _walk(source: StacSource, root: str, data: dict[str, Any]) -> list[_Found]:
    """The items below a catalog: its child and item links, followed once each.

    Only ``child`` and ``item`` links are read (never ``root``, ``parent`` or ``self``). A
    link back to a catalog on the way down (a cycle, or a catalog that is its own child) is
    refused, as are trees deeper than ``MAX_DEPTH`` and more than ``MAX_ITEMS`` items; a file
    linked twice elsewhere is read once.
    """
    found: list[_Found] = []
    seen = {_identity(root)}
    stack: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [(root, data, (_identity(root),))]
    while stack:
        href, data, path = stack.pop()
        kind_class = pystac.Collection if data.get("type") == "Collection" else pystac.Catalog
        kind_class.from_dict(data, href=href, preserve_dict=False)  # a catalog, or raises
        for rel, link in _links(data):
            target = _link_target(source, root, href, link)
            identity = _identity(target)
            if identity in path:
                raise RsSegError(
                    f"{display(root)}: {_shown(href)} links back to {_shown(target)} (a cycle); "
                    "a STAC catalog must be a tree"
                )
            if identity in seen:
                continue
            seen.add(identity)
            if len(seen) > MAX_ITEMS + MAX_CATALOGS:
                raise RsSegError(f"{display(root)}: {_too_many(len(seen))}")
            child = _read_json(target)
            if rel == "item":
                item = pystac.Item.from_dict(child, href=target, preserve_dict=False)
                found.append(_Found(item, target, target))
                if len(found) > MAX_ITEMS:
                    raise RsSegError(f"{display(root)}: {_too_many(len(found))}")
            elif len(path) > MAX_DEPTH:
                raise RsSegError(
                    f"{display(root)}: catalogs nested more than {MAX_DEPTH} deep (at "
                    f"{_shown(target)})"
                )
            elif isinstance(child, dict):
                stack.append((target, child, (*path, identity)))
            else:
                raise ValueError(f"{_shown(target)} is not a JSON object")
    return found


def _links(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``child`` and ``item`` links of a catalog's JSON, as (rel, href)."""
    links = data.get("links")
    if not isinstance(links, list):
        raise TypeError("links is not a list")
    wanted = []
    for link in links:
        rel = link.get("rel") if isinstance(link, dict) else None
        if rel not in ("child", "item"):
            continue
        href = link.get("href")
        if not isinstance(href, str):
            raise TypeError(f"a {rel} link's href is {href!r}, not text")
        wanted.append((rel, href))
    return wanted


def _link_target(source: StacSource, root: str, document: str, href: str) -> str:
    """Where a child or item link of ``document`` points; no file is touched.

    A catalog read over the network may link only to remote files, unless the source allows
    local ones: pystac's own reader would open a ``file://`` or local child link wherever the
    catalog came from.
    """
    named_by = f"{display(root)}: {_shown(document)} links to"
    return _named_file(source, document, document, href, named_by)


def _named_file(
    source: StacSource, document: str, base: str, href: str, named_by: str, named_as: str = ""
) -> str:
    """``href`` resolved against ``base``: a URL, or a local path where ``document`` may name one.

    A document read over the network may only name remote files unless the source allows
    local ones; a local path, ``file://`` URL or GDAL ``/vsi...`` path is refused before
    anything looks at it, so the message (``<named_by> the local file <href><named_as>``) is
    the same whether the file exists or not.
    """
    target = _joined(base, href)
    if not _is_local(target):
        return target
    if not _is_local(document) and not source.allow_local_assets:
        raise RsSegError(f"{named_by} the local file {_shown(href)}{named_as}; {_REMOTE_ONLY}")
    return _local_path(target)


def _read_json(href: str) -> Any:
    """The JSON file at ``href`` (a local path or an http(s) URL), at most MAX_DOCUMENT_BYTES."""
    if url_scheme(href) is None:
        with Path(href).open("rb") as handle:
            text = _bounded(handle.read(MAX_DOCUMENT_BYTES + 1), href)
    elif url_scheme(href) in ("http", "https"):
        text = _bounded(_http_get(href), href)
    else:
        raise ValueError(f"{_shown(href)}: only http(s) URLs and local files can be read")
    try:
        return json.loads(text)
    except RecursionError:  # [[[[...]]]]: deeper than Python's parser goes
        raise ValueError(f"{_shown(href)}: JSON nested too deeply") from None


def _http_get(href: str) -> bytes:
    """The bytes at an http(s) URL, with a timeout and retries (5xx, 429, dropped connection)."""
    request = urllib.request.Request(href, headers={"User-Agent": "rs_seg"})
    for attempt in range(HTTP_RETRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return bytes(response.read(MAX_DOCUMENT_BYTES + 1))
        except urllib.error.HTTPError as exc:
            if exc.code not in _RETRY_STATUS or attempt == HTTP_RETRIES:
                raise
        except (urllib.error.URLError, OSError):
            if attempt == HTTP_RETRIES:
                raise
        time.sleep(HTTP_RETRY_DELAY * 2**attempt)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _bounded(data: bytes, href: str) -> str:
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{_shown(href)} is larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
    return data.decode("utf-8")


def _too_many(count: int) -> str:
    return f"more than {MAX_ITEMS} items or {MAX_CATALOGS} catalogs (at {count}); split the source"


def _absolute(href: str) -> str:
    """A URL as it is; a local path made absolute, so relative links resolve from its folder."""
    if url_scheme(href) == "file":
        href = _local_path(href)
    return href if url_scheme(href) is not None else str(Path(href).expanduser().resolve())


def _is_local(href: str) -> bool:
    """True unless ``href`` is a URL read over the network.

    ``file://`` URLs and GDAL ``/vsi...`` paths count as local: GDAL may open local files
    through them.
    """
    return url_scheme(href) in (None, "file")


def _joined(document: str, href: str) -> str:
    """``href`` of a link or asset in ``document``, made absolute as STAC resolves it.

    A URL or an absolute path stays as it is, a relative href is resolved against the
    document's own location. Text only: nothing on disk is looked at.
    """
    if url_scheme(href) is not None or PurePath(href).is_absolute() or href.startswith("/"):
        return href
    if url_scheme(document) is not None:
        return urljoin(document, href)
    return os.path.normpath(PurePath(document).parent / href)


def _local_path(href: str) -> str:
    """A local href as a path: ``file://`` URLs lose their scheme, GDAL paths stay as they are."""
    return urlsplit(href).path if url_scheme(href) == "file" else href


def _identity(href: str) -> str:
    """What two links to one file have in common: the URL without its fragment, or the path."""
    return urlsplit(href)._replace(fragment="").geturl() if url_scheme(href) else href


def _self_href(item: pystac.Item, document: str) -> str:
    """Where an item of an item collection says it is (its self link), else the collection."""
    for link in item.links:
        if link.rel == "self" and isinstance(link.target, str) and link.target:
            return _joined(document, link.target)
    return document


def _shown(href: str) -> str:
    """An href in a message, quoted so no character breaks the line; a URL without secrets."""
    return repr(href if _is_local(href) else display(href))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} for {display(exc.url)}"
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename}"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (line {exc.lineno})"
    if isinstance(exc, KeyError):
        return f"not valid STAC: no {text} field"
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def exclusion(source: StacSource, item: pystac.Item) -> str | None:
    """Why the source's filters leave ``item`` out (None when it is kept)."""
    if source.collections is not None and item.collection_id not in source.collections:
        return f"collection {item.collection_id!r} is not one of {source.collections}"
    if source.bbox is not None:
        bbox = _bbox_2d(item.bbox)
        if bbox is None:
            return "the item has no bbox, and the source has a bbox filter"
        if not _intersects(bbox, source.bbox):
            return f"bbox {_rounded(bbox)} is outside {list(source.bbox)}"
    if source.datetime is not None:
        span = _time_span(item)
        if span is None:
            return "the item has no datetime, and the source has a datetime filter"
        if not _overlaps(span, parse_range(source.datetime)):
            return f"datetime {_span_text(span)} is outside {source.datetime}"
    return None


def _bbox_2d(bbox: list[float] | None) -> tuple[float, float, float, float] | None:
    """(west, south, east, north) of a 2D or 3D STAC bbox."""
    if not bbox:
        return None
    if len(bbox) == 6:
        return bbox[0], bbox[1], bbox[3], bbox[4]
    return bbox[0], bbox[1], bbox[2], bbox[3]


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _rounded(bbox: tuple[float, ...]) -> list[float]:
    return [round(v, 6) for v in bbox]


def _time_span(item: pystac.Item) -> tuple[dt.datetime, dt.datetime] | None:
    """The item's datetime, or its start and end datetimes, as aware UTC instants."""
    meta = item.common_metadata
    start = meta.start_datetime or item.datetime
    end = meta.end_datetime or item.datetime
    if start is None or end is None:
        return None
    return _utc(start), _utc(end)


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _overlaps(span: tuple[dt.datetime, dt.datetime], interval: Interval) -> bool:
    start, end = interval
    return (start is None or span[1] >= start) and (end is None or span[0] <= end)


def _span_text(span: tuple[dt.datetime, dt.datetime]) -> str:
    first, last = (moment.isoformat().replace("+00:00", "Z") for moment in span)
    return first if first == last else f"{first}/{last}"


def asset_href(source: StacSource, item: pystac.Item, base: str, document: str) -> str:
    """Where the item's scene asset is: a URL, or an absolute local path.

    A relative href is resolved against the item's own file (``base``), as STAC defines it. An
    item read over the network (``document``) may only name remote assets unless the source
    allows local ones (:func:`_named_file`).
    """
    asset = item.assets.get(source.asset)
    root = display(_absolute(source.href))
    if asset is None:
        keys = ", ".join(sorted(item.assets)) or "none"
        raise RsSegError(
            f"{root}: item {item.id!r} has no asset {source.asset!r} (its assets: {keys}); set "
            "stac.asset to the scene's key"
        )
    if not isinstance(asset.href, str):
        raise TypeError(f"item {item.id!r}: asset {source.asset!r} has no href")
    named_by, named_as = f"{root}: item {item.id!r} names", f" as its {source.asset!r} asset"
    href = _named_file(source, document, base, asset.href, named_by, named_as)
    if not _is_local(href) or href.startswith("/vsi"):
        return href
    return str(Path(href).resolve())


def _scene_path(root: str, item: pystac.Item, href: str) -> Path:
    """The scene GDAL opens for an asset; one line naming the item for a scheme it cannot read."""
    try:
        return scene_path(href)
    except ValueError as exc:
        raise RsSegError(f"{display(root)}: item {item.id!r}: {exc}") from None


def item_fingerprint(item: pystac.Item, source: StacSource, href: str) -> str:
    """What the ledger keys an item's scene by: its id, collection, properties and asset.

    20 hex digits like a file's content fingerprint, so the ledger treats both alike.

    The href counts as :func:`rs_seg.remote.display` shows it (no user info, no signed query
    parameters), so a presigned URL whose signature is renewed is the same scene.
    """
    asset = item.assets[source.asset].to_dict()
    facts: dict[str, Any] = {
        "id": item.id, "collection": item.collection_id, "href": display(href),
        "properties": item.properties, "asset": {k: v for k, v in asset.items() if k != "href"},
    }  # fmt: skip
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
