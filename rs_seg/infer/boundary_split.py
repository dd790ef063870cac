"""Individual fields from a two-band probability raster (extent, boundary), streamed strip by strip.

Band 1 is the cropland extent, band 2 the field-boundary probability. A cropland pixel (band 1 at
least the extent level, valid) is a *seed* when band 2 is below the boundary level, else a
*boundary* pixel. The 4-connected components of the seeds are the fields' cores. Every boundary
pixel within ``grow`` steps of a seed (4-connected steps through cropland) joins the field of the
nearest core; at equal distance it takes the field of its first nearer neighbour in the order
north, west, east, south. Boundary pixels farther than ``grow`` from every seed form fields of
their own (their 4-connected components), so the fields still cover the cropland exactly, a
field the model saw as all boundary (narrower than two boundary widths) is not lost, and the
slivers an over-wide boundary band leaves are what ``min_area`` drops, as for any small region.

Streaming and exactness. The seeds of each strip are labelled and every label gets a global
key; keys of seeds that touch across a strip seam are joined in a union-find, as
:mod:`rs_seg.infer.polygonize` joins cropland regions. Growth runs one strip behind, on a window
of the strip plus ``grow`` rows above and below (the halo): a pixel's distance to the seeds and
the neighbour it takes its field from depend only on pixels at most ``grow`` steps away, all
inside the window, so every pixel of the strip gets the seed key it would get on the whole
raster; which field that key belongs to is the union-find's answer, the same for any strips.
Unreached boundary pixels are labelled per strip and joined across seams like seeds. Each strip
is then polygonized by key (not by cropland, so two fields that touch, or meet only through
boundary pixels, stay apart), and a field is the exact pixel-space union of its pieces.

A field is complete once its last row lies ``max(grow, 1)`` rows above the last row grown: no
seed of it can be further down, and nothing it could still grow into is unread. That rule
depends on the field alone, so fields complete in the same order, and come out in the same order
(by last row, then first pixel), for any ``strip_rows``. Their outlines are brought into one
canonical form (:func:`_to_crs`), so even simplified outlines do not depend on the strips.
Memory is about two strips plus the halo. Hole filling, the minimum area and the small-region
pre-filter work as in :mod:`rs_seg.infer.polygonize`, whose machinery is used here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from rasterio.windows import Window
from scipy import ndimage
from tqdm import tqdm

from rs_seg.field_rule import FOUR_CONNECTED, grow_padded, label_components, padded_keys
from rs_seg.infer.outlines import Outliner, Rings
from rs_seg.infer.polygonize import (
    CoordinateFunction,
    FieldAssembler,
    FieldParts,
    FieldRecord,
    SmallRegionFilter,
    affine_function,
    find_root,
    rows_per_strip,
)
from rs_seg.windows import loaded_ahead, unreadable_pixels_in_one_line, valid_pixels

_GeoArray = npt.NDArray[np.object_]


@dataclass(slots=True)
class _Strip:
    """One strip as read: what growth needs of it, as core or as another strip's halo."""

    row0: int
    values: np.ndarray  # band 1, uint8: the fields' pixel sums
    cropland: np.ndarray  # bool, small regions already removed
    seeds: np.ndarray  # the seed mask as read, then int32 labels of seed components (0: none)
    base: int = 0  # the key of seed label ``i`` is ``base + i``

    @property
    def stop(self) -> int:
        return self.row0 + len(self.values)


# scenes of this many pixels or more are outlined in a child process (see outlines.Outliner)
OUTLINE_CHILD_PIXELS = 4_000_000
# small regions are removed first where a strip has at least this many isolated cropland pixels
# per million (noise: hundreds of thousands; a model's fields: a handful; 0: every strip)
SPECKS_PER_MPX = 100
_Loaded = tuple[_Strip, np.ndarray, int]  # a strip as read, its seed labels and their count


class _Fields:
    """Keys of seed and unreached components, joined in a union-find, and their fields' pieces.

    ``_parent`` holds only keys that were joined into another (:func:`polygonize.find_root`);
    ``_open`` the pieces of every field not yet complete, by root key; ``_members`` the keys
    joined into each root, so a completed field's keys can be forgotten.
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}
        self._open: dict[int, FieldParts] = {}
        self._next_key = 1

    @property
    def next_key(self) -> int:
        """The key the next component will get."""
        return self._next_key

    def new_keys(self, count: int) -> int:
        """Reserve keys for ``count`` new components; they are ``base + 1 .. base + count``."""
        base = self._next_key - 1
        self._next_key += count
        return base

    def join(self, pairs: np.ndarray) -> None:
        """Join the components of each (key, key) pair; the older (smaller) root stays."""
        for a, b in pairs.tolist():
            ra, rb = find_root(self._parent, a), find_root(self._parent, b)
            if ra == rb:
                continue
            root, other = min(ra, rb), max(ra, rb)
            self._parent[other] = root
            self._members.setdefault(root, []).extend([other, *self._members.pop(other, [])])
            piece = self._open.pop(other, None)
            if piece is not None:
                self._add(root, piece)

    def add_piece(self, key: int, piece: FieldParts) -> None:
        self._add(find_root(self._parent, key), piece)

    def _add(self, root: int, piece: FieldParts) -> None:
        field = self._open.get(root)
        if field is None:
            self._open[root] = piece
        else:
            field.absorb(piece)

    def complete(self, below: int | None) -> list[FieldParts]:
        """Fields whose last row is above ``below`` (all when None), no longer kept."""
        done = [r for r, f in self._open.items() if below is None or f.last_row < below]
        for root in done:
            for key in self._members.pop(root, []):
                del self._parent[key]
        return [self._open.pop(root) for root in done]

    def open_boxes(self) -> np.ndarray:
        """Top row, left and right column of every open field, as an (n, 3) array."""
        boxes = [(f.first[0], f.left, f.right) for f in self._open.values()]
        return np.array(boxes, dtype=np.int64).reshape(-1, 3)


class _SeamKeys:
    """Keys for one strip's labelled components, joined with the strip above across the seam."""

    def __init__(self, fields: _Fields) -> None:
        self._fields = fields
        self._bottom: np.ndarray | None = None  # keys on the last row of the previous strip

    @property
    def next_key(self) -> int:
        """The key the next component will get."""
        return self._fields.next_key

    def add(self, count: int, top: np.ndarray, bottom: np.ndarray) -> int:
        """The key base of labels 1..count of a strip with ``top`` and ``bottom`` label rows.

        Label ``i`` gets key ``base + i``. Components on the top row are joined with those of
        the strip above that they touch.
        """
        base = self._fields.new_keys(count)
        top_keys = np.where(top > 0, top.astype(np.int64) + base, 0)
        if self._bottom is not None and count:
            touch = (self._bottom > 0) & (top_keys > 0)
            pairs = np.stack([self._bottom[touch], top_keys[touch]], axis=1)
            self._fields.join(np.unique(pairs, axis=0))
        self._bottom = np.where(bottom > 0, bottom.astype(np.int64) + base, 0)
        return base


def field_records(
    src: rasterio.io.DatasetReader,
    *,
    level: int,
    boundary_level: int,
    grow: int,
    min_area: float,
    fill_holes_below: float,
    strip_rows: int,
    progress: bool = False,
    prefilter: bool = True,
) -> Iterator[list[FieldRecord]]:
    """Completed field records, strip by strip, in output order (see the module's docstring).

    Like :func:`rs_seg.infer.polygonize.field_records`, with band 2 of ``src`` splitting the
    cropland into fields: a cropland pixel is a boundary pixel when its band 2 value is at least
    ``boundary_level``; boundary pixels join the nearest field core at most ``grow`` pixels away.
    ``prefilter=False`` never removes small regions first (the same records, slower).
    """
    height, width = src.height, src.width
    fields = _Fields()
    seed_keys, unreached_keys = _SeamKeys(fields), _SeamKeys(fields)
    assembler = FieldAssembler(src.transform, min_area, fill_holes_below)
    to_crs = affine_function(src.transform)
    pixel_area = abs(src.transform.determinant)
    may_hold = fill_holes_below > min_area  # otherwise the assembler never needs open boxes
    strip_rows = rows_per_strip(strip_rows, width)
    starts = range(0, height, strip_rows)
    read: deque[_Strip] = deque()  # the strips growth still needs, as core or halo
    to_grow: deque[_Strip] = deque()  # read, not yet grown and polygonized

    def load(row0: int) -> _Loaded:
        """A strip read, its small regions removed and its seeds labelled (GIL-free, mostly)."""
        rows = min(strip_rows, height - row0)
        too_small = None
        if prefilter and min_area > 0:
            too_small = SmallRegionFilter(
                min_area, pixel_area, first=row0 == 0, last=row0 + rows == height
            )
        strip = _read_strip(src, Window(0, row0, width, rows), level, boundary_level)
        if too_small is not None and _speckled(strip.cropland):
            strip = _without_small_regions(strip, too_small)
        return strip, *label_components(strip.seeds)

    def finish(core: _Strip, keys: np.ndarray, base: int) -> list[FieldRecord]:
        """Add a grown strip's pieces (once outlined) and hand on the fields it completes."""
        for key, piece in _pieces(core, keys, base, outliner.result()):
            fields.add_piece(key, piece)
        final = core.stop == height
        completed = fields.complete(None if final else core.stop - max(grow, 1))
        completed = [f for f in completed if _box_pixels(f) * pixel_area >= min_area]
        _to_crs(completed, to_crs, strip_rows)
        boxes = fields.open_boxes() if may_hold else np.empty((0, 3), dtype=np.int64)
        return assembler.add(completed, boxes, final)

    # a strip is outlined while the next one grows: one strip's keys more in memory
    outliner = Outliner(in_child=height * width >= OUTLINE_CHILD_PIXELS and len(starts) > 1)
    outlining: deque[tuple[_Strip, np.ndarray, int]] = deque()
    bar = tqdm(starts, desc="vectorize", unit="strip", disable=not progress, leave=False)
    with outliner:
        for strip, labels, count in loaded_ahead(load, bar):
            strip.seeds, strip.base = labels, seed_keys.add(count, labels[0], labels[-1])
            read.append(strip)
            to_grow.append(strip)
            # growing a strip needs ``grow`` rows below it: all read, or the raster's end
            while to_grow and (to_grow[0].stop + grow <= strip.stop or strip.stop == height):
                core = to_grow.popleft()
                keys, base = _core_keys(read, core, grow, height, unreached_keys)
                keys = np.ascontiguousarray(keys)
                outliner.submit(keys, core.cropland, core.row0)
                outlining.append((core, keys, base))
                del keys
                while read and read[0].stop <= core.stop - grow:
                    read.popleft()  # not in the next strip's halo
                if len(outlining) > 1:
                    yield finish(*outlining.popleft())
        while outlining:
            yield finish(*outlining.popleft())


def _box_pixels(field: FieldParts) -> int:
    """Pixels of a field's bounding box: the most its polygon can cover once holes are filled.

    A field whose box is under the minimum area is dropped before its outline is built; the
    assembler would drop it anyway, and nothing else depends on it (its holes fill no others).
    Splitting makes many such fields (specks of core, slivers of boundary).
    """
    return (field.last_row - field.first[0] + 1) * (field.right - field.left)


def _read_strip(
    src: rasterio.io.DatasetReader, window: Window, level: int, boundary_level: int
) -> _Strip:
    """Band 1, the cropland mask and the seed mask of a strip.

    Validity comes from band 1 as in the single-band path, so both paths see the same cropland.
    """
    with unreadable_pixels_in_one_line(src):
        data = src.read([1, 2], window=window)
        values = data[0]
        cropland = values >= level
        if cropland.any():
            cropland &= valid_pixels(src, data[:1], window)
    seeds = cropland & (data[1] < boundary_level)
    return _Strip(int(window.row_off), values, cropland, seeds)


def _without_small_regions(strip: _Strip, too_small: SmallRegionFilter) -> _Strip:
    """The strip without the cropland regions that cannot reach the minimum area.

    Removing them changes no other field: growth stays inside the 4-connected cropland region it
    starts in (see :class:`polygonize.SmallRegionFilter`), and fields too small are dropped
    later anyway. It pays only where a strip is speckled (noise: millions of one-pixel regions,
    each otherwise polygonized), so :func:`field_records` calls it only where :func:`_speckled`;
    the fields are the same either way.
    """
    labels = np.zeros(strip.cropland.shape, dtype=np.int32)
    count = ndimage.label(strip.cropland, structure=FOUR_CONNECTED, output=labels)
    cropland = too_small.remove(labels, count)[0] > 0
    del labels
    return _Strip(strip.row0, strip.values, cropland, strip.seeds & cropland)


def _speckled(cropland: np.ndarray) -> bool:
    """Whether a strip is speckled: :data:`SPECKS_PER_MPX` isolated cropland pixels or more.

    Isolated: without a cropland 4-neighbour. One pass of shifted comparisons, far cheaper than
    labelling the strip's regions, which the pre-filter then needs only on speckled strips.
    """
    alone = cropland.copy()
    alone[1:] &= ~cropland[:-1]
    alone[:-1] &= ~cropland[1:]
    alone[:, 1:] &= ~cropland[:, :-1]
    alone[:, :-1] &= ~cropland[:, 1:]
    return bool(np.count_nonzero(alone) >= SPECKS_PER_MPX * cropland.size / 1e6)


def _core_keys(
    read: deque[_Strip], core: _Strip, grow: int, height: int, unreached_keys: _SeamKeys
) -> tuple[np.ndarray, int]:
    """Every cropland pixel's key in the core strip: its grown seed key, else its unreached one.

    Keys are returned as int32 offsets from a base (key = base + offset, 0: no cropland): half
    the memory traffic of int64 and what GDAL takes, and a window spans only the components of a
    few strips. The seed keys of the core and its halo are written once, straight into the
    padded window that growth works on; the core's keys are a view of it.
    """
    top, bottom = max(0, core.row0 - grow), min(height, core.stop + grow)
    window = [s for s in read if s.stop > top and s.row0 < bottom]
    base = min(strip.base for strip in window)
    if unreached_keys.next_key - base >= np.iinfo(np.int32).max:
        raise OverflowError("a window's field keys span more than int32 holds")
    padded = padded_keys(bottom - top, core.values.shape[1], np.int32)
    croplands = []
    for strip in window:
        start, stop = max(top, strip.row0) - strip.row0, min(bottom, strip.stop) - strip.row0
        labels = strip.seeds[start:stop]
        rows = padded[1 + strip.row0 + start - top : 1 + strip.row0 + stop - top, :-1]
        np.multiply(labels > 0, strip.base - base, out=rows)  # not where=: much slower
        rows += labels
        croplands.append(strip.cropland[start:stop])
    cropland = croplands[0] if len(croplands) == 1 else np.concatenate(croplands)
    del croplands
    grown, unreached = grow_padded(cropland, padded, grow)
    del cropland
    offset = core.row0 - top
    keys = grown[offset : offset + len(core.values)]
    stride = padded.shape[1]
    rows, cols = unreached // stride - 1 - offset, unreached % stride
    _add_unreached(keys, base, rows, cols, unreached_keys)
    return keys, base


def _add_unreached(
    keys: np.ndarray, base: int, rows: np.ndarray, cols: np.ndarray, unreached_keys: _SeamKeys
) -> None:
    """Key the components of the unreached pixels at (``rows``, ``cols``) into ``keys``, in place.

    ``keys`` hold offsets from ``base``, as :func:`_core_keys` returns them.

    Growth hands over every unreached pixel of its window; those of the core strip are usually a
    few, so only the rows from the first to the last that has any are labelled.
    """
    inside = (rows >= 0) & (rows < len(keys))
    rows, cols = rows[inside], cols[inside]
    none = np.zeros(keys.shape[1], dtype=np.int32)
    if rows.size == 0:
        unreached_keys.add(0, none, none)
        return
    first, stop = int(rows.min()), int(rows.max()) + 1
    unreached = np.zeros((stop - first, keys.shape[1]), dtype=bool)
    unreached[rows - first, cols] = True
    labels, count = label_components(unreached)
    top = labels[0] if first == 0 else none
    bottom = labels[-1] if stop == len(keys) else none
    unreached_base = unreached_keys.add(count, top, bottom)
    keys[rows, cols] = labels[rows - first, cols] + (unreached_base - base)


def _pieces(
    core: _Strip, keys: np.ndarray, base: int, rings: Rings | None
) -> Iterator[tuple[int, FieldParts]]:
    """The strip's pixels as (key, piece) with pixel-space parts, from their outlines.

    ``keys`` are int32 offsets from ``base`` (:func:`_core_keys`), which GDAL took as they are
    to draw ``rings``; a key's pixels may form several polygons in one strip (a field entering
    it twice), all kept as parts. A piece's pixel count, rows, columns and first pixel come from
    its polygons' vertices (a pixel-edge outline's area is its pixel count; the leftmost vertex
    on its top edge starts its first pixel), so only the pixel sums need another pass.
    """
    if rings is None:
        return
    values, coords, ring_index, polygon_index = rings
    mask = core.cropland
    linear = shapely.linearrings(coords, indices=ring_index)
    polygons = cast(_GeoArray, shapely.polygons(cast(_GeoArray, linear), indices=polygon_index))
    ids, piece_of = np.unique(values, return_inverse=True)
    # sums of integers, exact in any order; from the cropland pixels alone
    totals = np.bincount(keys[mask], weights=core.values[mask])[ids]
    pixels = np.bincount(piece_of, weights=shapely.area(polygons), minlength=len(ids))
    top, bottom, left, right, first_col = _piece_extents(
        coords, ring_index, piece_of[polygon_index]
    )
    parts: list[list[shapely.Polygon]] = [[] for _ in range(len(ids))]
    for index, polygon in zip(piece_of.tolist(), polygons.tolist(), strict=True):
        parts[index].append(polygon)
    columns = zip(
        (ids + base).tolist(),
        parts,
        totals.tolist(),
        pixels.tolist(),
        top.tolist(),
        first_col.tolist(),
        bottom.tolist(),
        left.tolist(),
        right.tolist(),
        strict=True,
    )
    for key, polygons_of, total, count, row, col, stop, start, end in columns:
        yield (
            key,
            FieldParts(polygons_of, None, total, round(count), (row, col), stop - 1, start, end),
        )


def _piece_extents(
    coords: np.ndarray, ring_index: np.ndarray, ring_piece: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Top row, bottom row (exclusive), left and right column and first column of each piece.

    From the vertices alone (every ring bounds its piece's pixels, so holes change no extent);
    the first column is the leftmost vertex on the piece's top edge.
    """
    count = int(ring_piece.max()) + 1
    piece = ring_piece[ring_index]
    x, y = coords[:, 0].astype(np.int64), coords[:, 1].astype(np.int64)
    big = np.iinfo(np.int64).max
    top, left = np.full(count, big), np.full(count, big)
    bottom, right = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    np.minimum.at(top, piece, y)
    np.maximum.at(bottom, piece, y)
    np.minimum.at(left, piece, x)
    np.maximum.at(right, piece, x)
    on_top = y == top[piece]
    first_col = np.full(count, big)
    np.minimum.at(first_col, piece[on_top], x[on_top])
    return top, bottom, left, right, first_col


def _to_crs(fields: list[FieldParts], to_crs: CoordinateFunction, strip_rows: int) -> None:
    """Join each field's pieces and move it to the CRS, in the same form for any strips.

    The union is exact in pixel space. GDAL's outlines have vertices only where they turn; the
    union of pieces also has them where strip seams cut the outline, so those are removed (a
    tolerance of 0 removes only vertices in line with their neighbours). Normalizing then fixes
    the ring order and start vertex, so a field has the same vertices in the same order however
    it was cut, and simplification, which depends on both, is independent of the strips too.
    """
    if not fields:
        return
    geometries = np.empty(len(fields), dtype=object)
    geometries[:] = [f.parts[0] if len(f.parts) == 1 else None for f in fields]
    joined = [i for i, f in enumerate(fields) if len(f.parts) > 1]
    if joined:
        geometries[joined] = shapely.simplify(
            _unions(fields, joined, strip_rows), 0, preserve_topology=False
        )
    moved = shapely.transform(shapely.normalize(geometries), to_crs)
    for item, geometry in zip(fields, moved.tolist(), strict=True):
        item.crs, item.parts = geometry, []


def _unions(fields: list[FieldParts], joined: list[int], strip_rows: int) -> list[shapely.Geometry]:
    """The exact union of the pieces of each joined field.

    Pieces from different strips never overlap and meet only along seam rows; noded there
    (:func:`_noded_at_seams`) they form a coverage, whose union GEOS builds far faster than a
    general overlay, which took a large share of a wide scene's run. Within one strip,
    two keys of a field (joined through other strips) may share any edge, so the parts of each
    strip are first joined by a general union, which is small. A part's strip is where its top
    row lies (strips are ``strip_rows`` tall).
    """
    polygons: list[shapely.Polygon] = []
    counts = []
    for index in joined:
        field = fields[index]
        by_strip: dict[int, list[shapely.Polygon]] = {}
        strips = (shapely.bounds(field.parts)[:, 1] // strip_rows).astype(int).tolist()
        for strip, part in zip(strips, field.parts, strict=True):
            by_strip.setdefault(strip, []).append(part)
        before = len(polygons)
        for parts in by_strip.values():
            if len(parts) == 1:
                polygons.extend(parts)
            else:
                polygons.extend(shapely.get_parts(shapely.union_all(parts)).tolist())
        counts.append(len(polygons) - before)
    noded = _noded_at_seams(polygons).tolist()
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    return [shapely.coverage_union_all(noded[a:b]) for a, b in zip(starts, ends, strict=True)]


def _noded_at_seams(parts: list[shapely.Polygon]) -> _GeoArray:
    """``parts`` with a vertex at every pixel corner of their top and bottom edges.

    A piece meets the pieces of its field in the strips above and below only along its own top
    and bottom rows, where GDAL put vertices only at turns; the same points on both sides make
    the pieces a correctly noded coverage. The extra vertices lie in line and are removed again.
    """
    _, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(parts)
    ring_of = np.repeat(np.arange(len(ring_offsets) - 1), np.diff(ring_offsets))
    polygon_of = np.repeat(np.arange(len(polygon_offsets) - 1), np.diff(polygon_offsets))[ring_of]
    x, y = coords[:, 0], coords[:, 1]
    top = np.full(len(parts), np.inf)
    bottom = np.full(len(parts), -np.inf)
    np.minimum.at(top, polygon_of, y)
    np.maximum.at(bottom, polygon_of, y)
    step = np.zeros(len(x))
    step[:-1] = x[1:] - x[:-1]
    same_ring = np.zeros(len(x), dtype=bool)
    same_ring[:-1] = ring_of[1:] == ring_of[:-1]
    level = np.zeros(len(x), dtype=bool)
    level[:-1] = y[1:] == y[:-1]
    on_edge = (y == top[polygon_of]) | (y == bottom[polygon_of])
    seam = same_ring & level & on_edge & (np.abs(step) > 1)
    added = np.where(seam, np.abs(step) - 1, 0).astype(np.int64)
    counts = added + 1
    dense = np.repeat(coords, counts, axis=0)
    within = np.arange(len(dense)) - np.repeat(np.cumsum(counts) - counts, counts)
    dense[:, 0] += within * np.repeat(np.sign(step), counts)
    ring_sizes = np.bincount(ring_of, weights=counts, minlength=len(ring_offsets) - 1)
    dense_offsets = np.concatenate([[0], np.cumsum(ring_sizes)]).astype(np.int64)
    polygon = shapely.GeometryType.POLYGON
    return shapely.from_ragged_array(polygon, dense, (dense_offsets, polygon_offsets))
