"""Landscape: the infinite, seed-defined farm landscape that every scene is a window onto.

A global grid of ~512 px cells with hash-jittered corners tiles the plane; the cell edges are the
road network. A cell's kind (farmland, pasture, forest, lake, village) comes from low-frequency
noise at its centre, so forests and pastures cluster; its content (parcels, lake and village
overlays, river, roads, as objects with looks, plus the crop polygons that become the labels)
comes from an RNG seeded by (seed, i, j) alone, so any cell can be rebuilt anywhere, in any order.
The geometry section holds the cutting and shaping tools the cells are made with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from rs_seg.config import SynthConfig
from rs_seg.synthetic.noise import hash_coords, seed_key, unit_floats, value_noise_at
from rs_seg.synthetic.objects import (
    ObjectList,
    ObjectTable,
    crop_look,
    forest_look,
    garden_look,
    grass_look,
    road_look,
    roof_look,
    verge_look,
    water_look,
)
from rs_seg.synthetic.spectra import band_interpolation_matrix, band_table

CELL = 512.0  # nominal cell size in pixels
JITTER = 0.18 * CELL  # how far a cell corner may move from the regular grid
CLEARANCE = 3.5  # distance of parcels from the road centre lines (widest road half-width + verge)
ROAD_REACH = 3.0  # how far a road polygon reaches beyond its cell
MIN_PARCEL_AREA = 700.0  # px²; smaller split pieces are not cut off
FOREST_LEVEL = 0.71  # forest noise above this makes a forest cell (~18 % of cells)
FOREST_FRINGE = 0.12  # below FOREST_LEVEL by up to this much, cells get extra woodland parcels
PASTURE_LEVEL = 0.76  # pasture noise above this makes a pasture cell (~11 % of cells)
RIVER_BAND = 12 * CELL  # each vertical band of this width may hold one meandering river


class CellKind(IntEnum):
    """A cell's land cover as a whole; it decides the shares of its parcels and its overlays."""

    FARM = 0
    PASTURE = 1
    FOREST = 2
    LAKE = 3
    VILLAGE = 4


# (crop name, weight, cover fraction range). Fallow is bare soil with a few weeds.
_CROPS: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("wheat", 0.28, (0.75, 0.95)),
    ("maize", 0.18, (0.45, 0.80)),
    ("barley", 0.15, (0.70, 0.90)),
    ("rapeseed", 0.12, (0.75, 0.95)),
    ("sugar_beet", 0.12, (0.55, 0.90)),
    ("fallow", 0.15, (0.00, 0.20)),
)

# Shares of (crop, grassland) parcels per cell kind; the rest are woodland.
_PARCEL_SHARES = {
    CellKind.FARM: (0.82, 0.13),
    CellKind.PASTURE: (0.20, 0.70),
    CellKind.LAKE: (0.20, 0.50),
    CellKind.VILLAGE: (0.75, 0.20),
}

# Painter's layers.
_GROUND, _PARCEL, _OVERLAY, _DETAIL, _BANK, _RIVER, _ROAD = range(7)


# ----------------------------------------------------------------------------------- geometry
def polygon_parts(geom: BaseGeometry) -> list[shapely.Polygon]:
    """The polygon parts of any geometry (splits and insets can yield multi-parts or lines)."""
    parts = shapely.get_parts(geom)
    return [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty]


def _oriented_extent(poly: shapely.Polygon) -> tuple[float, float, float]:
    """Length, width and long-axis angle of the minimum rotated rectangle."""
    # The stubs type it as any geometry; of a non-degenerate polygon it is a Polygon.
    rectangle = cast("shapely.Polygon", shapely.minimum_rotated_rectangle(poly))
    coords = np.asarray(rectangle.exterior.coords)
    if len(coords) < 4:
        return 0.0, 0.0, 0.0
    e1, e2 = coords[1] - coords[0], coords[2] - coords[1]
    l1, l2 = float(np.hypot(*e1)), float(np.hypot(*e2))
    axis = e1 if l1 >= l2 else e2
    return max(l1, l2), min(l1, l2), math.atan2(axis[1], axis[0])


def _half_plane(point: tuple[float, float], angle: float, bend: float) -> shapely.Polygon:
    """One side of a cut line through ``point``, optionally kinked at it by ``bend`` radians."""
    reach = 4 * CELL
    px, py = point
    a1, a2 = angle - bend / 2, angle + bend / 2
    nx, ny = -math.sin(angle), math.cos(angle)
    start = (px - reach * math.cos(a1), py - reach * math.sin(a1))
    end = (px + reach * math.cos(a2), py + reach * math.sin(a2))
    return shapely.Polygon(
        [
            start,
            (px, py),
            end,
            (end[0] + reach * nx, end[1] + reach * ny),
            (start[0] + reach * nx, start[1] + reach * ny),
        ]
    )


def _split_parcels(
    poly: shapely.Polygon, rng: np.random.Generator, scale: float = 1.0, depth: int = 0
) -> list[shapely.Polygon]:
    """Recursively cut a block into parcels along slightly rotated, sometimes kinked lines.

    Each piece draws its own target size, so parcel sizes vary from ~30 to ~200 px across
    (times ``scale``; forest stands are larger than fields).
    """
    target = rng.uniform(60.0, 220.0) * scale
    length, width, axis = _oriented_extent(poly)
    if depth >= 10 or length < target:
        return [poly]
    across = axis + math.pi / 2 + rng.normal(0.0, math.radians(10))
    if width > 0.75 * length and rng.random() < 0.4:
        across = axis + rng.normal(0.0, math.radians(10))  # occasionally cut the other way
    shift = rng.uniform(-0.2, 0.2) * length
    centre = poly.centroid
    point = (centre.x + shift * math.cos(axis), centre.y + shift * math.sin(axis))
    bend = rng.normal(0.0, math.radians(14)) if rng.random() < 0.3 else 0.0
    side = _half_plane(point, across, bend)
    parts = polygon_parts(poly.intersection(side)) + polygon_parts(poly.difference(side))
    if len(parts) < 2 or min(p.area for p in parts) < MIN_PARCEL_AREA:
        return [poly]
    return [leaf for part in parts for leaf in _split_parcels(part, rng, scale, depth + 1)]


def _blob(rng: np.random.Generator, centre: shapely.Point, radius: float) -> shapely.Polygon:
    """An irregular round shape (lake, village) from a few random harmonics of the radius."""
    theta = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    r = np.full_like(theta, radius)
    for harmonic, amplitude in ((2, 0.18), (3, 0.12), (5, 0.07)):
        r *= 1 + amplitude * np.sin(harmonic * theta + rng.uniform(0, 2 * math.pi))
    return shapely.Polygon(
        np.column_stack([centre.x + r * np.cos(theta), centre.y + r * np.sin(theta)])
    )


def _rectangles(
    centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray
) -> npt.NDArray[np.object_]:
    """Rotated rectangles (buildings) in one vectorised call."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    local = corners[None, :, :] * sizes[:, None, :]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = centres[:, None, 0] + local[..., 0] * cos - local[..., 1] * sin
    y = centres[:, None, 1] + local[..., 0] * sin + local[..., 1] * cos
    # The stubs allow a single Polygon for array input; an (n, 4, 2) array gives n polygons.
    return cast("npt.NDArray[np.object_]", shapely.polygons(np.stack([x, y], axis=-1)))


# ----------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """Everything one grid cell contributes: painted objects and crop label polygons."""

    i: int
    j: int
    bounds: tuple[float, float, float, float]  # including roads that reach into neighbours
    objects: ObjectTable
    crops: list[tuple[BaseGeometry, str]]  # (polygon in global pixels, crop name)


_CELL_SALTS = ("vertex", "cell", "kind", "forest", "pasture", "river")
_PIXEL_SALTS = ("fine", "coarse", "haze", "grain")


class Landscape:
    """The infinite, seed-defined landscape; builds cells on demand."""

    def __init__(self, seed: int, bands: Sequence[tuple[str, int]]) -> None:
        self.bands = list(bands)  # (name, wavelength in nm) per band
        self.to_bands = band_interpolation_matrix([wavelength for _, wavelength in self.bands])
        self.keys = {salt: seed_key(seed, salt) for salt in (*_CELL_SALTS, *_PIXEL_SALTS)}
        background = ObjectList()
        background.add(shapely.Point(0, 0), _GROUND, verge_look(np.random.default_rng(0)))
        self.background = background.table(self.to_bands)  # fills any pixel no object covers

    # -- grid ---------------------------------------------------------------------------
    def vertex(self, i: int, j: int) -> tuple[float, float]:
        """Jittered grid corner; shared by the four cells around it, so cells tile the plane."""
        u = unit_floats(hash_coords(self.keys["vertex"], i, j, [0, 1]))
        return i * CELL + (2 * u[0] - 1) * JITTER, j * CELL + (2 * u[1] - 1) * JITTER

    def quad(self, i: int, j: int) -> shapely.Polygon:
        """The cell's outline; its edges are the road centre lines."""
        return shapely.Polygon(
            [
                self.vertex(i, j),
                self.vertex(i + 1, j),
                self.vertex(i + 1, j + 1),
                self.vertex(i, j + 1),
            ]
        )

    def _forest_noise(self, i: int, j: int) -> float:
        return value_noise_at(self.keys["forest"], i / 3.0, j / 3.0)

    def woodiness(self, i: int, j: int) -> float:
        """Extra share of woodland parcels in cells next to forests, so forest edges are ragged."""
        rise = (self._forest_noise(i, j) - FOREST_LEVEL + FOREST_FRINGE) / FOREST_FRINGE
        return 0.45 * min(max(rise, 0.0), 1.0)

    def kind(self, i: int, j: int) -> CellKind:
        """Land cover of a cell; low-frequency noise makes forests and pastures cluster."""
        if self._forest_noise(i, j) > FOREST_LEVEL:
            return CellKind.FOREST
        chance = unit_floats(hash_coords(self.keys["kind"], i, j, [0, 1]))
        if chance[0] < 0.05:
            return CellKind.LAKE
        if chance[1] < 0.07:
            return CellKind.VILLAGE
        if value_noise_at(self.keys["pasture"], i / 2.5, j / 2.5) > PASTURE_LEVEL:
            return CellKind.PASTURE
        return CellKind.FARM

    def cell_at(self, x: float, y: float) -> tuple[int, int]:
        """Index of the cell containing a point (corners are jittered, so look around)."""
        i0, j0 = math.floor(x / CELL), math.floor(y / CELL)
        point = shapely.Point(x, y)
        for i, j in itertools.product((i0, i0 - 1, i0 + 1), (j0, j0 - 1, j0 + 1)):
            if self.quad(i, j).covers(point):
                return i, j
        return i0, j0

    def cells_near(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[tuple[int, int]]:
        """Indices of all cells whose content may reach into [x0, x1) x [y0, y1)."""
        pad = JITTER + ROAD_REACH
        for j in range(math.floor((y0 - pad) / CELL), math.floor((y1 + pad) / CELL) + 1):
            for i in range(math.floor((x0 - pad) / CELL), math.floor((x1 + pad) / CELL) + 1):
                yield i, j

    # -- cell content -------------------------------------------------------------------
    def cell(self, i: int, j: int) -> Cell:
        """Build a cell from an RNG seeded by (seed, i, j) only, so the result is reproducible."""
        rng = np.random.default_rng([self.keys["cell"], i + (1 << 32), j + (1 << 32)])
        quad = self.quad(i, j)
        kind = self.kind(i, j)
        objects = ObjectList()
        crops: list[tuple[BaseGeometry, str]] = []
        if kind == CellKind.FOREST:
            self._forest(rng, quad, objects)
        else:
            self._farmland(rng, kind, self.woodiness(i, j), quad, objects, crops)
        self._roads(rng, i, j, kind, objects)
        xmin, ymin, xmax, ymax = quad.bounds
        bounds = (xmin - ROAD_REACH, ymin - ROAD_REACH, xmax + ROAD_REACH, ymax + ROAD_REACH)
        return Cell(i, j, bounds, objects.table(self.to_bands), crops)

    def _forest(self, rng: np.random.Generator, quad: shapely.Polygon, objects: ObjectList) -> None:
        """Forest stands of different density and type filling the cell, a few clearings."""
        for stand in _split_parcels(quad, rng, scale=2.0):
            if rng.random() < 0.08:
                objects.add(stand, _GROUND, grass_look(rng, 0.0))
            else:
                objects.add(stand, _GROUND, forest_look(rng))
        self._river(quad, objects, blockers=[])

    def _farmland(
        self,
        rng: np.random.Generator,
        kind: CellKind,
        woodiness: float,
        quad: shapely.Polygon,
        objects: ObjectList,
        crops: list[tuple[BaseGeometry, str]],
    ) -> None:
        """Parcels inset from the roads, overlays (lake, village), river; crop labels last."""
        objects.add(quad, _GROUND, verge_look(rng))
        inner = quad.buffer(-CLEARANCE, join_style="mitre")
        parcels: list[tuple[BaseGeometry, str]] = []
        for block in polygon_parts(inner):
            for leaf in _split_parcels(block, rng):
                parcels.extend(self._parcel(rng, kind, woodiness, leaf, objects))
        blockers: list[BaseGeometry] = []
        if kind == CellKind.LAKE:
            blockers.append(self._lake(rng, inner, objects))
        elif kind == CellKind.VILLAGE:
            blockers.append(self._village(rng, inner, objects))
        self._river(quad, objects, blockers)
        blocked = shapely.union_all(blockers) if blockers else None
        for geom, crop in parcels:
            label = geom.difference(blocked) if blocked is not None else geom
            if not label.is_empty:
                crops.append((label, crop))

    def _parcel(
        self,
        rng: np.random.Generator,
        kind: CellKind,
        woodiness: float,
        leaf: shapely.Polygon,
        objects: ObjectList,
    ) -> list[tuple[BaseGeometry, str]]:
        """Paint one parcel; return it as a crop label candidate when it is cropland."""
        crop_share, grass_share = _PARCEL_SHARES[kind]
        woodland = 1 - woodiness  # near big forests, more parcels are woodland
        crop_share, grass_share = crop_share * woodland, grass_share * woodland
        draw = rng.random()
        _, _, axis = _oriented_extent(leaf)
        margin = rng.uniform(0.5, 1.4)  # half the width of the grass margin between fields
        parcel = leaf.buffer(-margin, join_style="mitre")
        if draw < crop_share:
            names = [c[0] for c in _CROPS]
            probs = np.array([c[1] for c in _CROPS])
            pick = int(rng.choice(len(names), p=probs / probs.sum()))
            objects.add(parcel, _PARCEL, crop_look(rng, names[pick], _CROPS[pick][2], axis))
            return [(p, names[pick]) for p in polygon_parts(parcel)]
        if draw < crop_share + grass_share:
            objects.add(parcel, _PARCEL, grass_look(rng, axis))
        else:
            objects.add(parcel, _PARCEL, forest_look(rng))
        return []

    def _lake(
        self, rng: np.random.Generator, inner: BaseGeometry, objects: ObjectList
    ) -> BaseGeometry:
        lake = _blob(rng, inner.centroid, rng.uniform(0.18, 0.36) * CELL).intersection(inner)
        objects.add(lake, _OVERLAY, water_look(rng))
        return lake

    def _village(
        self, rng: np.random.Generator, inner: BaseGeometry, objects: ObjectList
    ) -> BaseGeometry:
        """Gardens, a few streets and many small bright buildings around the cell centre."""
        centre = inner.centroid
        radius = rng.uniform(0.22, 0.36) * CELL
        village = _blob(rng, centre, radius).intersection(inner)
        objects.add(village, _OVERLAY, garden_look(rng))
        heading = rng.uniform(0, math.pi)
        streets = []
        for turn in (0.0, math.pi / 2 + rng.normal(0, 0.3), rng.uniform(0, math.pi)):
            angle = heading + turn
            dx, dy = math.cos(angle) * 1.3 * radius, math.sin(angle) * 1.3 * radius
            offset = rng.uniform(-0.3, 0.3) * radius
            ox, oy = centre.x - math.sin(angle) * offset, centre.y + math.cos(angle) * offset
            line = shapely.LineString([(ox - dx, oy - dy), (ox + dx, oy + dy)])
            streets.append(line)
            street = line.buffer(rng.uniform(1.2, 1.7)).intersection(village)
            objects.add(street, _DETAIL, road_look(rng, paved=True))
        self._buildings(rng, village, heading, shapely.union_all(streets), objects)
        return village

    def _buildings(
        self,
        rng: np.random.Generator,
        village: BaseGeometry,
        heading: float,
        streets: BaseGeometry,
        objects: ObjectList,
    ) -> None:
        """Buildings on a rotated, jittered grid inside the village, kept off the streets."""
        xmin, ymin, xmax, ymax = village.bounds
        spacing = rng.uniform(11.0, 15.0)
        span = max(xmax - xmin, ymax - ymin)
        steps = np.arange(-span, span, spacing)
        u, v = np.meshgrid(steps, steps)
        cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
        cos, sin = math.cos(heading), math.sin(heading)
        pts = np.column_stack(
            [cx + u.ravel() * cos - v.ravel() * sin, cy + u.ravel() * sin + v.ravel() * cos]
        )
        pts += rng.uniform(-2.0, 2.0, pts.shape)
        keep = rng.random(len(pts)) < 0.75
        points = shapely.points(pts)
        keep &= shapely.contains(village.buffer(-5.0), points)
        keep &= shapely.distance(streets, points) > 6.0
        pts = pts[keep]
        sizes = np.column_stack([rng.uniform(4.0, 9.0, len(pts)), rng.uniform(5.0, 12.0, len(pts))])
        angles = (
            heading + (rng.random(len(pts)) < 0.3) * (math.pi / 2) + rng.normal(0, 0.05, len(pts))
        )
        for building in _rectangles(pts, sizes, angles):
            objects.add(building, _DETAIL, roof_look(rng))

    def _river(
        self, quad: shapely.Polygon, objects: ObjectList, blockers: list[BaseGeometry]
    ) -> None:
        """Paint the parts of any meandering river (and its banks) that cross this cell."""
        for band, bank, water in self._river_pieces(quad):
            looks = np.random.default_rng([self.keys["river"], band + (1 << 32)])
            shore = forest_look(looks) if looks.random() < 0.5 else grass_look(looks, 0.0)
            objects.add(bank, _BANK, shore)
            objects.add(water, _RIVER, water_look(looks))
            blockers.append(bank)

    def _river_pieces(self, quad: shapely.Polygon) -> list[tuple[int, BaseGeometry, BaseGeometry]]:
        """Rivers are global curves x(y) (one per wide vertical band, or none), clipped per cell.

        Returns (band, bank, water) per river; the bank is a strip of trees or grass along it.
        """
        xmin, ymin, xmax, ymax = quad.bounds
        pieces = []
        for band in range(math.floor(xmin / RIVER_BAND) - 1, math.floor(xmax / RIVER_BAND) + 2):
            u = unit_floats(hash_coords(self.keys["river"], band, np.arange(9)))
            if u[0] > 0.55:
                continue
            amplitude, wavelength = (0.3 + 0.6 * u[2]) * CELL, (4 + 5 * u[3]) * CELL
            wiggle, wiggle_length = (0.05 + 0.15 * u[4]) * CELL, (0.8 + 0.8 * u[5]) * CELL
            width = 8 + 12 * u[6]
            mean_x = (band + 0.2 + 0.6 * u[1]) * RIVER_BAND
            bank = width / 2 + 3 + 6 * u[8]
            reach = amplitude + wiggle + bank
            if mean_x + reach < xmin or mean_x - reach > xmax:
                continue
            ys = np.arange(math.floor(ymin) - 16, math.ceil(ymax) + 17, 4.0)
            xs = (
                mean_x
                + amplitude * np.sin(2 * math.pi * ys / wavelength + 2 * math.pi * u[7])
                + wiggle * np.sin(2 * math.pi * ys / wiggle_length + 7 * u[7])
            )
            course = shapely.LineString(np.column_stack([xs, ys]))
            banks = course.buffer(bank).intersection(quad)
            if not banks.is_empty:
                pieces.append((band, banks, course.buffer(width / 2).intersection(quad)))
        return pieces

    def _roads(
        self, rng: np.random.Generator, i: int, j: int, kind: CellKind, objects: ObjectList
    ) -> None:
        """The cell owns its top and left edges; every 4th grid line is a wider main road."""
        top = (self.vertex(i, j), self.vertex(i + 1, j), self.kind(i, j - 1), j % 4 == 0)
        left = (self.vertex(i, j), self.vertex(i, j + 1), self.kind(i - 1, j), i % 4 == 0)
        for start, end, neighbour, main in (top, left):
            draw = rng.random()
            if kind == neighbour == CellKind.FOREST and not main:
                continue  # forests stay closed where no road crosses them
            if not main and draw < 0.12:
                continue  # some block boundaries are just wide field margins
            width = rng.uniform(3.6, 4.6) if main else rng.uniform(2.0, 3.0)
            road = shapely.LineString([start, end]).buffer(width / 2)
            objects.add(road, _ROAD, road_look(rng, paved=main or rng.random() < 0.5))


def build_landscape(cfg: SynthConfig) -> Landscape:
    """The landscape of ``cfg``: its seed and band count are all that define it."""
    return Landscape(cfg.seed, band_table(cfg.bands))
