"""Builders for remote-imagery tests: tiny COGs and a static STAC catalog pointing at them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pystac
import pytest
import rasterio
import rasterio.shutil
from pyproj import Transformer

from tests.helpers import ORIGIN, PIXEL, UTM, write_scene
from tests.range_server import RangeServer, serving

# GDAL's retries of a failed range request, quick: a test's faults are retried in milliseconds
FAST_RETRIES = {"GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "0.01"}


def write_cog(path: Path, size: int, *, seed: int = 0, blocksize: int = 128, **kwargs) -> Path:
    """A Cloud-Optimized GeoTIFF of random reflectances (``write_scene``), tiled ``blocksize``.

    GDAL's COG driver takes blocks of 128 px and up; smaller ones (more tiles in a tiny test
    scene) make a tiled GeoTIFF, which GDAL reads over HTTP the same way, tile by tile.
    """
    scratch = write_scene(path.with_name(f".{path.stem}.scratch.tif"), size, size, seed=seed,
                          **kwargs)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    if blocksize >= 128:
        options = {"driver": "COG", "blocksize": blocksize}
    else:
        options = {"driver": "GTiff", "tiled": True, "blockxsize": blocksize,
                   "blockysize": blocksize}  # fmt: skip
    rasterio.shutil.copy(scratch, path, compress="DEFLATE", **options)
    scratch.unlink()
    return path


def wgs84_bbox(size: int, origin: tuple[float, float] = ORIGIN) -> list[float]:
    """West, south, east, north in degrees of a ``write_scene`` scene of ``size`` pixels."""
    to_wgs84 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    left, top = origin
    right, bottom = left + size * PIXEL, top - size * PIXEL
    west, south = to_wgs84.transform(left, bottom)
    east, north = to_wgs84.transform(right, top)
    return [west, south, east, north]


def stac_item(
    item_id: str, href: str, when: str, *, size: int = 64, collection: str | None = None,
    asset: str = "visual", bbox: list[float] | None = None,
) -> pystac.Item:  # fmt: skip
    """An item with one COG asset ``asset`` at ``href`` (absolute, or relative to the item)."""
    west, south, east, north = bbox or wgs84_bbox(size)
    geometry = {
        "type": "Polygon",
        "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                         [west, south]]],
    }  # fmt: skip
    item = pystac.Item(
        item_id, geometry, [west, south, east, north], dt.datetime.fromisoformat(when), {},
        collection=collection,
    )  # fmt: skip
    item.add_asset(asset, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def write_catalog(folder: Path, items: list[pystac.Item], collection: str = "fields") -> Path:
    """A self-contained static catalog (catalog.json -> collection -> items) under ``folder``.

    Asset hrefs stay as given, so relative ones resolve against each item's file.
    """
    catalog = pystac.Catalog("test-catalog", "scenes for rs_seg tests")
    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])
    )
    parent = pystac.Collection(collection, "test scenes", extent)
    catalog.add_child(parent)
    for item in items:
        parent.add_item(item)
    catalog.normalize_hrefs(str(folder))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"


def write_item_collection(path: Path, items: list[pystac.Item]) -> Path:
    """An ItemCollection file (a STAC API search's answer, saved): items without links."""
    features = []
    for item in items:
        feature = item.to_dict(include_self_link=False)
        feature["links"] = []
        features.append(feature)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def catalog_dict(catalog_id: str, links: list[tuple[str, str]]) -> dict:
    """A catalog's JSON with ``(rel, href)`` links, hrefs exactly as given."""
    return {
        "type": "Catalog", "stac_version": "1.0.0", "id": catalog_id, "description": "test",
        "links": [{"rel": rel, "href": href} for rel, href in links],
    }  # fmt: skip


@contextlib.contextmanager
def serving_scene(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeServer]:
    """A 160 px tiled COG ``scene.tif`` served from ``root``, read with :data:`FAST_RETRIES`."""
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)
    with serving(root) as served:
        write_cog(served.root / "scene.tif", 160, blocksize=32, seed=4)
        yield served
