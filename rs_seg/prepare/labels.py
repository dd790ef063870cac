"""Label sources: vector polygons or label rasters, turned into 0/1/255 masks window by window.

Vector labels may come in any CRS and are reprojected per scene; invalid polygons are repaired.
Small vector files are read once; large ones are read strip by strip through the file's spatial
index, so memory follows the strip, not the label file or the scene. Either way every feature is
checked once when the layer is opened (large files in batches): features with null, empty or
non-polygon geometry, and invalid ones with no area left after repair, are dropped, counted per
reason (:class:`FeatureCounts`) and warned about with a few of their feature ids.
Label rasters are read through a nearest-neighbour warped view when they are not pixel-aligned
with the scene, so aligned masks and mosaics covering many scenes go through one code path. They
are read strip by strip, and the raw values of each strip are counted as it is read
(:class:`LabelValueCounts`), so values the label map does not name, or map values that never
occur, show in the summary and in warnings instead of silently becoming background. Only band 1
of a label raster holds labels. Label-map values the raster cannot hold are refused from its
header (:func:`check_label_map_fits`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyogrio
import pyogrio.raw
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
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
_POLYGONAL = [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]
Bounds = tuple[float, float, float, float]


class WindowMasks(Protocol):
    """Labels bound to one scene: a 0/1/255 mask for any window of it."""

    def load_strip(self, window: Window) -> None:
        """Fetch what the windows inside ``window`` (a strip of the scene) will need."""

    def mask(self, window: Window) -> np.ndarray:
        """uint8 mask of ``window``: 0 background, 1 cropland, 255 ignore."""

    def label_values(self) -> LabelValueCounts | None:
        """Raw label values read so far, value by value (label rasters); None for polygons."""


# What became of one feature: kept as it is, kept after repair, or dropped for one reason.
USED, REPAIRED, NULL, EMPTY, INVALID, NOT_POLYGONAL = range(6)
STATUS_NAMES = ("used", "repaired", "null", "empty", "invalid", "not_polygonal")
DROP_REASONS = STATUS_NAMES[NULL:]
_DROP_TEXT = {
    "null": "null geometry",
    "empty": "empty geometry",
    "invalid": "invalid geometry and no area left after repair",
    "not_polygonal": "non-polygon geometry (points or lines)",
}
_EXAMPLE_FIDS = 5


def _flat_parts(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single parts of ``geometries`` (two levels: collections of multi-parts) and their owners."""
    parts, owner = shapely.get_parts(geometries, return_index=True)
    parts, inner = shapely.get_parts(parts, return_index=True)
    return parts, owner[inner]


def usable_polygons(wkb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse WKB features into what a mask needs: one (Multi)Polygon per feature, or None.

    Returns the geometries and a status code per feature (``STATUS_NAMES``): null, empty and
    non-polygon (points, lines) features are dropped; invalid ones (self-intersections, rings
    with too few or unclosed points, NaN coordinates) are repaired with ``shapely.make_valid``
    and kept when polygons with area remain, dropped as invalid otherwise. Lines or points
    inside a kept collection are left out of its geometry.
    """
    n = len(wkb)
    geometries = np.full(n, None, dtype=object)
    status = np.full(n, USED, dtype=np.int8)
    if n == 0:
        return geometries, status
    wkb = np.asarray(wkb, dtype=object)
    null = np.fromiter((w is None for w in wkb), dtype=bool, count=n)
    status[null] = NULL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # GEOS warns about NaN coordinates
        parsed = shapely.from_wkb(wkb, on_invalid="ignore")
        unreadable = ~null & shapely.is_missing(parsed)  # e.g. rings that are not closed
        if unreadable.any():
            parsed[unreadable] = shapely.from_wkb(wkb[unreadable], on_invalid="fix")
        present = ~shapely.is_missing(parsed)
        status[unreadable & ~present] = INVALID
        empty = present & shapely.is_empty(parsed)
        status[empty] = EMPTY
        todo = np.flatnonzero(present & ~empty)
        if len(todo) == 0:
            return geometries, status
        candidates = parsed[todo]
        valid = shapely.is_valid(candidates) & ~unreadable[todo]
        # Valid polygons (nearly all features) are used as they are; only the rest is taken apart.
        simple = valid & np.isin(shapely.get_type_id(candidates), _POLYGONAL)
        geometries[todo[simple]] = candidates[simple]
        todo, candidates, valid = todo[~simple], candidates[~simple], valid[~simple]
        if len(todo) == 0:
            return geometries, status
        repaired = candidates.copy()
        repaired[~valid] = shapely.make_valid(candidates[~valid])
        parts, owner = _flat_parts(repaired)
    keep = (shapely.get_type_id(parts) == _POLYGON) & (shapely.area(parts) > 0)
    coords, coord_owner = shapely.get_coordinates(parts, return_index=True)
    keep[np.unique(coord_owner[~np.isfinite(coords).all(axis=1)])] = False
    has_area = np.zeros(len(todo), dtype=bool)
    has_area[owner[keep]] = True
    if keep.any():
        out = np.full(len(todo), None, dtype=object)
        shapely.multipolygons(parts[keep], indices=owner[keep], out=out)
        geometries[todo] = out
    original_parts, original_owner = _flat_parts(candidates)
    polygon_typed = np.zeros(len(todo), dtype=bool)
    polygon_typed[original_owner[shapely.get_type_id(original_parts) == _POLYGON]] = True
    status[todo] = np.select(
        [has_area & valid, has_area, polygon_typed], [USED, REPAIRED, INVALID], NOT_POLYGONAL
    )
    return geometries, status


@dataclass
class FeatureCounts:
    """What became of the features of one vector layer, each counted once.

    ``used`` features reach the masks (``repaired`` of them after ``make_valid``); ``dropped``
    counts the others per reason. ``examples`` holds the first few feature ids of each outcome
    but ``used``, for warnings.
    """

    features: int = 0
    repaired: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def used(self) -> int:
        """Features that reach the masks (repaired ones included)."""
        return self.features - sum(self.dropped.values())

    def add(self, fids: np.ndarray, status: np.ndarray) -> None:
        """Count one batch of features (``status`` as returned by :func:`usable_polygons`)."""
        self.features += len(status)
        totals = np.bincount(status, minlength=len(STATUS_NAMES))
        self.repaired += int(totals[REPAIRED])
        for code in range(REPAIRED, len(STATUS_NAMES)):
            name = STATUS_NAMES[code]
            if code >= NULL:
                self.dropped[name] += int(totals[code])
            examples = self.examples.setdefault(name, [])
            if totals[code] and len(examples) < _EXAMPLE_FIDS:
                examples += [int(f) for f in fids[status == code][: _EXAMPLE_FIDS - len(examples)]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: features, used, repaired and dropped per reason."""
        return {
            "features": self.features,
            "used": self.used,
            "repaired": self.repaired,
            "dropped": dict(self.dropped),
        }

    def describe(self) -> str:
        """One line for reports and errors (see :func:`describe_feature_counts`)."""
        return describe_feature_counts(self.to_dict())

    def _fids(self, name: str, count: int) -> str:
        fids = self.examples.get(name, [])
        return "fid " + ", ".join(map(str, fids)) + (", ..." if count > len(fids) else "")

    def log(self, file_name: str, role: str) -> None:
        """One warning per drop reason with its count and a few feature ids; repairs are info.

        E.g. ``labels.gpkg: 3 label features with null geometry were dropped (fid 4, 9, 12)``.
        """
        noun = role.removesuffix("s")  # "labels" -> "label features", "AOI" -> "AOI features"
        for reason, count in self.dropped.items():
            if count:
                log.warning(
                    "%s: %d %s %s with %s %s dropped (%s)",
                    file_name, count, noun, _features(count), _DROP_TEXT[reason],
                    "was" if count == 1 else "were", self._fids(reason, count),
                )  # fmt: skip
        if self.repaired:
            log.info(
                "%s: %d %s %s with invalid geometry %s repaired (%s)",
                file_name, self.repaired, noun, _features(self.repaired),
                "was" if self.repaired == 1 else "were", self._fids("repaired", self.repaired),
            )  # fmt: skip


def _features(count: int) -> str:
    return "feature" if count == 1 else "features"


def describe_feature_counts(counts: dict[str, Any]) -> str:
    """``10 used of 13 (1 repaired), dropped: 1 null, 2 not_polygonal`` from :meth:`to_dict`."""
    text = f"{counts['used']} used of {counts['features']} ({counts['repaired']} repaired)"
    dropped = [f"{n} {reason}" for reason, n in counts["dropped"].items() if n]
    return text + (", dropped: " + ", ".join(dropped) if dropped else ", none dropped")


class VectorLayer:
    """A polygon layer read on demand, reprojected into whatever CRS a scene asks for."""

    # Files up to this size (some 10 000 parcels) are read once and indexed in memory, which is
    # fastest when many scenes share one label file; larger ones are read strip by strip through
    # the file's spatial index, so memory stays bounded whatever the scene or label file size.
    in_memory_limit_bytes = 4 * 1024 * 1024
    # Larger files are checked feature by feature in batches of this many when they are opened.
    scan_batch = 65_536

    def __init__(
        self, path: Path, role: str = "labels", layer: str | None = None, where: str | None = None
    ) -> None:
        self.path = Path(path)
        self.role = role
        self.layer = layer
        self.where = where
        info = self._read_info()
        self.crs = CRS.from_user_input(info["crs"])
        self._geometries: np.ndarray | None = None  # the whole layer, for small files
        self._by_crs: dict[str, tuple[np.ndarray, shapely.STRtree]] = {}
        self.counts = FeatureCounts()
        if self.path.stat().st_size <= self.in_memory_limit_bytes:
            fids, wkb = self._read_wkb()
            geometries, status = usable_polygons(wkb)
            self.counts.add(fids, status)
            self._geometries = geometries[status <= REPAIRED]
        else:
            self._scan()
            if not info.get("capabilities", {}).get("fast_spatial_filter", True):
                log.warning(
                    "%s has no spatial index, so every strip rescans it; converting it once "
                    "(ogr2ogr out.gpkg %s) makes preparation much faster",
                    self.path.name,
                    self.path.name,
                )
        if self.counts.features == 0:
            raise RsSegError(self._empty_message(), self.path)
        self.counts.log(self.path.name, self.role)
        if self.counts.used == 0:
            raise RsSegError(
                f"{self.role} file has no usable polygon ({self.counts.describe()})", self.path
            )

    def _scan(self) -> None:
        """Count what becomes of every feature, one batch at a time (bounded memory)."""
        offset = 0
        while True:
            fids, wkb = self._read_wkb(skip=offset, limit=self.scan_batch)
            self.counts.add(fids, usable_polygons(wkb)[1])
            offset += len(fids)
            if len(fids) < self.scan_batch:
                return

    def _empty_message(self) -> str:
        suffix = f" matching {self.where!r}" if self.where else ""
        return f"{self.role} file has no features{suffix}"

    def _read_info(self) -> dict[str, Any]:
        if not self.path.exists():
            raise RsSegError(f"{self.role} file not found", self.path)
        try:
            info: dict[str, Any] = pyogrio.read_info(self.path, layer=self.layer)
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

    def _read_wkb(
        self, bbox: Bounds | None = None, skip: int = 0, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Feature ids and WKB geometries (None where null).

        Parsed later (:func:`usable_polygons`), so a broken geometry is counted instead of
        failing the whole read.
        """
        try:
            _, fids, wkb, _ = pyogrio.raw.read(
                self.path, layer=self.layer, columns=[], where=self.where, bbox=bbox,
                skip_features=skip, max_features=limit, return_fids=True,
            )  # fmt: skip
        except Exception as exc:
            raise RsSegError(f"cannot read {self.role}: {gdal_message(exc)}", self.path) from None
        return fids, wkb

    def polygons(self, bounds: Bounds, crs: CRS) -> np.ndarray:
        """Polygons meeting ``bounds`` (in ``crs``), repaired and reprojected to ``crs``.

        One (Multi)Polygon per usable feature; dropped features were counted when the layer was
        opened (:attr:`counts`) and are left out silently here.
        """
        if self._geometries is not None:
            geometries, tree = self._projected(crs)
            return geometries[np.sort(tree.query(shapely.box(*bounds)))]
        own_bounds = transform_bounds(crs, self.crs, *bounds, densify_pts=21)
        geometries, status = usable_polygons(self._read_wkb(bbox=own_bounds)[1])
        return self._project(geometries[status <= REPAIRED], crs)

    def _project(self, geometries: np.ndarray, crs: CRS) -> np.ndarray:
        if len(geometries) and self.crs != crs:
            geometries = gpd.GeoSeries(geometries, crs=self.crs).to_crs(crs).to_numpy()
        return geometries

    def _projected(self, crs: CRS) -> tuple[np.ndarray, shapely.STRtree]:
        """The whole (small) layer in ``crs`` with a spatial index, computed once per CRS."""
        key = crs.to_wkt()
        if key not in self._by_crs:
            assert self._geometries is not None  # only called for a layer read into memory
            geometries = self._project(self._geometries, crs)
            self._by_crs[key] = (geometries, shapely.STRtree(geometries))
        return self._by_crs[key]

    def count_in(self, bounds: Bounds, crs: CRS) -> int:
        """Number of features whose extent meets ``bounds`` (no geometry is kept in memory)."""
        if self._geometries is not None:
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


def strip_slices(
    strip: Window, window: Window, shape: tuple[int, ...]
) -> tuple[slice, slice] | None:
    """Where ``window`` lies in an array loaded for ``strip``; None where it sticks out of it."""
    row = int(window.row_off - strip.row_off)
    col = int(window.col_off - strip.col_off)
    height, width = int(window.height), int(window.width)
    if row < 0 or col < 0 or row + height > shape[0] or col + width > shape[1]:
        return None
    return slice(row, row + height), slice(col, col + width)


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
        place = strip_slices(self._strip, window, self._cover.shape)
        if place is None:
            raise ValueError(f"window {window} lies outside the loaded strip {self._strip}")
        return self._cover[place]

    def mask(self, window: Window) -> np.ndarray:
        """Cropland inside polygons, background elsewhere (the scene is taken as fully labelled)."""
        return self.cover(window).copy()  # the strip buffer already holds 0/1 mask values

    def label_values(self) -> None:
        """Polygons have no raw values (their features are counted by :class:`FeatureCounts`)."""
        return None


Value = int | float
_BINCOUNT_DTYPES = (np.dtype("uint8"), np.dtype("uint16"))
_TOP_UNMAPPED = 10  # unmapped values listed one by one in the summary (the most frequent)
_TRACKED_VALUES = 4096  # distinct unmapped values counted one by one (rasters of other dtypes)
_FOUND_LISTED = 10  # values named in warnings and errors
UNMAPPED_WARN_SHARE = 0.01
"""Unmapped values besides the most common one (the background class) above this share of the
labelled pixels are warned about."""


def _number(value: Any) -> Value:
    """A raster value as a plain int (integral values) or float, as summaries show it."""
    number: Value = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def value_ranges(values: Iterable[Value]) -> str:
    """``0, 3-7, 255``: sorted values with runs of consecutive integers joined."""
    runs: list[list[Value]] = []
    for value in sorted(set(values)):
        last = runs[-1][1] if runs else None
        if isinstance(value, int) and isinstance(last, int) and value == last + 1:
            runs[-1][1] = value
            continue
        runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _representable(value: int, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        return limits.min <= value <= limits.max
    if np.issubdtype(dtype, np.floating):
        with np.errstate(over="ignore"):
            return float(dtype.type(value)) == value  # e.g. float32 holds integers up to 2**24
    return True  # complex: compared as numbers


def _dtype_range(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.integer):
        return f"values {np.iinfo(dtype).min} to {np.iinfo(dtype).max}"
    return f"integers up to {2 ** (np.finfo(dtype).nmant + 1)} exactly"


def check_label_map_fits(label_map: LabelMap, dtype: Any, nodata: float | None, path: Path) -> None:
    """Refuse label-map values a label raster cannot hold, or that it declares nodata.

    A value the dtype cannot represent (300 or -1 on uint8) would never match a pixel, and a
    cropland value equal to the raster's nodata value would only ever be ignore: both are
    :class:`RsSegError` naming the raster and the values.
    """
    dtype = np.dtype(dtype)
    for target, values in (("cropland", label_map.cropland), ("ignore", label_map.ignore)):
        impossible = [v for v in values if not _representable(v, dtype)]
        if impossible:
            raise RsSegError(
                f"label map {_values_word(impossible)} {value_ranges(impossible)} ({target}) "
                f"cannot occur in this {dtype} label raster ({_dtype_range(dtype)}); "
                "check --label-map",
                path,
            )
    if nodata is not None and not np.isnan(nodata) and nodata in label_map.cropland:
        raise RsSegError(
            f"label map value {_number(nodata)} (cropland) is the nodata value of this label "
            "raster, so its pixels would be ignored, never cropland; unset the nodata value "
            "(gdal_edit.py -unsetnodata) or map another value",
            path,
        )


def _values_word(values: Sequence[Value]) -> str:
    return "value" if len(values) == 1 else "values"


def label_bands(dataset: rasterio.io.DatasetReaderBase) -> int:
    """Bands of a label raster that can hold labels (alpha bands are a mask, not labels)."""
    return sum(ci != ColorInterp.alpha for ci in dataset.colorinterp) or dataset.count


def check_label_raster(path: Path, label_map: LabelMap) -> int:
    """Read the header of a label raster and check the label map against it; returns its bands."""
    with open_raster(path, role="label raster") as label:
        check_label_map_fits(label_map, label.dtypes[0], label.nodata, path)
        return label_bands(label)


def value_lookup(label_map: LabelMap, dtype: np.dtype) -> npt.NDArray[np.uint8] | None:
    """A lookup table from label values to 0/1/255 for 8/16-bit integer rasters, else None.

    Raises ValueError for a label-map value the dtype cannot hold: nothing is skipped quietly
    (:func:`check_label_map_fits` reports it for a raster before any pixel is read).
    """
    dtype = np.dtype(dtype)
    if dtype not in _BINCOUNT_DTYPES:
        return None
    table = np.full(np.iinfo(dtype).max + 1, MASK_BACKGROUND, dtype=np.uint8)
    impossible = [v for v in (*label_map.cropland, *label_map.ignore) if not 0 <= v < len(table)]
    if impossible:
        raise ValueError(f"label map values {value_ranges(impossible)} do not fit {dtype}")
    table[label_map.cropland] = MASK_CROPLAND
    table[label_map.ignore] = MASK_IGNORE
    return table


def apply_label_map(values: np.ndarray, label_map: LabelMap) -> npt.NDArray[np.uint8]:
    """Map raw label values to 0 background / 1 cropland / 255 ignore."""
    table = value_lookup(label_map, values.dtype)
    if table is not None:
        # numpy's stubs type fancy indexing as Any; a uint8 table gives uint8.
        return cast("npt.NDArray[np.uint8]", table[values])
    out = np.full(values.shape, MASK_BACKGROUND, dtype=np.uint8)
    out[np.isin(values, label_map.cropland)] = MASK_CROPLAND
    out[np.isin(values, label_map.ignore)] = MASK_IGNORE
    return out


def _top(counts: dict[Value, int], n: int) -> tuple[dict[Value, int], int]:
    """The ``n`` most frequent entries, and the pixels of the others."""
    if len(counts) <= n:
        return counts, 0
    kept = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n])
    return kept, sum(counts.values()) - sum(kept.values())


@dataclass
class LabelValueCounts:
    """Raw values of label rasters over scene grids: each pixel of each scene counted once.

    ``pixels`` are the scene-grid pixels looked at, ``nodata`` those without a label value (the
    raster's nodata, or outside the label raster). ``mapped`` counts every label-map value found
    (exact); ``unmapped`` the values the map does not name (they became background), exact up
    to :data:`_TRACKED_VALUES` distinct values, else the most frequent ones with the pixels of
    the others in ``unmapped_other``, so memory stays bounded whatever the number of distinct
    values. ``nodata_values`` are the nodata values the rasters declare (a map value among them
    is read as nodata, so it is not reported as absent). ``multiband`` names the label rasters
    with several bands (band 1 read) and their band counts.
    """

    pixels: int = 0
    nodata: int = 0
    mapped: dict[Value, int] = field(default_factory=dict)
    unmapped: dict[Value, int] = field(default_factory=dict)
    unmapped_other: int = 0
    nodata_values: set[Value] = field(default_factory=set)
    multiband: dict[str, int] = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        """Pixels with a label value."""
        return self.pixels - self.nodata

    @classmethod
    def merge(cls, parts: Iterable[LabelValueCounts]) -> LabelValueCounts:
        """The sum of the counts of several scenes (still bounded)."""
        total = cls()
        for part in parts:
            total.pixels += part.pixels
            total.nodata += part.nodata
            for target, source in ((total.mapped, part.mapped), (total.unmapped, part.unmapped)):
                for value, n in source.items():
                    target[value] = target.get(value, 0) + n
            total.unmapped_other += part.unmapped_other
            if len(total.unmapped) > 2 * _TRACKED_VALUES:
                total._prune()
            total.nodata_values |= part.nodata_values
            total.multiband.update(part.multiband)
        total._prune()
        return total

    def _prune(self) -> None:
        self.unmapped, rest = _top(self.unmapped, _TRACKED_VALUES)
        self.unmapped_other += rest

    def absent(self, label_map: LabelMap) -> dict[str, list[int]]:
        """Label-map values found in no pixel, per target (targets without any left out)."""
        found = {
            target: [v for v in values if v not in self.mapped and v not in self.nodata_values]
            for target, values in (("cropland", label_map.cropland), ("ignore", label_map.ignore))
        }
        return {target: values for target, values in found.items() if values}

    def to_dict(self, label_map: LabelMap) -> dict[str, Any]:
        """JSON-ready form (see :class:`rs_seg.prepare.index.PrepareSummary`)."""
        unmapped, rest = _top(self.unmapped, _TOP_UNMAPPED)

        def pixels_of(values: Iterable[int]) -> dict[str, int]:
            return {str(v): self.mapped[v] for v in sorted(set(values)) if v in self.mapped}

        return {
            "pixels": self.pixels,
            "nodata": self.nodata,
            "cropland": pixels_of(label_map.cropland),
            "ignore": pixels_of(label_map.ignore),
            "unmapped": {str(v): unmapped[v] for v in sorted(unmapped)},
            "unmapped_other": self.unmapped_other + rest,
            "absent": {t: value_ranges(v) for t, v in self.absent(label_map).items()},
            "multiband_rasters": len(self.multiband),
        }

    def found(self) -> str:
        """The most frequent values found, for messages: ``0, 1, 5`` or ``0, 1, 2 and 4 more``."""
        counts = {**self.unmapped, **self.mapped}
        top, _ = _top(counts, _FOUND_LISTED)
        text = ", ".join(str(v) for v in sorted(top)) or "none"
        if self.unmapped_other:
            return text + " and more"
        hidden = len(counts) - len(top)
        return text + (f" and {hidden} more" if hidden else "")

    def check(self, label_map: LabelMap, where: Path | None, scenes: int) -> None:
        """Warn about label-map values never found, unusual unmapped values and multi-band rasters.

        A map whose cropland values occur in no pixel of any scene is an error: one scene without
        cropland is plausible, a whole chip set without any is a wrong map (``255=cropland`` on a
        0/1 raster), whose chips would all be background.
        """
        absent = self.absent(label_map)
        if len(absent.get("cropland", [])) == len(label_map.cropland) and self.labelled:
            raise RsSegError(
                f"label map cropland {_values_word(label_map.cropland)} "
                f"{value_ranges(label_map.cropland)} occurs in none of the label rasters of the "
                f"{scenes} {'scene' if scenes == 1 else 'scenes'} (found values {self.found()}), "
                "so every chip would be background; check --label-map",
                where,
            )
        for target, values in absent.items():
            log.warning(
                "label map %s %s (%s) never %s in the label rasters; found values %s",
                _values_word(values), value_ranges(values), target,
                "occurs" if len(values) == 1 else "occur", self.found(),
            )  # fmt: skip
        self._warn_unmapped()
        if self.multiband:
            rasters = [(Path(p), n) for p, n in self.multiband.items()]
            unique = len({p.name for p, _ in rasters}) == len(rasters)  # else farm/3.tif
            names = [
                f"{p.name if unique else Path(p.parent.name, p.name)} ({n} bands)"
                for p, n in rasters[:5]
            ]
            more = ", ..." if len(self.multiband) > len(names) else ""
            count = len(self.multiband)
            log.warning(
                "%d label %s several bands and only band 1 is read: %s%s",
                count, "raster has" if count == 1 else "rasters have", ", ".join(names), more,
            )  # fmt: skip

    def _warn_unmapped(self) -> None:
        """Unmapped values besides the most common one (taken as background) above a share."""
        if not self.unmapped or not self.labelled:
            return
        background = max(self.unmapped, key=lambda v: (self.unmapped[v], -v))
        others = {v: n for v, n in self.unmapped.items() if v != background}
        share = (sum(others.values()) + self.unmapped_other) / self.labelled
        if share <= UNMAPPED_WARN_SHARE:
            return
        top, _ = _top(others, _FOUND_LISTED)
        listed = ", ".join(str(v) for v in sorted(top))
        if len(others) > len(top) or self.unmapped_other:
            listed = f"{listed} and more" if listed else "of many kinds"
        plural = len(others) != 1 or self.unmapped_other
        log.warning(
            "label %s %s %s not in the label map and became background: %.1f%% of the labelled "
            "pixels besides value %s (taken as the background class)",
            "values" if plural else "value", listed, "are" if plural else "is", 100 * share,
            background,
        )  # fmt: skip


def describe_label_values(counts: dict[str, Any]) -> str:
    """One line for reports from :meth:`LabelValueCounts.to_dict`.

    ``cropland 1 (3000 px), ignore 5 (512 px), unmapped (background) 0 (8744 px), 7 (16 px); no
    label 16 px`` and the map values never found.
    """

    def listed(values: dict[str, int]) -> str:
        return ", ".join(f"{v} ({n} px)" for v, n in values.items()) or "none"

    text = f"cropland {listed(counts['cropland'])}"
    if counts["ignore"]:
        text += f", ignore {listed(counts['ignore'])}"
    if counts["unmapped"]:
        text += f", unmapped (background) {listed(counts['unmapped'])}"
        if counts["unmapped_other"]:
            text += f" and {counts['unmapped_other']} px of other values"
    text += f"; no label {counts['nodata']} px"
    for target, values in counts["absent"].items():
        text += f"; {target} {values} never found"
    return text


class _ValueTally:
    """Per-value pixel counts of one scene's label raster, fed strip by strip (bounded memory).

    8/16-bit rasters add each strip's ``np.bincount`` into one table of every possible value;
    other dtypes count ``np.unique`` per strip into a dict that keeps label-map values exactly
    and the most frequent :data:`_TRACKED_VALUES` others.
    """

    def __init__(self, dtype: Any, label_map: LabelMap) -> None:
        dtype = np.dtype(dtype)
        self.mapped_values = np.unique(np.array([*label_map.cropland, *label_map.ignore]))
        self.bins = (
            np.zeros(np.iinfo(dtype).max + 1, np.int64) if dtype in _BINCOUNT_DTYPES else None
        )
        self.mapped: dict[Value, int] = {}
        self.unmapped: dict[Value, int] = {}
        self.unmapped_other = 0

    def add(self, values: np.ndarray) -> None:
        """Count the (valid) label values of one strip."""
        if values.size == 0:
            return
        if self.bins is not None:
            self.bins += np.bincount(values.ravel(), minlength=len(self.bins))
            return
        found, counts = np.unique(values, return_counts=True)
        is_mapped = np.isin(found, self.mapped_values)
        for value, n in zip(found[is_mapped], counts[is_mapped], strict=True):
            key = _number(value)
            self.mapped[key] = self.mapped.get(key, 0) + int(n)
        found, counts = found[~is_mapped], counts[~is_mapped]
        if len(found) > _TRACKED_VALUES:  # e.g. a continuous raster given as labels
            keep = np.argpartition(counts, -_TRACKED_VALUES)[-_TRACKED_VALUES:]
            self.unmapped_other += int(counts.sum() - counts[keep].sum())
            found, counts = found[keep], counts[keep]
        for value, n in zip(found, counts, strict=True):
            key = _number(value)
            self.unmapped[key] = self.unmapped.get(key, 0) + int(n)
        if len(self.unmapped) > 2 * _TRACKED_VALUES:
            self.unmapped, rest = _top(self.unmapped, _TRACKED_VALUES)
            self.unmapped_other += rest

    def counts(self) -> tuple[dict[Value, int], dict[Value, int], int]:
        """Mapped and unmapped values with their pixels, and the pixels of untracked values."""
        if self.bins is None:
            return self.mapped, self.unmapped, self.unmapped_other
        present = np.flatnonzero(self.bins)
        is_mapped = np.isin(present, self.mapped_values)
        mapped: dict[Value, int] = {int(v): int(self.bins[v]) for v in present[is_mapped]}
        unmapped, rest = _top(
            {int(v): int(self.bins[v]) for v in present[~is_mapped]}, _TRACKED_VALUES
        )
        return mapped, unmapped, rest


def _aligned(label: rasterio.io.DatasetReader, scene: RasterInfo) -> bool:
    same_grid: bool = label.width == scene.width and label.height == scene.height
    if label.crs is None or scene.crs is None:
        return same_grid
    return same_grid and label.crs == scene.crs and label.transform.almost_equals(scene.transform)


class RasterWindowMasks:
    """Reads a label raster strip by strip, warped onto the scene grid when not aligned.

    Only band 1 holds labels. Each strip is read and mapped once (windows inside it are slices),
    and its raw values are counted as they are read: every pixel of the scene grid once, strips
    overlapping the one before counted from where that one ended (:meth:`label_values`).
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReaderBase,
        label_map: LabelMap,
        source: Path | None = None,
        bands: int = 1,
    ) -> None:
        self.dataset = dataset
        self.label_map = label_map
        self.source = Path(source or dataset.name)
        self.bands = bands
        nodata = dataset.nodata
        self.nodata_value = None if nodata is None or np.isnan(nodata) else float(nodata)
        self._table = value_lookup(label_map, dataset.dtypes[0])
        self._tally = _ValueTally(dataset.dtypes[0], label_map)
        self._pixels = self._nodata = 0
        self._counted_rows = 0  # rows [0, n) of the scene grid are counted
        self._strip = Window(0, 0, 0, 0)
        self._mask = np.zeros((0, 0), dtype=np.uint8)

    def _read(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mask, raw values, valid and inside pixels of ``window`` (band 1)."""
        values, valid, inside = read_padded(self.dataset, window, fill=0, indexes=[1])
        values = values[0]
        if self._table is not None:
            mask = self._table[values]
        else:
            mask = apply_label_map(values, self.label_map)
        mask[~valid] = MASK_IGNORE
        return mask, values, valid, inside

    def load_strip(self, window: Window) -> None:
        """Read, count and map the label values of one strip of the scene."""
        self._mask, values, valid, inside = self._read(window)
        self._strip = window
        # Strips are loaded top to bottom; rows an earlier strip covered were counted with it.
        new = slice(max(0, self._counted_rows - int(window.row_off)), None)
        self._counted_rows = max(self._counted_rows, int(window.row_off + window.height))
        valid = valid[new]
        self._pixels += int(inside[new].sum())
        self._nodata += int(inside[new].sum()) - int(valid.sum())
        self._tally.add(values[new][valid])

    def mask(self, window: Window) -> np.ndarray:
        """Mapped label values; pixels outside the label raster or at its nodata are ignore.

        A slice of the loaded strip; a window outside it is read on its own (and not counted).
        """
        place = strip_slices(self._strip, window, self._mask.shape)
        if place is None:
            return self._read(window)[0]
        return self._mask[place].copy()

    def label_values(self) -> LabelValueCounts:
        """What the strips loaded so far held, value by value."""
        mapped, unmapped, rest = self._tally.counts()
        return LabelValueCounts(
            pixels=self._pixels,
            nodata=self._nodata,
            mapped=dict(mapped),
            unmapped=dict(unmapped),
            unmapped_other=rest,
            nodata_values=set() if self.nodata_value is None else {_number(self.nodata_value)},
            multiband={str(self.source): self.bands} if self.bands > 1 else {},
        )


@contextlib.contextmanager
def open_raster_labels(
    path: Path, label_map: LabelMap, scene: RasterInfo
) -> Iterator[RasterWindowMasks]:
    """Open a label raster for ``scene``; a non-aligned raster is warped (nearest) onto its grid.

    The label map is checked against the raster's header first (:func:`check_label_map_fits`).
    Only band 1 holds labels: a raster with several bands (alpha bands aside) is read from band 1
    and named in the summary and in one warning per run (grayscale masks saved as RGB are common
    and read correctly so; colour-coded masks are not, and need converting to class values).
    """
    with open_raster(path, role="label raster") as label:
        check_label_map_fits(label_map, label.dtypes[0], label.nodata, path)
        bands = label_bands(label)
        if _aligned(label, scene):
            yield RasterWindowMasks(label, label_map, path, bands)
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
            yield RasterWindowMasks(warped, label_map, path, bands)


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
