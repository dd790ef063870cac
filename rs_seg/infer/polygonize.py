"""Field polygons from a probability raster, streamed strip by strip.

A scene can be 16384 px or more on a side, so the raster is read ``strip_rows`` rows at a time and
memory stays bounded by one strip plus the fields still open across the current strip boundary.
Each strip is labelled into 4-connected cropland regions (the connectivity GDAL's polygonizer
uses), and regions that continue across a boundary are joined through their pixels, so the output
equals polygonizing the whole raster at once. The parts of such a field are unioned in pixel
coordinates, where every vertex is an exact integer and the shared edges match exactly, and move
into the raster's CRS only when the field is complete. Labels also give each field's exact pixel
sum for ``mean_prob``. Regions that lie inside a strip and whose bounding box is smaller than the
minimum area are removed from the label image before polygonizing: on noisy rasters they are
millions, and they could never become fields.

It works in pixels and CRS units only, so it needs neither the m² settings nor an output format:
:mod:`rs_seg.infer.vectorize` converts the settings and writes the records :func:`field_records`
hands out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from rs_seg.infer.outlines import shape_rings
from rs_seg.windows import unreadable_pixels_in_one_line, valid_pixels

# pixels per strip at most: bounds memory for any scene width (the default 1024-row strips up to
# 4096 px wide), yet not so few that split vectorize, which pays per strip seam, slows down
STRIP_PIXELS = 4096 * 1024
_SUM_ROWS = 128  # rows per bincount chunk: float64 weights of a whole strip would cost 8 B/px
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# (n, 2) pixel coordinates (column, row) -> (n, 2) CRS coordinates, as affine_function makes them
CoordinateFunction = Callable[[np.ndarray], np.ndarray]
_GeoArray = npt.NDArray[np.object_]  # an array of shapely geometries


# --- strips: label cropland regions and polygonize them in pixel coordinates -----------------


@dataclass(slots=True)  # millions on noisy scenes: no per-instance dict
class FieldParts:
    """One field while it is put together from its strip parts, and the sums its record needs.

    Here a 4-connected cropland region, possibly still continuing into the next strip; the
    boundary split (:mod:`rs_seg.infer.boundary_split`) builds its fields from such pieces too.

    ``parts`` are pixel-space polygons, one per strip the region touches, made only for regions
    on a strip's first or last row (only those can be joined); ``first`` is its first pixel in
    raster order and ``last_row`` its lowest row: together they order fields stably. ``left`` and
    ``right`` bound its columns (right exclusive). ``crs`` is the single part already in CRS
    coordinates (transforming each field on its own costs more than polygonizing it), None once
    parts from several strips were joined.
    """

    parts: list[shapely.Polygon]
    crs: shapely.Polygon | None
    total: float
    pixels: int
    first: tuple[int, int]
    last_row: int
    left: int
    right: int

    def absorb(self, other: FieldParts) -> None:
        """Take over a region found to be connected to this one across a strip boundary."""
        self.parts.extend(other.parts)
        self.crs = None
        self.total += other.total
        self.pixels += other.pixels
        self.first = min(self.first, other.first)
        self.last_row = max(self.last_row, other.last_row)
        self.left = min(self.left, other.left)
        self.right = max(self.right, other.right)


def _read_cropland(
    src: rasterio.io.DatasetReader, window: Window, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Values and the cropland mask (``value >= level`` on valid pixels) of one strip."""
    with unreadable_pixels_in_one_line(src):
        values = src.read(1, window=window)
        cropland = values >= level
        if cropland.any():
            cropland &= valid_pixels(src, values[np.newaxis], window)
    return values, cropland


def _strip_fields(
    values: np.ndarray,
    cropland: np.ndarray,
    row0: int,
    to_crs: CoordinateFunction,
    too_small: SmallRegionFilter | None = None,
) -> tuple[np.ndarray, list[FieldParts]]:
    """Label the strip's regions (4-connected, like GDAL) and polygonize each one.

    With ``too_small``, regions that can never reach the minimum area are removed from the label
    image first (see :class:`SmallRegionFilter`), so they cost no polygon and no Python object.

    Returns the label image (0 = not cropland, label ``i`` = ``fields[i - 1]``) and the fields.
    """
    labels = np.zeros(cropland.shape, dtype=np.int32)
    count = ndimage.label(cropland, structure=_FOUR_CONNECTED, output=labels)
    if count and too_small is not None:
        labels, count = too_small.remove(labels, count)
        cropland = labels > 0
    if count == 0:
        return labels, []
    totals, pixels = _label_sums(values, labels, cropland, count)
    parts: list[list[shapely.Polygon]] = [[] for _ in range(count)]
    crs_parts: list[shapely.Polygon | None] = [None] * count
    # only regions on the strip's first or last row can be joined with other strips' regions
    joinable = np.zeros(count + 1, dtype=bool)
    joinable[labels[0]] = joinable[labels[-1]] = True
    pixel_space = Affine.translation(0, row0)  # x = column, y = raster row: exact integers
    found = shapes(labels, mask=cropland, connectivity=4, transform=pixel_space)
    for value, pixel, crs in _shapes_to_polygons(found, to_crs, joinable):
        if pixel is not None:
            parts[value - 1].append(pixel)
        crs_parts[value - 1] = crs
    fields = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels)):
        top = labels[rows.start, cols] == index + 1
        first = (row0 + rows.start, cols.start + int(np.argmax(top)))
        sums = float(totals[index]), int(pixels[index])
        last_row = row0 + rows.stop - 1
        fields.append(
            FieldParts(
                parts[index], crs_parts[index], *sums, first, last_row, cols.start, cols.stop
            )
        )
    return labels, fields


def _shapes_to_polygons(
    found: Iterator[tuple[dict[str, Any], float]],
    to_crs: CoordinateFunction,
    joinable: np.ndarray,
) -> Iterator[tuple[int, shapely.Polygon | None, shapely.Polygon]]:
    """(value, pixel-space polygon, CRS polygon) from GeoJSON-like ``shapes`` output.

    Built with vectorized calls: ``shapely.geometry.shape`` walks every vertex in Python, and
    ``shapely.transform`` per field is slower than transforming all vertices of a strip at once.
    The pixel-space polygon, needed only to join a region with its parts in other strips, is None
    unless ``joinable[value]``: most regions of a noisy strip lie inside it.
    """
    gathered = shape_rings(found)
    if gathered is None:
        return zip([], [], [], strict=True)
    values, coords, ring_index, polygon_index = gathered
    # With ``indices`` the shapely constructors return arrays; the stubs' overloads also allow
    # a single geometry.
    crs = cast(
        _GeoArray,
        shapely.polygons(
            cast(_GeoArray, shapely.linearrings(to_crs(coords), indices=ring_index)),
            indices=polygon_index,
        ),
    )
    # GDAL gives one polygon per 4-connected region; should a label ever come in several, its
    # polygons are joined from pixel space like a field spanning strips
    repeated = np.bincount(values, minlength=len(joinable)) > 1
    crs[repeated[values]] = None
    pixel = np.full(len(values), None, dtype=object)
    wanted = (joinable | repeated)[values]
    if wanted.any():
        ring_wanted = wanted[polygon_index]
        coord_wanted = ring_wanted[ring_index]
        # consecutive ring and polygon numbers for the wanted subset, in the same order
        rings_kept = np.cumsum(ring_wanted) - 1
        polygons_kept = np.cumsum(wanted) - 1
        wanted_rings = shapely.linearrings(
            coords[coord_wanted], indices=rings_kept[ring_index[coord_wanted]]
        )
        pixel[wanted] = shapely.polygons(
            cast(_GeoArray, wanted_rings), indices=polygons_kept[polygon_index[ring_wanted]]
        )
    return zip(values.tolist(), pixel.tolist(), crs.tolist(), strict=True)


@dataclass(frozen=True)
class SmallRegionFilter:
    """Finds the regions of a strip that cannot become a field of at least the minimum area.

    A region that touches neither the strip's first row (unless that is the raster's first row)
    nor its last row (unless that is the raster's last row) is complete within the strip. Its
    area, even after hole filling, is at most that of its bounding box, so when the box is below
    the minimum area, :class:`FieldAssembler` would drop it anyway. Removing it before polygonizing
    changes no other field: each field's polygon, holes included, follows only its own pixels;
    its pixel sums come from its own label; and fields below the minimum area are never written,
    held back or used to drop islands. Regions touching such a boundary may continue in the next
    strip and are always kept.

    Bounding boxes are computed with numpy over row chunks (``ndimage.find_objects`` would build
    a tuple of slices per region: millions on noisy rasters), so memory stays at one strip.
    """

    min_area: float  # in CRS units squared, as the assembler compares it
    pixel_area: float  # |determinant| of the raster transform
    first: bool  # the strip starts at the raster's first row
    last: bool  # the strip ends at the raster's last row

    def remove(self, labels: np.ndarray, count: int) -> tuple[np.ndarray, int]:
        """Labels without the too-small regions, survivors renumbered 1..n in their old order.

        A box holds at least the region's pixels, so only regions with fewer pixels than the
        minimum area can have a small box: boxes are computed for those alone (on fields, a few
        specks; on noise, nearly all).
        """
        height, width = labels.shape
        sizes = np.zeros(count + 1, dtype=np.int64)
        for start in range(0, height, _SUM_ROWS):
            sizes += np.bincount(labels[start : start + _SUM_ROWS].ravel(), minlength=count + 1)
        candidate = sizes * self.pixel_area * (1 + 1e-9) < self.min_area
        candidate[0] = False
        if not candidate.any():
            return labels, count
        top = np.full(count + 1, height, dtype=np.int32)
        bottom = np.full(count + 1, -1, dtype=np.int32)
        left = np.full(count + 1, width, dtype=np.int32)
        right = np.full(count + 1, -1, dtype=np.int32)
        for start in range(0, height, _SUM_ROWS):
            chunk = labels[start : start + _SUM_ROWS]
            rows, cols = (index.astype(np.int32) for index in np.nonzero(candidate[chunk]))
            label = chunk[rows, cols]
            rows += start
            np.minimum.at(top, label, rows)
            np.maximum.at(bottom, label, rows)
            np.minimum.at(left, label, cols)
            np.maximum.at(right, label, cols)
        box_pixels = (bottom - top + 1).astype(np.int64) * (right - left + 1)
        # a relative margin far above float error: geometry areas are computed in CRS coordinates
        small = candidate & (box_pixels * self.pixel_area * (1 + 1e-9) < self.min_area)
        if not self.first:
            small &= top > 0
        if not self.last:
            small &= bottom < height - 1
        small[0] = False  # background stays 0
        if not small.any():
            return labels, count
        keep = ~small
        keep[0] = False
        new = np.zeros(count + 1, dtype=np.int32)
        survivors = int(keep.sum())
        new[keep] = np.arange(1, survivors + 1, dtype=np.int32)
        return new[labels], survivors


def _label_sums(
    values: np.ndarray, labels: np.ndarray, cropland: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of values and pixel count per label (1..count), in row chunks to bound memory.

    Labels are 0 outside ``cropland``, so whole chunks are counted (label 0 is dropped): the
    sums are of integers, exact in any order, and selecting the cropland first costs more.
    """
    totals = np.zeros(count + 1)
    pixels = np.zeros(count + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], _SUM_ROWS):
        rows = slice(start, start + _SUM_ROWS)
        chunk = labels[rows].ravel()
        totals += np.bincount(chunk, weights=values[rows].ravel(), minlength=count + 1)
        pixels += np.bincount(chunk, minlength=count + 1)
    return totals[1:], pixels[1:]


class _Joiner:
    """Joins regions that continue across strip boundaries; hands out the completed ones.

    Only fields touching the last row read stay in memory (``_open``), keyed by a union-find root;
    ``_bottom`` holds, per column of that row, the key of the open field there (0 = none).
    """

    def __init__(self) -> None:
        self._open: dict[int, FieldParts] = {}
        self._bottom: np.ndarray | None = None
        self._next_key = 1

    def add(self, labels: np.ndarray, fields: list[FieldParts], final: bool) -> list[FieldParts]:
        """Add one strip's fields; return the fields that can no longer grow."""
        keys = np.arange(self._next_key, self._next_key + len(fields), dtype=np.int64)
        self._next_key += len(fields)
        nodes = self._open | dict(zip(keys.tolist(), fields, strict=True))
        parent: dict[int, int] = {}
        for above, below in self._touching(labels, keys):
            _union(parent, above, below)
        for key in list(nodes):
            root = find_root(parent, key)
            if root != key:
                nodes[root].absorb(nodes.pop(key))
        if final:
            self._open, self._bottom = {}, None
            return list(nodes.values())
        open_keys = self._keep_bottom(labels[-1], keys, parent)
        self._open = {k: f for k, f in nodes.items() if k in open_keys}
        return [f for k, f in nodes.items() if k not in open_keys]

    def open_boxes(self) -> np.ndarray:
        """Top row, left and right column of every open field, as an (n, 3) array."""
        boxes = [(f.first[0], f.left, f.right) for f in self._open.values()]
        return np.array(boxes, dtype=np.int64).reshape(-1, 3)

    def _touching(self, labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Pairs (open key, new key) of regions sharing a pixel edge across the boundary."""
        if self._bottom is None or len(keys) == 0:
            return np.empty((0, 2), dtype=np.int64)
        top = labels[0]
        touch = (self._bottom > 0) & (top > 0)
        pairs = np.stack([self._bottom[touch], keys[top[touch] - 1]], axis=1)
        return np.unique(pairs, axis=0)

    def _keep_bottom(
        self, bottom: np.ndarray, keys: np.ndarray, parent: dict[int, int]
    ) -> set[int]:
        """Remember which field sits in each column of the strip's last row."""
        present = np.unique(bottom[bottom > 0])
        root_of = np.zeros(len(keys) + 1, dtype=np.int64)
        for label in present.tolist():
            root_of[label] = find_root(parent, int(keys[label - 1]))
        self._bottom = root_of[bottom]
        return set(root_of[present].tolist())


def find_root(parent: dict[int, int], key: int) -> int:
    """The root of ``key`` in the union-find forest ``parent`` (a key not in it is a root).

    The keys on the way are pointed straight at the root (path compression), so chains of joins
    across many strips stay short.
    """
    root = key
    while parent.get(root, root) != root:
        root = parent[root]
    while key != root:  # path compression
        parent[key], key = root, parent[key]
    return root


def _union(parent: dict[int, int], a: int, b: int) -> None:
    """Join two sets; the older (smaller) key stays the root."""
    ra, rb = find_root(parent, int(a)), find_root(parent, int(b))
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


# --- completed fields: CRS geometry, hole filling, ordering ------------------------------------


@dataclass(slots=True)
class FieldRecord:
    """A completed field in CRS coordinates, holes filled, ready to be written."""

    key: tuple[int, int, int]  # (last row, first pixel row, first pixel column): output order
    box: tuple[int, int, int, int]  # pixel rows top..last and columns left..right (exclusive)
    geometry: BaseGeometry
    mean_prob: float
    outer_area: float  # area inside the outer rings: only a smaller field can be an island
    filled: list[shapely.Polygon] = field(default_factory=list)


class FieldAssembler:
    """Turns completed fields into records and decides when each may be written.

    Filling a hole covers any field lying inside it (an island), which is then dropped so that
    fields never overlap. An island is complete no later than the field around it, so a field
    small enough to be an island is held back while open fields could still surround it, and is
    dropped if it lands in a hole filled later. With ``fill_holes_below <= min_area`` (the command
    line default) no field is ever held: islands in filled holes are below ``min_area`` anyway.

    Released records come sorted by ``key`` within each strip; as fields complete in order of
    their last row, the order is the same for any ``strip_rows`` unless fields were held back.
    """

    def __init__(self, transform: Affine, min_area: float, fill_below: float) -> None:
        self._to_crs = affine_function(transform)
        self._min_area = min_area
        self._fill_below = fill_below
        self._held: list[FieldRecord] = []

    def add(
        self, fields: list[FieldParts], open_boxes: np.ndarray, final: bool
    ) -> list[FieldRecord]:
        """Add completed fields; return the records that are now safe to write, in order."""
        records = [r for r in self._records(fields) if r.geometry.area >= self._min_area]
        ready = [r for r in records if r.outer_area >= self._fill_below]
        self._held.extend(r for r in records if r.outer_area < self._fill_below)
        self._drop_islands([hole for r in records for hole in r.filled])
        still_held: list[FieldRecord] = []
        for record in self._held:
            waiting = not final and _may_be_enclosed(record.box, open_boxes)
            (still_held if waiting else ready).append(record)
        self._held = still_held
        return sorted(ready, key=lambda r: r.key)

    def _records(self, fields: list[FieldParts]) -> Iterator[FieldRecord]:
        """Join each field's strip parts (exact, in pixel space), move to the CRS, fill holes."""
        for item in fields:
            geometry = item.crs if item.crs is not None else self._join(item.parts)
            geometry, filled = _fill_holes(geometry, self._fill_below)
            outer = _outer_area(geometry) if self._fill_below > 0 else 0.0
            key = (item.last_row, *item.first)
            box = (item.first[0], item.last_row, item.left, item.right)
            yield FieldRecord(key, box, geometry, item.total / item.pixels / 255.0, outer, filled)

    def _join(self, parts: list[shapely.Polygon]) -> BaseGeometry:
        """Union of strip parts, exact in pixel space (integer vertices), then moved to the CRS."""
        return shapely.transform(shapely.union_all(parts), self._to_crs)

    def _drop_islands(self, holes: list[shapely.Polygon]) -> None:
        """Forget held records that lie inside a hole that was just filled."""
        if not holes or not self._held:
            return
        tree = shapely.STRtree([r.geometry for r in self._held])
        inside = set(tree.query(holes, predicate="contains")[1].tolist())
        self._held = [r for i, r in enumerate(self._held) if i not in inside]


def _may_be_enclosed(box: tuple[int, int, int, int], open_boxes: np.ndarray) -> bool:
    """Whether open fields could still close a ring around the pixel ``box``.

    A surrounding field has pixels left of, right of and above the island, all read already and
    all in fields that are still open (its parts join only further down): a cheap, conservative
    test on the open fields' bounding boxes.
    """
    top, last, left, right = box
    tops, lefts, rights = open_boxes.T
    started = tops <= last
    return bool(
        np.any(started & (lefts < left))
        and np.any(started & (rights > right))
        and np.any((tops < top) & (lefts < right) & (rights > left))
    )


def affine_function(transform: Affine) -> CoordinateFunction:
    """Coordinates (column, row) -> CRS (x, y), vectorized for :func:`shapely.transform`."""
    a, b, c, d, e, f = transform[:6]

    def apply(coords: np.ndarray) -> np.ndarray:
        cols, rows = coords[:, 0], coords[:, 1]
        return np.column_stack([a * cols + b * rows + c, d * cols + e * rows + f])

    return apply


def _fill_holes(geometry: BaseGeometry, below: float) -> tuple[BaseGeometry, list[shapely.Polygon]]:
    """Fill interior rings smaller than ``below``; return the geometry and the filled holes."""
    if below <= 0:
        return geometry, []
    parts = shapely.get_parts(geometry)
    if not shapely.get_num_interior_rings(parts).any():
        return geometry, []
    polygons, filled = [], []
    for polygon in parts:
        holes = shapely.polygons(list(polygon.interiors))
        small = shapely.area(holes) < below
        filled.extend(holes[small].tolist())
        polygons.append(shapely.Polygon(polygon.exterior, [h.exterior for h in holes[~small]]))
    if not filled:
        return geometry, []
    return (polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)), filled


def _outer_area(geometry: BaseGeometry) -> float:
    """Area with all holes filled (the parts of a valid MultiPolygon do not overlap)."""
    parts = shapely.get_parts(geometry)
    return float(shapely.area(shapely.polygons(shapely.get_exterior_ring(parts))).sum())


def rows_per_strip(strip_rows: int, width: int) -> int:
    """``strip_rows``, fewer for wide rasters: a strip holds at most ``STRIP_PIXELS`` pixels.

    Memory grows with a strip's pixels, so a fixed row count would let memory grow with the
    scene's width (figures: BENCHMARKS.md, "Field polygons on adversarial rasters"); the result
    does not depend on the strip height.
    """
    return max(1, min(strip_rows, STRIP_PIXELS // max(1, width)))


def field_records(
    src: rasterio.io.DatasetReader,
    *,
    level: int,
    min_area: float,
    fill_holes_below: float,
    strip_rows: int,
    progress: bool = False,
    prefilter: bool = True,
) -> Iterator[list[FieldRecord]]:
    """Completed field records, strip by strip, in output order.

    A pixel is cropland when its value is at least ``level``. ``min_area`` and
    ``fill_holes_below`` are in CRS units squared: the geometry here is in the raster's CRS,
    and the caller knows the unit. ``strip_rows`` is lowered for wide rasters
    (:func:`rows_per_strip`). ``prefilter=False`` polygonizes every region, even those
    :class:`SmallRegionFilter` would remove: the same records, slower; tests compare the two.
    """
    joiner = _Joiner()
    assembler = FieldAssembler(src.transform, min_area, fill_holes_below)
    to_crs = affine_function(src.transform)
    pixel_area = abs(src.transform.determinant)
    strip_rows = rows_per_strip(strip_rows, src.width)
    starts = range(0, src.height, strip_rows)
    bar = tqdm(starts, desc="vectorize", unit="strip", disable=not progress, leave=False)
    for row0 in bar:
        rows = min(strip_rows, src.height - row0)
        final = row0 + rows >= src.height
        values, cropland = _read_cropland(src, Window(0, row0, src.width, rows), level)
        too_small = None  # with no minimum area, every region can be a field
        if prefilter and min_area > 0:
            too_small = SmallRegionFilter(min_area, pixel_area, first=row0 == 0, last=final)
        labels, fields = _strip_fields(values, cropland, row0, to_crs, too_small)
        del values, cropland
        completed = joiner.add(labels, fields, final)
        del labels, fields
        ready = assembler.add(completed, joiner.open_boxes(), final)
        del completed
        # nothing of this strip stays referenced here while the next one is polygonized, else
        # two strips' fields are alive at once (on noise, 100 000+ polygons per strip)
        yield ready
        del ready
