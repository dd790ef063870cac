"""Vector labels: polygon layers checked feature by feature and burnt into masks strip by strip.

Vector labels may come in any CRS and are reprojected per scene; invalid polygons are repaired.
Small vector files are read once; large ones are read strip by strip through the file's spatial
index, so memory follows the strip, not the label file or the scene. Either way every feature is
checked once when the layer is opened (large files in batches): features with null, empty or
non-polygon geometry, and invalid ones with no area left after repair, are dropped, counted per
reason (:class:`FeatureCounts`) and warned about with a few of their feature ids. AOI polygons
are read by the same :class:`VectorLayer`, so they get the same checks.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rs_seg.config import MASK_BACKGROUND, MASK_BOUNDARY, MASK_CROPLAND
from rs_seg.errors import RsSegError
from rs_seg.rasters import RasterInfo, gdal_message
from rs_seg.windows import strip_slices

log = logging.getLogger(__name__)

_POLYGON = shapely.GeometryType.POLYGON
_POLYGONAL = [shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON]
Bounds = tuple[float, float, float, float]


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


class VectorWindowMasks:
    """Rasterizes the polygons of one strip at once; windows inside the strip are slices of it.

    One rasterization per strip (instead of one per chip) keeps the cost of labels small next to
    reading and writing pixels, and the strip buffer (strip height x scene width, one byte per
    pixel) bounds the memory. With a ``boundary_width`` (scene CRS units) every polygon's outline
    is burned as :data:`MASK_BOUNDARY` on top of the interiors: a band that wide, centred on the
    outline and kept inside the fields, so cropland stays exactly the polygons while two touching
    fields are parted by the band. Outlines come from the whole polygons, never from their parts
    in the strip, so the band is the same whichever strip or chip a pixel falls in.
    """

    def __init__(self, layer: VectorLayer, scene: RasterInfo, boundary_width: float = 0.0) -> None:
        if scene.crs is None:
            raise RsSegError(
                f"scene has no CRS, so {layer.role} in {layer.path.name} cannot be placed on it",
                scene.path,
            )
        self.layer = layer
        self.scene = scene
        # A pixel centre exactly half the width away is outside: left as a tie, it would fall on
        # either side depending on the strip's floating-point origin.
        self.reach = boundary_width / 2 * (1 - 1e-6)
        self._strip = Window(0, 0, 0, 0)
        self._cover = np.zeros((0, 0), dtype=np.uint8)

    def load_strip(self, window: Window) -> None:
        """Fetch the polygons overlapping ``window`` and burn them into the strip buffer."""
        self._strip = window
        shape = (int(window.height), int(window.width))
        bounds = rasterio.windows.bounds(window, self.scene.transform)
        # A neighbour's outline within reach of the strip burns into it too.
        found = self.layer.polygons(_grown(bounds, self.reach), self.scene.crs)
        # Clipped to the strip first: rasterio converts every vertex to GDAL, so only the strip's.
        polygons = shapely.clip_by_rect(found, *bounds)
        polygons = polygons[~shapely.is_empty(polygons)]
        if len(polygons) == 0:
            self._cover = np.full(shape, MASK_BACKGROUND, dtype=np.uint8)
            return
        transform = window_transform(window, self.scene.transform)
        self._cover = rasterize(
            ((g, MASK_CROPLAND) for g in polygons),
            out_shape=shape,
            transform=transform,
            fill=MASK_BACKGROUND,
            dtype=np.uint8,
        )
        if self.reach > 0:
            band = outline_band(found, _grown(bounds, self.reach), self.reach, shape, transform)
            self._cover[band & (self._cover == MASK_CROPLAND)] = MASK_BOUNDARY

    def cover(self, window: Window) -> np.ndarray:
        """uint8 view of ``window`` (inside the loaded strip): 1 inside polygons, 2 on outlines."""
        place = strip_slices(self._strip, window, self._cover.shape)
        if place is None:
            raise ValueError(f"window {window} lies outside the loaded strip {self._strip}")
        return self._cover[place]

    def mask(self, window: Window) -> np.ndarray:
        """Fields inside polygons, background elsewhere (the scene is taken as fully labelled)."""
        return self.cover(window).copy()  # the strip buffer already holds 0/1/2 mask values

    def label_values(self) -> None:
        """Polygons have no raw values (their features are counted by :class:`FeatureCounts`)."""
        return None


def _grown(bounds: Bounds, margin: float) -> Bounds:
    left, bottom, right, top = bounds
    return (left - margin, bottom - margin, right + margin, top + margin)


def outline_band(
    polygons: np.ndarray,
    bounds: Bounds,
    reach: float,
    shape: tuple[int, int],
    transform: rasterio.Affine,
) -> np.ndarray:
    """Pixels whose centre lies within ``reach`` of any polygon's outline (boolean, ``shape``).

    Lines are clipped to ``bounds`` (the window grown by ``reach``) before buffering, so a large
    field costs only the part of its outline near the window.
    """
    lines = shapely.clip_by_rect(shapely.boundary(polygons), *bounds)
    lines = lines[~shapely.is_empty(lines)]
    if len(lines) == 0:
        return np.zeros(shape, dtype=bool)
    bands = shapely.buffer(lines, reach, quad_segs=4)
    burned = rasterize(((g, 1) for g in bands), out_shape=shape, transform=transform, fill=0,
                       dtype=np.uint8)  # fmt: skip
    band: np.ndarray = burned.astype(bool)
    return band


def boundary_width_units(width_m: float | None, scene: RasterInfo) -> float:
    """The outline width in the scene's CRS units: ``width_m`` metres, or 2 pixels by default.

    A geographic CRS measures in degrees: metres are converted with 111,320 m per degree of
    latitude (the band is a few pixels wide, so the error is well below a pixel).
    """
    if width_m is None:
        return 2.0 * min(abs(scene.transform.a), abs(scene.transform.e))
    if scene.crs is None:
        return width_m
    if scene.crs.is_geographic:
        return width_m / 111_320.0
    metres_per_unit = float(scene.crs.linear_units_factor[1])
    return width_m / metres_per_unit


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
