"""Label sources: vector polygons or label rasters, turned into 0/1/255 masks window by window.

Vector labels may come in any CRS and are reprojected per scene; invalid polygons are repaired.
Small vector files are read once; large ones are read strip by strip through the file's spatial
index, so memory follows the strip, not the label file or the scene. Label rasters are read through
a nearest-neighbour warped view when they are not pixel-aligned with the scene, so aligned masks and
mosaics covering many scenes go through one code path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rs_seg.config import MASK_BACKGROUND, MASK_CROPLAND, MASK_IGNORE, LabelMap
from rs_seg.errors import RsSegError
from rs_seg.rasters import RasterInfo, gdal_message, open_raster
from rs_seg.windows import read_padded

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite"}
_POLYGON = shapely.GeometryType.POLYGON
Bounds = tuple[float, float, float, float]


class WindowMasks(Protocol):
    """Labels bound to one scene: a 0/1/255 mask for any window of it."""

    def load_strip(self, window: Window) -> None:
        """Fetch what the windows inside ``window`` (a strip of the scene) will need."""

    def mask(self, window: Window) -> np.ndarray:
        """uint8 mask of ``window``: 0 background, 1 cropland, 255 ignore."""


def polygon_parts(geometries: np.ndarray) -> np.ndarray:
    """Repair invalid geometries and keep only their polygon parts (drops stray lines/points)."""
    if len(geometries) == 0:
        return geometries
    repaired = shapely.make_valid(geometries)
    parts = shapely.get_parts(shapely.get_parts(repaired))
    parts = parts[shapely.get_type_id(parts) == _POLYGON]
    return parts[~shapely.is_empty(parts)]


class VectorLayer:
    """A polygon layer read on demand, reprojected into whatever CRS a scene asks for."""

    # Files up to this size (some 10 000 parcels) are read once and indexed in memory, which is
    # fastest when many scenes share one label file; larger ones are read strip by strip through
    # the file's spatial index, so memory stays bounded whatever the scene or label file size.
    in_memory_limit_bytes = 4 * 1024 * 1024

    def __init__(
        self, path: Path, role: str = "labels", layer: str | None = None, where: str | None = None
    ) -> None:
        self.path = Path(path)
        self.role = role
        self.layer = layer
        self.where = where
        info = self._read_info()
        self.crs = CRS.from_user_input(info["crs"])
        self._frame: gpd.GeoDataFrame | None = None
        self._by_crs: dict[str, tuple[np.ndarray, shapely.STRtree]] = {}
        if self.path.stat().st_size <= self.in_memory_limit_bytes:
            self._frame = self._read(bbox=None)
            if len(self._frame) == 0:
                raise RsSegError(self._empty_message(), self.path)
        elif not info.get("capabilities", {}).get("fast_spatial_filter", True):
            log.warning(
                "%s has no spatial index, so every strip rescans it; converting it once "
                "(ogr2ogr out.gpkg %s) makes preparation much faster",
                self.path.name,
                self.path.name,
            )

    def _empty_message(self) -> str:
        suffix = f" matching {self.where!r}" if self.where else ""
        return f"{self.role} file has no features{suffix}"

    def _read_info(self) -> dict:
        if not self.path.exists():
            raise RsSegError(f"{self.role} file not found", self.path)
        try:
            info = pyogrio.read_info(self.path, layer=self.layer)
        except Exception as exc:  # pyogrio raises several DataSourceError flavours
            message = f"cannot read {self.role} as vector data ({gdal_message(exc)})"
            raise RsSegError(message, self.path) from None
        if info.get("features", 0) == 0:
            raise RsSegError(f"{self.role} file is empty (no features)", self.path)
        if not info.get("crs"):
            raise RsSegError(
                f"{self.role} file has no CRS; set one (e.g. with ogr2ogr -a_srs)", self.path
            )
        geometry = (info.get("geometry_type") or "").lower()
        if geometry and "polygon" not in geometry and geometry not in {"unknown", "geometry"}:
            raise RsSegError(
                f"{self.role} must be polygons, found {geometry} geometries", self.path
            )
        return info

    def _read(self, bbox: Bounds | None) -> gpd.GeoDataFrame:
        try:
            frame = pyogrio.read_dataframe(
                self.path, layer=self.layer, columns=[], where=self.where, bbox=bbox
            )
        except Exception as exc:
            raise RsSegError(f"cannot read {self.role}: {gdal_message(exc)}", self.path) from None
        return frame[frame.geometry.notna()]

    def polygons(self, bounds: Bounds, crs: CRS) -> np.ndarray:
        """Polygons meeting ``bounds`` (in ``crs``), repaired and reprojected to ``crs``."""
        if self._frame is not None:
            geometries, tree = self._projected(crs)
            return geometries[np.sort(tree.query(shapely.box(*bounds)))]
        own_bounds = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        return self._repair_and_project(self._read(bbox=own_bounds), crs)

    def _repair_and_project(self, frame: gpd.GeoDataFrame, crs: CRS) -> np.ndarray:
        geometries = polygon_parts(frame.geometry.to_numpy())
        if len(geometries) and self.crs != crs:
            geometries = gpd.GeoSeries(geometries, crs=self.crs).to_crs(crs).to_numpy()
        return geometries

    def _projected(self, crs: CRS) -> tuple[np.ndarray, shapely.STRtree]:
        """The whole (small) layer in ``crs`` with a spatial index, computed once per CRS."""
        key = crs.to_wkt()
        if key not in self._by_crs:
            geometries = self._repair_and_project(self._frame, crs)
            self._by_crs[key] = (geometries, shapely.STRtree(geometries))
        return self._by_crs[key]

    def count_in(self, bounds: Bounds, crs: CRS) -> int:
        """Number of features whose extent meets ``bounds`` (no geometry is kept in memory)."""
        if self._frame is not None:
            return len(self.polygons(bounds, crs))
        own_bounds = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        try:
            frame = pyogrio.read_dataframe(
                self.path, layer=self.layer, columns=[], where=self.where, bbox=own_bounds,
                read_geometry=False, fid_as_index=True,
            )  # fmt: skip
        except Exception as exc:
            raise RsSegError(f"cannot read {self.role}: {gdal_message(exc)}", self.path) from None
        return len(frame)


class VectorWindowMasks:
    """Rasterizes the polygons of one strip at once; windows inside the strip are slices of it.

    One rasterization per strip (instead of one per chip) keeps the cost of labels small next to
    reading and writing pixels, and the strip buffer (strip height x scene width, one byte per
    pixel) bounds the memory.
    """

    def __init__(self, layer: VectorLayer, scene: RasterInfo) -> None:
        if scene.crs is None:
            raise RsSegError(
                f"scene has no CRS, so {layer.role} in {layer.path.name} cannot be placed on it",
                scene.path,
            )
        self.layer = layer
        self.scene = scene
        self._strip = Window(0, 0, 0, 0)
        self._cover = np.zeros((0, 0), dtype=np.uint8)

    def load_strip(self, window: Window) -> None:
        """Fetch the polygons overlapping ``window`` and burn them into the strip buffer."""
        self._strip = window
        shape = (int(window.height), int(window.width))
        bounds = rasterio.windows.bounds(window, self.scene.transform)
        # Clipping to the strip first halves the cost: rasterio converts every vertex to GDAL.
        polygons = shapely.clip_by_rect(self.layer.polygons(bounds, self.scene.crs), *bounds)
        polygons = polygons[~shapely.is_empty(polygons)]
        if len(polygons) == 0:
            self._cover = np.full(shape, MASK_BACKGROUND, dtype=np.uint8)
            return
        self._cover = rasterize(
            ((g, MASK_CROPLAND) for g in polygons),
            out_shape=shape,
            transform=window_transform(window, self.scene.transform),
            fill=MASK_BACKGROUND,
            dtype=np.uint8,
        )

    def cover(self, window: Window) -> np.ndarray:
        """uint8 view of ``window`` (inside the loaded strip): 1 (cropland) inside any polygon."""
        row = int(window.row_off - self._strip.row_off)
        col = int(window.col_off - self._strip.col_off)
        height, width = int(window.height), int(window.width)
        if (
            row < 0
            or col < 0
            or row + height > self._cover.shape[0]
            or col + width > self._cover.shape[1]
        ):
            raise ValueError(f"window {window} lies outside the loaded strip {self._strip}")
        return self._cover[row : row + height, col : col + width]

    def mask(self, window: Window) -> np.ndarray:
        """Cropland inside polygons, background elsewhere (the scene is taken as fully labelled)."""
        return self.cover(window).copy()  # the strip buffer already holds 0/1 mask values


def value_lookup(label_map: LabelMap, dtype: np.dtype) -> np.ndarray | None:
    """A lookup table from label values to 0/1/255 for 8/16-bit integer rasters, else None."""
    if np.dtype(dtype) not in (np.dtype("uint8"), np.dtype("uint16")):
        return None
    table = np.full(np.iinfo(dtype).max + 1, MASK_BACKGROUND, dtype=np.uint8)
    for value in label_map.cropland:
        if 0 <= value < len(table):
            table[value] = MASK_CROPLAND
    for value in label_map.ignore:
        if 0 <= value < len(table):
            table[value] = MASK_IGNORE
    return table


def apply_label_map(values: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Map raw label values to 0 background / 1 cropland / 255 ignore."""
    table = value_lookup(label_map, values.dtype)
    if table is not None:
        return table[values]
    out = np.full(values.shape, MASK_BACKGROUND, dtype=np.uint8)
    out[np.isin(values, label_map.cropland)] = MASK_CROPLAND
    out[np.isin(values, label_map.ignore)] = MASK_IGNORE
    return out


def _aligned(label: rasterio.io.DatasetReader, scene: RasterInfo) -> bool:
    same_grid = label.width == scene.width and label.height == scene.height
    if label.crs is None or scene.crs is None:
        return same_grid
    return same_grid and label.crs == scene.crs and label.transform.almost_equals(scene.transform)


class RasterWindowMasks:
    """Reads a label raster window by window, warped onto the scene grid when not aligned."""

    def __init__(self, dataset: rasterio.io.DatasetReaderBase, label_map: LabelMap) -> None:
        self.dataset = dataset
        self.label_map = label_map

    def load_strip(self, window: Window) -> None:
        """Nothing to prefetch: GDAL's block cache serves neighbouring windows."""

    def mask(self, window: Window) -> np.ndarray:
        """Mapped label values; pixels outside the label raster or at its nodata are ignore."""
        values, valid, _ = read_padded(self.dataset, window, fill=0, indexes=[1])
        mask = apply_label_map(values[0], self.label_map)
        mask[~valid] = MASK_IGNORE
        return mask


@contextlib.contextmanager
def open_raster_labels(
    path: Path, label_map: LabelMap, scene: RasterInfo
) -> Iterator[RasterWindowMasks]:
    """Open a label raster for ``scene``; a non-aligned raster is warped (nearest) onto its grid."""
    with open_raster(path, role="label raster") as label:
        if _aligned(label, scene):
            yield RasterWindowMasks(label, label_map)
            return
        if label.crs is None or scene.crs is None:
            raise RsSegError(
                f"label raster is {label.width}x{label.height} but the scene "
                f"{scene.path.name} is {scene.width}x{scene.height}, and without a CRS "
                "they cannot be aligned",
                path,
            )
        with WarpedVRT(
            label,
            crs=scene.crs,
            transform=scene.transform,
            width=scene.width,
            height=scene.height,
            resampling=Resampling.nearest,
            add_alpha=label.nodata is None,
        ) as warped:
            yield RasterWindowMasks(warped, label_map)


def is_vector_path(path: Path) -> bool:
    """Guess from the suffix whether a label path is vector data (else it is a raster)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def polygon_cover_fraction(layer: VectorLayer, scene: RasterInfo) -> tuple[float, float]:
    """Area of the scene footprint covered by the layer's polygons, and the footprint area.

    Computed with vector geometry only (no rasterization), so it is an independent check of the
    cropland fraction that chip preparation reports.
    """
    if scene.crs is None:
        raise RsSegError("scene has no CRS", scene.path)
    footprint = shapely.box(*scene.bounds)
    polygons = layer.polygons(scene.bounds, scene.crs)
    if len(polygons) == 0:
        return 0.0, footprint.area
    return shapely.intersection(shapely.union_all(polygons), footprint).area, footprint.area
