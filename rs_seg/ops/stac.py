"""Scenes from a STAC catalog or item collection: the new-imagery run's other source.

Imagery is often published where it is kept, as STAC items whose assets are COGs on a web server
or an object store. :func:`select_scenes` reads a static catalog (walking its child links) or an
ItemCollection file (what a STAC API search returns, saved), keeps the items that pass the
source's collection, bbox and datetime filters, and gives each kept item's asset as a scene: a
URL read window by window through GDAL (:mod:`rs_seg.remote`), or a local file. Items the filters
leave out are listed with the reason, so a report says why an expected scene was not mapped.

A remote scene cannot be fingerprinted by its bytes without downloading it whole, so its ledger
key is a fingerprint of the item instead (id, collection, properties, the asset and where it
is): an item republished with new data or metadata (``updated``, a new checksum) is mapped again,
an unchanged one never is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pystac
from pystac.stac_io import DefaultStacIO

from rs_seg.config import StacSource
from rs_seg.errors import RsSegError
from rs_seg.remote import display, scene_path, url_scheme
from rs_seg.timespan import Interval, parse_range

HTTP_TIMEOUT = 30.0  # seconds per catalog request: a stalled server fails a run, not hangs it
HTTP_RETRIES = 3  # a catalog file that fails (5xx, 429, dropped connection) is asked again
HTTP_RETRY_DELAY = 1.0  # seconds before the first retry, doubled for each next one
_RETRY_STATUS = {429, 500, 502, 503, 504}
# What reading a catalog raises for bad input: unreachable or missing files (urllib's errors are
# OSErrors), bad JSON (a ValueError), JSON that is not STAC (pystac's errors, or the KeyError,
# TypeError or AttributeError of a missing or mistyped field).
_READ_ERRORS = (
    OSError, ValueError, KeyError, TypeError, AttributeError, pystac.STACError,
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


class _PatientStacIO(DefaultStacIO):
    """pystac's reader with a timeout and retries for http(s) files (pystac's has neither)."""

    def read_text_from_href(self, href: str) -> str:
        """The file at ``href``: local files as pystac reads them, URLs retried."""
        if url_scheme(href) not in ("http", "https"):
            return super().read_text_from_href(href)
        request = urllib.request.Request(href, headers={"User-Agent": "rs_seg", **self.headers})
        for attempt in range(HTTP_RETRIES + 1):
            try:
                with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                    return bytes(response.read()).decode("utf-8")
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRY_STATUS or attempt == HTTP_RETRIES:
                    raise
            except (urllib.error.URLError, OSError):
                if attempt == HTTP_RETRIES:
                    raise
            time.sleep(HTTP_RETRY_DELAY * 2**attempt)
        raise AssertionError("unreachable")  # the last attempt returns or raises


def select_scenes(source: StacSource) -> Selection:
    """Every item of ``source`` as a scene or as excluded, in item id order.

    Raises a one-line :class:`RsSegError` naming the source for a catalog that cannot be read
    (unreachable, not JSON, not STAC) and for a kept item without the source's asset.
    """
    scenes: list[StacScene] = []
    excluded: list[Excluded] = []
    for item, base in _items(source):
        reason = exclusion(source, item)
        if reason is not None:
            excluded.append(Excluded(item.id, reason))
            continue
        href = asset_href(source, item, base)
        scenes.append(StacScene(item.id, scene_path(href), item_fingerprint(item, source, href)))
    return Selection(
        sorted(scenes, key=lambda s: s.item_id), sorted(excluded, key=lambda e: e.item_id)
    )


def _items(source: StacSource) -> list[tuple[pystac.Item, str]]:
    """The items of the catalog or item collection, each with the href its assets are relative to.

    Read all at once (a static catalog's child links are read as they are walked), so a
    broken child fails the scan before anything is claimed.
    """
    href = _absolute(source.href)
    io = _PatientStacIO()
    try:
        data = io.read_json(href)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            return [(item, item.get_self_href() or href) for item in collection]
        if kind == "Feature":
            item = pystac.Item.from_dict(data, href=href, preserve_dict=False)
            return [(item, href)]
        if kind not in ("Catalog", "Collection"):
            raise RsSegError(
                f"{display(href)}: not a STAC catalog, collection or item collection "
                f"(type {kind!r}); stac.href must name one"
            )
        kind_class = pystac.Collection if kind == "Collection" else pystac.Catalog
        root = kind_class.from_file(href, stac_io=io)  # keeps io for the child links
        return [(item, item.get_self_href() or href) for item in root.get_items(recursive=True)]
    except _READ_ERRORS as exc:
        raise RsSegError(
            f"{display(href)}: cannot read the STAC source ({_first_line(exc)})"
        ) from None


def _absolute(href: str) -> str:
    """A URL as it is; a local path made absolute, so relative links resolve from its folder."""
    return href if url_scheme(href) is not None else str(Path(href).expanduser().resolve())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} for {exc.url}"
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


def asset_href(source: StacSource, item: pystac.Item, base: str) -> str:
    """Where the item's scene asset is: a URL, or an absolute local path.

    A relative href is resolved against the item's own file (``base``), as STAC defines it.
    """
    asset = item.assets.get(source.asset)
    if asset is None:
        keys = ", ".join(sorted(item.assets)) or "none"
        raise RsSegError(
            f"{display(_absolute(source.href))}: item {item.id!r} has no asset "
            f"{source.asset!r} (its assets: {keys}); set stac.asset to the scene's key"
        )
    href = asset.href
    if url_scheme(href) is None and not Path(href).is_absolute():
        href = urljoin(base, href) if url_scheme(base) else str(Path(base).parent / href)
    if url_scheme(href) == "file":
        href = urlsplit(href).path
    return str(Path(href).resolve()) if url_scheme(href) is None else href


def item_fingerprint(item: pystac.Item, source: StacSource, href: str) -> str:
    """What the ledger keys an item's scene by: its id, collection, properties and asset.

    20 hex digits like a file's content fingerprint, so the ledger treats both alike.
    """
    asset = item.assets[source.asset].to_dict()
    facts: dict[str, Any] = {
        "id": item.id, "collection": item.collection_id, "href": href,
        "properties": item.properties, "asset": {k: v for k, v in asset.items() if k != "href"},
    }  # fmt: skip
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def folder_name(item_id: str) -> str:
    """A scene folder name for an item id: characters a file name cannot hold become ``_``."""
    name = re.sub(r"[^\w.+-]", "_", item_id).lstrip(".")
    return name or "_"
