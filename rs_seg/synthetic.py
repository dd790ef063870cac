"""Deterministic synthetic farm landscapes: multi-band GeoTIFF scenes plus matching crop polygons.

Why synthetic scenes: demos, tests and benchmarks need realistic-looking inputs of any size,
offline, with labels that agree with the pixels exactly. Everything here is a pure function of
the config (hashes and RNGs seeded from ``cfg.seed``, never global state), so two runs with the
same config and library versions produce identical pixels and polygons.

Design, chosen so that a 20000 x 20000 scene renders in bounded memory:

* **One infinite landscape per seed, in global pixel coordinates.** Scenes are windows onto it at
  different, non-overlapping places, so scene ``k`` looks different from scene ``k + 1``. Each
  window is nudged by whole cells so that its centre lies in farmland (small scenes would
  otherwise sometimes be all forest). On the ground, scenes form rows with gaps in one UTM zone.
* **Cells.** A global grid of ~512 px cells with hash-jittered corners tiles the plane; cell edges
  are the road network. A cell's land cover (farmland, pasture, forest, lake, village) comes from
  low-frequency value noise at its centre, so forests and pastures form clusters. Its content comes
  from an RNG seeded by ``(seed, i, j)`` alone, so any cell can be rebuilt anywhere, in any order.
  Farmland is split recursively along slightly rotated, sometimes kinked lines into parcels of
  ~30-200 px, which are inset from the roads and from each other (field margins).
* **Objects in painter's layers.** A cell yields polygons (ground, parcels, lake/village overlays,
  river, roads) with a land-cover class and a spectral recipe: a ground and a canopy spectrum, a
  cover fraction, crop-row stripes along a per-parcel direction and period, and noise amplitudes.
* **Pixels.** A window (256 rows x <= 1024 columns) rasterizes the objects of the cells around it
  into an object-id raster and computes all bands vectorised from per-object arrays. All noise
  (crowns, within-field variation, haze, sensor grain) is a hash of global pixel coordinates, so a
  pixel does not depend on how the scene is cut into windows.
* **Labels.** A crop parcel minus what is painted over it (lake, village, river) is exactly the
  set of cropland pixels. When the renderer is done with a cell, its parcels are clipped to the
  scene, reprojected to EPSG:4326 and appended to ``fields.gpkg`` in small batches. Like real
  reference data, they are not cut at the nodata swath; consumers must mask nodata themselves.
* **Memory.** Only the current window, the one or two rows of cells it touches and a capped GDAL
  block cache are alive at any time, so peak memory does not grow with the scene size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from rs_seg.config import SynthConfig
from rs_seg.errors import RsSegError
from rs_seg.staging import FolderKind, check_folder_output, staged_dir

__all__ = [
    "LandCover",
    "RenderedWindow",
    "SceneSpec",
    "SynthResult",
    "band_names",
    "generate_scenes",
    "render_window",
    "scene_specs",
]

TILE = 256  # GeoTIFF block size
STRIP_ROWS = 256  # rows rendered per strip (one row of tiles)
CHUNK_COLS = 1024  # columns per rendered window, so working memory does not grow with the width
GDAL_CACHE_MB = 128
LABEL_BATCH = 2000  # features buffered before they are appended to the GeoPackage

CELL = 512.0  # nominal cell size in pixels
JITTER = 0.18 * CELL  # how far a cell corner may move from the regular grid
CLEARANCE = 3.5  # distance of parcels from the road centre lines (widest road half-width + verge)
ROAD_REACH = 3.0  # how far a road polygon reaches beyond its cell
MIN_PARCEL_AREA = 700.0  # px²; smaller split pieces are not cut off
MIN_LABEL_AREA = 1.0  # px²; slivers smaller than a pixel are dropped from the labels
FOREST_LEVEL = 0.71  # forest noise above this makes a forest cell (~18 % of cells)
FOREST_FRINGE = 0.12  # below FOREST_LEVEL by up to this much, cells get extra woodland parcels
PASTURE_LEVEL = 0.76  # pasture noise above this makes a pasture cell (~11 % of cells)
RIVER_BAND = 12 * CELL  # each vertical band of this width may hold one meandering river
SHIFT_CELLS = 4  # a scene may move this many cells east/south in the landscape into farmland

ORIGIN_EASTING = 400_000.0
ORIGIN_NORTHING = 5_300_000.0  # bottom of the first row of scenes
ROW_SPAN_M = 400_000.0  # scenes wrap to a new row after this many metres of eastings
UTM_MAX_EASTING = 1_000_000.0
SWATH_MIN, SWATH_MAX = 0.02, 0.06  # nodata swath width at the top/bottom, as a fraction of size

LABELS_FILE = "fields.gpkg"
SUMMARY_FILE = "summary.json"
SYNTH_FOLDER = FolderKind("rs-seg synth", SUMMARY_FILE, ("scenes", LABELS_FILE, SUMMARY_FILE))
"""What ``rs-seg synth`` writes: ``--overwrite`` replaces such a folder and nothing else."""
LABEL_LAYER = "fields"
LABEL_CRS = "EPSG:4326"


class LandCover(IntEnum):
    """Class codes of the truth raster returned by :func:`render_window` (0 marks nodata)."""

    NODATA = 0
    CROPLAND = 1
    GRASSLAND = 2
    FOREST = 3
    WATER = 4
    ROAD = 5
    BUILDING = 6
    GARDEN = 7
    VERGE = 8


class _Kind(IntEnum):
    FARM = 0
    PASTURE = 1
    FOREST = 2
    LAKE = 3
    VILLAGE = 4


# ----------------------------------------------------------------------------------- spectra
# Reflectance x 10000 at anchor wavelengths; any band is interpolated linearly between them, so
# the number of bands changes neither the landscape nor the spectra of the common bands.
_ANCHORS_NM = np.array([443, 490, 560, 665, 705, 740, 783, 842, 945, 1240, 1610, 2190], float)
_MATERIALS: dict[str, tuple[float, ...]] = {
    "soil": (600, 700, 950, 1300, 1450, 1550, 1650, 1750, 1850, 2300, 2600, 2300),
    "soil_dry": (950, 1100, 1450, 1850, 2000, 2100, 2200, 2300, 2400, 2900, 3300, 2900),
    "wheat": (250, 330, 650, 330, 1000, 2600, 3500, 3900, 3900, 3000, 2000, 950),
    "maize": (270, 360, 720, 380, 1150, 3000, 4000, 4400, 4350, 3300, 2100, 1000),
    "barley": (420, 520, 880, 950, 1500, 2400, 2900, 3100, 3200, 3100, 2800, 1900),
    "rapeseed": (330, 420, 1250, 1050, 1800, 3200, 3900, 4200, 4150, 3300, 2200, 1100),
    "sugar_beet": (220, 290, 640, 270, 950, 2900, 4200, 4700, 4650, 3500, 1900, 820),
    "weeds": (320, 420, 780, 560, 1200, 2300, 2800, 3000, 3000, 2800, 2300, 1350),
    "grass": (280, 370, 760, 450, 1150, 2600, 3200, 3500, 3450, 2900, 2100, 1100),
    "grass_dry": (600, 700, 1000, 1150, 1400, 1850, 2150, 2350, 2400, 2700, 2900, 2200),
    "canopy": (170, 240, 480, 220, 680, 2000, 2800, 3100, 3050, 2200, 1300, 540),
    "shadow": (110, 140, 230, 140, 280, 650, 950, 1050, 1050, 780, 480, 240),
    "water": (700, 650, 560, 300, 250, 200, 170, 150, 120, 100, 90, 80),
    "water_turbid": (700, 700, 760, 520, 480, 420, 380, 350, 300, 200, 120, 100),
    "asphalt": (850, 900, 950, 1000, 1050, 1080, 1100, 1150, 1200, 1350, 1500, 1400),
    "gravel": (1100, 1250, 1500, 1750, 1850, 1950, 2000, 2100, 2200, 2600, 3000, 2700),
    "roof_grey": (1700, 1800, 1900, 2000, 2050, 2100, 2150, 2200, 2250, 2450, 2700, 2500),
    "roof_red": (750, 800, 950, 2000, 2400, 2650, 2750, 2850, 2900, 3100, 3300, 2900),
    "roof_dark": (550, 580, 620, 680, 700, 720, 740, 760, 790, 880, 980, 930),
}
# (crop name, weight, cover fraction range). Fallow is bare soil with a few weeds.
_CROPS: tuple[tuple[str, float, tuple[float, float]], ...] = (
    ("wheat", 0.28, (0.75, 0.95)),
    ("maize", 0.18, (0.45, 0.80)),
    ("barley", 0.15, (0.70, 0.90)),
    ("rapeseed", 0.12, (0.75, 0.95)),
    ("sugar_beet", 0.12, (0.55, 0.90)),
    ("fallow", 0.15, (0.00, 0.20)),
)
_ROOFS = ("roof_grey", "roof_red", "roof_dark")

# Band order: the six common bands by wavelength, then extras; see band_names().
_CORE_BANDS = (
    ("blue", 490),
    ("green", 560),
    ("red", 665),
    ("nir", 842),
    ("swir16", 1610),
    ("swir22", 2190),
)
_EXTRA_BANDS = (
    ("rededge1", 705),
    ("rededge2", 740),
    ("rededge3", 783),
    ("nir08", 865),
    ("coastal", 443),
    ("nir09", 945),
    ("yellow", 610),
    ("swir12", 1240),
    ("swir20", 2040),
    ("deepblue", 412),
)


def _band_table(count: int) -> list[tuple[str, int]]:
    """Band names and centre wavelengths; NIR appears exactly when there are 4 bands or more."""
    if count == 1:
        return [("red", 665)]
    if count == 2:
        return [("green", 560), ("red", 665)]
    if count <= len(_CORE_BANDS):
        return list(_CORE_BANDS[:count])
    extras = count - len(_CORE_BANDS)
    if extras > len(_EXTRA_BANDS):
        raise RsSegError(f"at most {len(_CORE_BANDS) + len(_EXTRA_BANDS)} bands are supported")
    return list(_CORE_BANDS) + list(_EXTRA_BANDS[:extras])


def band_names(count: int) -> list[str]:
    """The band descriptions a scene with ``count`` bands gets, in band order."""
    return [name for name, _ in _band_table(count)]


def _interpolation_matrix(wavelengths: Sequence[float]) -> np.ndarray:
    """Matrix (bands x anchors) that turns an anchor spectrum into band values in one product."""
    eye = np.eye(len(_ANCHORS_NM))
    return np.array([[np.interp(w, _ANCHORS_NM, row) for row in eye] for w in wavelengths])


def _material(name: str) -> np.ndarray:
    return np.asarray(_MATERIALS[name], dtype=np.float64)


# ----------------------------------------------------------------------------------- hashing
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _seed_key(seed: int, salt: str) -> int:
    """A 64-bit key per (seed, purpose); blake2b rather than hash() so it is stable across runs."""
    digest = hashlib.blake2b(f"{seed}/{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: cheap, vectorised, and good enough to look like white noise."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


def _hash(key: int, *coords: Any) -> np.ndarray:
    """Hash integer coordinates (broadcast together) with a key into uint64 values."""
    arrays = [np.asarray(c, dtype=np.int64).astype(np.uint64) for c in coords]
    h = np.full(np.broadcast_shapes(*(a.shape for a in arrays)), key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h = _mix64(h ^ (a * _GOLDEN + _GOLDEN))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from hash values."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _noise_at(key: int, x: float, y: float) -> float:
    """Value noise at one point (lattice spacing 1); used for cell-level decisions."""
    ix, iy = math.floor(x), math.floor(y)
    tx, ty = _smoothstep(x - ix), _smoothstep(y - iy)
    v = _unit(_hash(key, [iy, iy, iy + 1, iy + 1], [ix, ix + 1, ix, ix + 1]))
    top = v[0] * (1 - tx) + v[1] * tx
    bottom = v[2] * (1 - tx) + v[3] * tx
    return float(top * (1 - ty) + bottom * ty)


def _value_noise(key: int, x0: int, y0: int, w: int, h: int, spacing: int) -> np.ndarray:
    """Smooth value noise over a window, separably interpolated (cheap: ~4 passes per pixel).

    The lattice and the interpolation weights depend on global coordinates only, so every pixel
    gets the same value whatever window it is rendered in.
    """
    xs = np.arange(x0, x0 + w, dtype=np.int64)
    ys = np.arange(y0, y0 + h, dtype=np.int64)
    ix, iy = xs // spacing, ys // spacing
    tx = _smoothstep((xs - ix * spacing) / spacing).astype(np.float32)
    ty = _smoothstep((ys - iy * spacing) / spacing).astype(np.float32)[:, None]
    lx = np.arange(ix[0], ix[-1] + 2)
    ly = np.arange(iy[0], iy[-1] + 2)
    lattice = _unit(_hash(key, ly[:, None], lx[None, :])).astype(np.float32)
    cx, cy = ix - ix[0], iy - iy[0]
    along_x = lattice[:, cx] * (1 - tx) + lattice[:, cx + 1] * tx
    return along_x[cy] * (1 - ty) + along_x[cy + 1] * ty


# ----------------------------------------------------------------------------------- looks
@dataclass(frozen=True)
class _Look:
    """How an object is painted: ground + cover x (canopy - ground), cover varied per pixel.

    Per pixel, cover = ``cover`` + ``rows`` x sin(row phase) + ``fine`` x crown-scale noise +
    ``coarse`` x field-scale noise, clipped to 0..1. This one recipe gives crop rows, patchy
    forest crowns, mowing stripes and smooth water from a handful of numbers per object.
    """

    land_cover: LandCover
    ground: np.ndarray
    canopy: np.ndarray
    cover: float
    rows: float = 0.0
    row_period: float = 6.0
    row_angle: float = 0.0
    row_phase: float = 0.0
    fine: float = 0.0
    coarse: float = 0.0


# Columns of the per-object parameter table.
_G0, _ROWS, _FINE, _COARSE, _KX, _KY, _PHASE = range(7)


def _jittered(rng: np.random.Generator, name: str, spread: float) -> np.ndarray:
    """A material spectrum with per-object brightness and per-wavelength variation."""
    brightness = rng.uniform(1 - spread, 1 + spread)
    return _material(name) * brightness * (1 + rng.normal(0.0, spread / 3, len(_ANCHORS_NM)))


def _soil(rng: np.random.Generator) -> np.ndarray:
    """Soil between moist and dry, so neighbouring fields differ in brightness."""
    wet = rng.uniform(0.0, 1.0)
    return _jittered(rng, "soil", 0.08) * wet + _jittered(rng, "soil_dry", 0.08) * (1 - wet)


def _crop_look(
    rng: np.random.Generator, crop: str, cover: tuple[float, float], axis: float
) -> _Look:
    canopy = "weeds" if crop == "fallow" else crop
    along = axis if rng.random() < 0.7 else axis + math.pi / 2
    return _Look(
        LandCover.CROPLAND,
        ground=_soil(rng),
        canopy=_jittered(rng, canopy, 0.10),
        cover=rng.uniform(*cover),
        rows=rng.uniform(0.06, 0.22),
        row_period=rng.uniform(3.0, 7.0),
        row_angle=along + rng.normal(0.0, math.radians(4)),
        row_phase=rng.uniform(0, 2 * math.pi),
        fine=0.10,
        coarse=rng.uniform(0.10, 0.30),
    )


def _grass_look(rng: np.random.Generator, axis: float) -> _Look:
    return _Look(
        LandCover.GRASSLAND,
        ground=_jittered(rng, "grass_dry", 0.08),
        canopy=_jittered(rng, "grass", 0.10),
        cover=rng.uniform(0.55, 0.90),
        rows=rng.uniform(0.0, 0.07),
        row_period=rng.uniform(5.0, 10.0),
        row_angle=axis,
        row_phase=rng.uniform(0, 2 * math.pi),
        fine=0.18,
        coarse=rng.uniform(0.2, 0.4),
    )


def _forest_look(rng: np.random.Generator) -> _Look:
    """A forest stand: dark conifers or brighter broadleaves, dense or thinned."""
    broadleaf = rng.uniform(0.75, 1.25)  # scales the NIR plateau and the visible bands
    canopy = _jittered(rng, "canopy", 0.10) * np.where(_ANCHORS_NM > 700, broadleaf, 1.0)
    return _Look(
        LandCover.FOREST,
        ground=_jittered(rng, "shadow", 0.10),
        canopy=canopy,
        cover=rng.uniform(0.45, 0.75),
        fine=0.9,
        coarse=rng.uniform(0.4, 0.8),
    )


def _water_look(rng: np.random.Generator) -> _Look:
    return _Look(
        LandCover.WATER,
        ground=_jittered(rng, "water", 0.06),
        canopy=_jittered(rng, "water_turbid", 0.06),
        cover=rng.uniform(0.1, 0.5),
        fine=0.05,
        coarse=0.5,
    )


def _verge_look(rng: np.random.Generator) -> _Look:
    return _Look(
        LandCover.VERGE,
        ground=_jittered(rng, "grass_dry", 0.08),
        canopy=_jittered(rng, "grass", 0.08),
        cover=0.6,
        fine=0.5,
        coarse=0.3,
    )


def _road_look(rng: np.random.Generator, paved: bool) -> _Look:
    surface = _jittered(rng, "asphalt" if paved else "gravel", 0.06)
    return _Look(LandCover.ROAD, ground=surface, canopy=surface * 1.15, cover=0.5, fine=0.3)


def _roof_look(rng: np.random.Generator) -> _Look:
    roof = _jittered(rng, _ROOFS[int(rng.integers(len(_ROOFS)))], 0.12)
    return _Look(LandCover.BUILDING, ground=roof, canopy=roof * 0.9, cover=0.0, fine=0.2)


def _garden_look(rng: np.random.Generator) -> _Look:
    greenery = 0.5 * (_jittered(rng, "grass", 0.1) + _jittered(rng, "canopy", 0.1))
    return _Look(
        LandCover.GARDEN,
        ground=_jittered(rng, "soil_dry", 0.1),
        canopy=greenery,
        cover=0.65,
        fine=0.9,
        coarse=0.3,
    )


# ----------------------------------------------------------------------------------- objects
@dataclass
class _ObjectTable:
    """Objects as a struct of arrays: what a window needs to rasterize and shade them."""

    geoms: np.ndarray  # shapely geometries, global pixel coordinates
    bounds: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax
    layers: np.ndarray  # painter's order: higher layers are drawn over lower ones
    covers: np.ndarray  # LandCover code per object
    ground: np.ndarray  # (n, bands) float32
    delta: np.ndarray  # (n, bands) float32: canopy - ground
    params: np.ndarray  # (7, n) float64, rows indexed by _G0.._PHASE

    @staticmethod
    def concat(tables: Sequence[_ObjectTable]) -> _ObjectTable:
        """Stack several tables, keeping their order."""
        return _ObjectTable(
            geoms=np.concatenate([t.geoms for t in tables]),
            bounds=np.concatenate([t.bounds for t in tables]),
            layers=np.concatenate([t.layers for t in tables]),
            covers=np.concatenate([t.covers for t in tables]),
            ground=np.concatenate([t.ground for t in tables]),
            delta=np.concatenate([t.delta for t in tables]),
            params=np.concatenate([t.params for t in tables], axis=1),
        )

    def take(self, index: np.ndarray) -> _ObjectTable:
        """Rows ``index`` (a boolean mask or integer positions), in that order."""
        return _ObjectTable(
            self.geoms[index],
            self.bounds[index],
            self.layers[index],
            self.covers[index],
            self.ground[index],
            self.delta[index],
            self.params[:, index],
        )

    def __len__(self) -> int:
        return len(self.geoms)


@dataclass
class _ObjectList:
    """Collects (geometry, layer, look) while a cell is built; frozen into an _ObjectTable."""

    geoms: list[BaseGeometry] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    looks: list[_Look] = field(default_factory=list)

    def add(self, geom: BaseGeometry, layer: int, look: _Look) -> None:
        """Keep non-empty geometries only; GDAL cannot rasterize empty ones."""
        if not geom.is_empty:
            self.geoms.append(geom)
            self.layers.append(layer)
            self.looks.append(look)

    def table(self, to_bands: np.ndarray) -> _ObjectTable:
        """Freeze into arrays, converting anchor spectra to band values."""
        geoms = np.empty(len(self.geoms), dtype=object)
        geoms[:] = self.geoms
        ground = np.array([lk.ground for lk in self.looks]).reshape(-1, len(_ANCHORS_NM))
        canopy = np.array([lk.canopy for lk in self.looks]).reshape(-1, len(_ANCHORS_NM))
        ground_bands = (ground @ to_bands.T).astype(np.float32)
        return _ObjectTable(
            geoms=geoms,
            bounds=shapely.bounds(geoms).reshape(-1, 4),
            layers=np.array(self.layers, dtype=np.int16),
            covers=np.array([lk.land_cover for lk in self.looks], dtype=np.uint8),
            ground=ground_bands,
            delta=(canopy @ to_bands.T).astype(np.float32) - ground_bands,
            params=_look_params(self.looks),
        )


def _look_params(looks: Sequence[_Look]) -> np.ndarray:
    """Per-object shading parameters; row wave vectors are precomputed so pixels need no trig."""
    params = np.zeros((7, len(looks)), dtype=np.float64)
    for n, lk in enumerate(looks):
        k = 2 * math.pi / lk.row_period
        params[:, n] = (
            lk.cover,
            lk.rows,
            lk.fine,
            lk.coarse,
            k * math.cos(lk.row_angle),
            k * math.sin(lk.row_angle),
            lk.row_phase,
        )
    return params


# Shares of (crop, grassland) parcels per cell kind; the rest are woodland.
_PARCEL_SHARES = {
    _Kind.FARM: (0.82, 0.13),
    _Kind.PASTURE: (0.20, 0.70),
    _Kind.LAKE: (0.20, 0.50),
    _Kind.VILLAGE: (0.75, 0.20),
}

# Painter's layers.
_GROUND, _PARCEL, _OVERLAY, _DETAIL, _BANK, _RIVER, _ROAD = range(7)


# ----------------------------------------------------------------------------------- geometry
def _polygons(geom: BaseGeometry) -> list[shapely.Polygon]:
    """The polygon parts of any geometry (splits and insets can yield multi-parts or lines)."""
    parts = shapely.get_parts(geom)
    return [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty]


def _oriented_extent(poly: shapely.Polygon) -> tuple[float, float, float]:
    """Length, width and long-axis angle of the minimum rotated rectangle."""
    coords = np.asarray(shapely.minimum_rotated_rectangle(poly).exterior.coords)
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
    parts = _polygons(poly.intersection(side)) + _polygons(poly.difference(side))
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


def _rectangles(centres: np.ndarray, sizes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotated rectangles (buildings) in one vectorised call."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    local = corners[None, :, :] * sizes[:, None, :]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = centres[:, None, 0] + local[..., 0] * cos - local[..., 1] * sin
    y = centres[:, None, 1] + local[..., 0] * sin + local[..., 1] * cos
    return shapely.polygons(np.stack([x, y], axis=-1))


# ----------------------------------------------------------------------------------- cells
@dataclass
class _Cell:
    """Everything one grid cell contributes: painted objects and crop label polygons."""

    i: int
    j: int
    bounds: tuple[float, float, float, float]  # including roads that reach into neighbours
    objects: _ObjectTable
    crops: list[tuple[BaseGeometry, str]]  # (polygon in global pixels, crop name)


_CELL_SALTS = ("vertex", "cell", "kind", "forest", "pasture", "river")
_PIXEL_SALTS = ("fine", "coarse", "haze", "grain")


class _Landscape:
    """The infinite, seed-defined landscape; builds cells on demand."""

    def __init__(self, seed: int, bands: Sequence[tuple[str, int]]) -> None:
        self.bands = list(bands)  # (name, wavelength in nm) per band
        self.to_bands = _interpolation_matrix([wavelength for _, wavelength in self.bands])
        self.keys = {salt: _seed_key(seed, salt) for salt in (*_CELL_SALTS, *_PIXEL_SALTS)}
        background = _ObjectList()
        background.add(shapely.Point(0, 0), _GROUND, _verge_look(np.random.default_rng(0)))
        self.background = background.table(self.to_bands)  # fills any pixel no object covers

    # -- grid ---------------------------------------------------------------------------
    def vertex(self, i: int, j: int) -> tuple[float, float]:
        """Jittered grid corner; shared by the four cells around it, so cells tile the plane."""
        u = _unit(_hash(self.keys["vertex"], i, j, [0, 1]))
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
        return _noise_at(self.keys["forest"], i / 3.0, j / 3.0)

    def woodiness(self, i: int, j: int) -> float:
        """Extra share of woodland parcels in cells next to forests, so forest edges are ragged."""
        rise = (self._forest_noise(i, j) - FOREST_LEVEL + FOREST_FRINGE) / FOREST_FRINGE
        return 0.45 * min(max(rise, 0.0), 1.0)

    def kind(self, i: int, j: int) -> _Kind:
        """Land cover of a cell; low-frequency noise makes forests and pastures cluster."""
        if self._forest_noise(i, j) > FOREST_LEVEL:
            return _Kind.FOREST
        chance = _unit(_hash(self.keys["kind"], i, j, [0, 1]))
        if chance[0] < 0.05:
            return _Kind.LAKE
        if chance[1] < 0.07:
            return _Kind.VILLAGE
        if _noise_at(self.keys["pasture"], i / 2.5, j / 2.5) > PASTURE_LEVEL:
            return _Kind.PASTURE
        return _Kind.FARM

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
    def cell(self, i: int, j: int) -> _Cell:
        """Build a cell from an RNG seeded by (seed, i, j) only, so the result is reproducible."""
        rng = np.random.default_rng([self.keys["cell"], i + (1 << 32), j + (1 << 32)])
        quad = self.quad(i, j)
        kind = self.kind(i, j)
        objects = _ObjectList()
        crops: list[tuple[BaseGeometry, str]] = []
        if kind == _Kind.FOREST:
            self._forest(rng, quad, objects)
        else:
            self._farmland(rng, kind, self.woodiness(i, j), quad, objects, crops)
        self._roads(rng, i, j, kind, objects)
        xmin, ymin, xmax, ymax = quad.bounds
        bounds = (xmin - ROAD_REACH, ymin - ROAD_REACH, xmax + ROAD_REACH, ymax + ROAD_REACH)
        return _Cell(i, j, bounds, objects.table(self.to_bands), crops)

    def _forest(
        self, rng: np.random.Generator, quad: shapely.Polygon, objects: _ObjectList
    ) -> None:
        """Forest stands of different density and type filling the cell, a few clearings."""
        for stand in _split_parcels(quad, rng, scale=2.0):
            if rng.random() < 0.08:
                objects.add(stand, _GROUND, _grass_look(rng, 0.0))
            else:
                objects.add(stand, _GROUND, _forest_look(rng))
        self._river(quad, objects, blockers=[])

    def _farmland(
        self,
        rng: np.random.Generator,
        kind: _Kind,
        woodiness: float,
        quad: shapely.Polygon,
        objects: _ObjectList,
        crops: list[tuple[BaseGeometry, str]],
    ) -> None:
        """Parcels inset from the roads, overlays (lake, village), river; crop labels last."""
        objects.add(quad, _GROUND, _verge_look(rng))
        inner = quad.buffer(-CLEARANCE, join_style="mitre")
        parcels: list[tuple[BaseGeometry, str]] = []
        for block in _polygons(inner):
            for leaf in _split_parcels(block, rng):
                parcels.extend(self._parcel(rng, kind, woodiness, leaf, objects))
        blockers: list[BaseGeometry] = []
        if kind == _Kind.LAKE:
            blockers.append(self._lake(rng, inner, objects))
        elif kind == _Kind.VILLAGE:
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
        kind: _Kind,
        woodiness: float,
        leaf: shapely.Polygon,
        objects: _ObjectList,
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
            objects.add(parcel, _PARCEL, _crop_look(rng, names[pick], _CROPS[pick][2], axis))
            return [(p, names[pick]) for p in _polygons(parcel)]
        if draw < crop_share + grass_share:
            objects.add(parcel, _PARCEL, _grass_look(rng, axis))
        else:
            objects.add(parcel, _PARCEL, _forest_look(rng))
        return []

    def _lake(
        self, rng: np.random.Generator, inner: BaseGeometry, objects: _ObjectList
    ) -> BaseGeometry:
        lake = _blob(rng, inner.centroid, rng.uniform(0.18, 0.36) * CELL).intersection(inner)
        objects.add(lake, _OVERLAY, _water_look(rng))
        return lake

    def _village(
        self, rng: np.random.Generator, inner: BaseGeometry, objects: _ObjectList
    ) -> BaseGeometry:
        """Gardens, a few streets and many small bright buildings around the cell centre."""
        centre = inner.centroid
        radius = rng.uniform(0.22, 0.36) * CELL
        village = _blob(rng, centre, radius).intersection(inner)
        objects.add(village, _OVERLAY, _garden_look(rng))
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
            objects.add(street, _DETAIL, _road_look(rng, paved=True))
        self._buildings(rng, village, heading, shapely.union_all(streets), objects)
        return village

    def _buildings(
        self,
        rng: np.random.Generator,
        village: BaseGeometry,
        heading: float,
        streets: BaseGeometry,
        objects: _ObjectList,
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
            objects.add(building, _DETAIL, _roof_look(rng))

    def _river(self, quad: shapely.Polygon, objects: _ObjectList, blockers: list) -> None:
        """Paint the parts of any meandering river (and its banks) that cross this cell."""
        for band, bank, water in self._river_pieces(quad):
            looks = np.random.default_rng([self.keys["river"], band + (1 << 32)])
            shore = _forest_look(looks) if looks.random() < 0.5 else _grass_look(looks, 0.0)
            objects.add(bank, _BANK, shore)
            objects.add(water, _RIVER, _water_look(looks))
            blockers.append(bank)

    def _river_pieces(self, quad: shapely.Polygon) -> list[tuple[int, BaseGeometry, BaseGeometry]]:
        """Rivers are global curves x(y) (one per wide vertical band, or none), clipped per cell.

        Returns (band, bank, water) per river; the bank is a strip of trees or grass along it.
        """
        xmin, ymin, xmax, ymax = quad.bounds
        pieces = []
        for band in range(math.floor(xmin / RIVER_BAND) - 1, math.floor(xmax / RIVER_BAND) + 2):
            u = _unit(_hash(self.keys["river"], band, np.arange(9)))
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
        self, rng: np.random.Generator, i: int, j: int, kind: _Kind, objects: _ObjectList
    ) -> None:
        """The cell owns its top and left edges; every 4th grid line is a wider main road."""
        top = (self.vertex(i, j), self.vertex(i + 1, j), self.kind(i, j - 1), j % 4 == 0)
        left = (self.vertex(i, j), self.vertex(i, j + 1), self.kind(i - 1, j), i % 4 == 0)
        for start, end, neighbour, main in (top, left):
            draw = rng.random()
            if kind == neighbour == _Kind.FOREST and not main:
                continue  # forests stay closed where no road crosses them
            if not main and draw < 0.12:
                continue  # some block boundaries are just wide field margins
            width = rng.uniform(3.6, 4.6) if main else rng.uniform(2.0, 3.0)
            road = shapely.LineString([start, end]).buffer(width / 2)
            objects.add(road, _ROAD, _road_look(rng, paved=main or rng.random() < 0.5))


# ----------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SceneSpec:
    """Where a scene lies in the landscape and on the ground."""

    index: int
    scene_id: str
    col_off: int  # global pixel column of the scene's left edge
    row_off: int  # global pixel row of the scene's top edge
    size: int
    epsg: int
    transform: Affine
    swath: tuple[float, float]  # nodata width (px) at the top and at the bottom edge

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Scene bounds (left, bottom, right, top) in the scene CRS."""
        left, top = self.transform.c, self.transform.f
        extent = self.size * self.transform.a
        return left, top - extent, left + extent, top

    def to_world(self) -> Affine:
        """Affine from global landscape pixels to scene CRS coordinates."""
        return self.transform * Affine.translation(-self.col_off, -self.row_off)


def _check_utm(epsg: int) -> None:
    try:
        crs = CRS.from_epsg(epsg)
    except CRSError:
        raise RsSegError(f"EPSG:{epsg} is not a known coordinate reference system") from None
    if crs.utm_zone is None:
        raise RsSegError(f"EPSG:{epsg} is not a UTM CRS; synthetic scenes need one (e.g. 32633)")


def _swath(seed: int, index: int, size: int) -> tuple[float, float]:
    """Nodata widths at the top and bottom of the left edge; none for scenes under 32 px."""
    if size < 32:
        return 0.0, 0.0
    low, high = max(1.0, SWATH_MIN * size), max(1.5, SWATH_MAX * size)
    u = _unit(_hash(_seed_key(seed, "swath"), index, [0, 1]))
    return float(low + (high - low) * u[0]), float(low + (high - low) * u[1])


def _farmland_shift(landscape: _Landscape, col: int, row: int, size: int) -> tuple[int, int]:
    """Whole cells to move a scene east/south so that its centre lies in plain farmland.

    Small scenes show little more than one cell; without this, some would be all forest.
    """
    steps = sorted(itertools.product(range(SHIFT_CELLS + 1), repeat=2), key=lambda s: (sum(s), s))
    for dx, dy in steps:
        x, y = col + dx * CELL + size / 2, row + dy * CELL + size / 2
        i, j = landscape.cell_at(x, y)
        if landscape.kind(i, j) == _Kind.FARM and landscape.woodiness(i, j) == 0:
            return int(dx * CELL), int(dy * CELL)
    return 0, 0


def scene_specs(cfg: SynthConfig) -> list[SceneSpec]:
    """Lay scenes out in rows (west to east, then southwards) with gaps between them.

    On the ground, scenes are ``size + gap`` apart. In the landscape they are further apart, so
    each can be moved east and south by up to ``SHIFT_CELLS`` cells into farmland without
    overlapping another.
    """
    return _layout(cfg, _landscape(cfg))


def _layout(cfg: SynthConfig, landscape: _Landscape) -> list[SceneSpec]:
    _check_utm(cfg.epsg)
    size, px = cfg.size, cfg.pixel_size
    pitch = size + max(64, size // 8)
    per_row = max(1, int(ROW_SPAN_M // (pitch * px)))
    rows = math.ceil(cfg.scenes / per_row)
    right = ORIGIN_EASTING + ((min(cfg.scenes, per_row) - 1) * pitch + size) * px
    bottom = ORIGIN_NORTHING - (rows - 1) * pitch * px
    if right > UTM_MAX_EASTING or bottom < 0:
        raise RsSegError(
            "the scenes do not fit into one UTM zone; use fewer or smaller scenes or smaller pixels"
        )
    first_top = ORIGIN_NORTHING + size * px
    specs = []
    landscape_pitch = pitch + int(SHIFT_CELLS * CELL)
    for k in range(cfg.scenes):
        col, row = k % per_row, k // per_row
        dx, dy = _farmland_shift(landscape, col * landscape_pitch, row * landscape_pitch, size)
        col_off, row_off = col * landscape_pitch + dx, row * landscape_pitch + dy
        transform = Affine(
            px, 0, ORIGIN_EASTING + col * pitch * px, 0, -px, first_top - row * pitch * px
        )
        scene_id = f"synth_s{cfg.seed}_{k:03d}"
        specs.append(
            SceneSpec(
                k, scene_id, col_off, row_off, size, cfg.epsg, transform, _swath(cfg.seed, k, size)
            )
        )
    return specs


# ----------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class RenderedWindow:
    """Band values (bands, h, w) uint16 and the land-cover truth (h, w) uint8 of one window."""

    values: np.ndarray
    classes: np.ndarray


class _CellCache:
    """Cells the current strip needs; cells above the strip are handed out for labelling."""

    def __init__(self, landscape: _Landscape) -> None:
        self.landscape = landscape
        self.cells: dict[tuple[int, int], _Cell] = {}
        self.released: set[tuple[int, int]] = set()  # never rebuilt, so labelled only once

    def around(self, x0: int, y0: int, x1: int, y1: int) -> list[_Cell]:
        """Cells overlapping the window, built on first use."""
        found = []
        for key in self.landscape.cells_near(x0, y0, x1, y1):
            if key in self.released:
                continue
            if key not in self.cells:
                self.cells[key] = self.landscape.cell(*key)
            cell = self.cells[key]
            bx0, by0, bx1, by1 = cell.bounds
            if bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0:
                found.append(cell)
        return found

    def release_above(self, y: float) -> list[_Cell]:
        """Drop and return the cells that end above row ``y`` (no later strip needs them)."""
        done = sorted(
            (k for k, c in self.cells.items() if c.bounds[3] <= y), key=lambda k: (k[1], k[0])
        )
        self.released.update(done)
        return [self.cells.pop(k) for k in done]


def _window_objects(cells: Sequence[_Cell], background: _ObjectTable, box: tuple) -> _ObjectTable:
    """Objects touching the window in painter's order, with the background as row 0."""
    x0, y0, x1, y1 = box
    parts = []
    for cell in cells:
        b = cell.objects.bounds
        hit = (b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)
        parts.append(cell.objects.take(hit))
    objects = _ObjectTable.concat(parts) if parts else background.take(np.zeros(0, dtype=int))
    order = np.argsort(objects.layers, kind="stable")
    return _ObjectTable.concat([background, objects.take(order)])


def _object_ids(objects: _ObjectTable, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Rasterize objects (row 0 is the background) into an id raster; later ones win."""
    if len(objects) == 1:
        return np.zeros((h, w), dtype=np.int32)
    shapes = zip(objects.geoms[1:], range(1, len(objects)), strict=True)
    transform = Affine(1, 0, x0, 0, 1, y0)  # global pixel coordinates, y pointing down
    return rasterize(shapes, out_shape=(h, w), transform=transform, fill=0, dtype="int32")


def _cover(
    landscape: _Landscape, objects: _ObjectTable, ids: np.ndarray, x0: int, y0: int
) -> np.ndarray:
    """Per-pixel cover fraction: base cover + crop rows + crown noise + field-scale noise."""
    h, w = ids.shape
    p = objects.params
    xs = np.arange(x0, x0 + w, dtype=np.float64) + 0.5
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5)[:, None]
    stripes = np.sin(p[_KX][ids] * xs + p[_KY][ids] * ys + p[_PHASE][ids]).astype(np.float32)
    fine = _value_noise(landscape.keys["fine"], x0, y0, w, h, 3) - np.float32(0.5)
    coarse = _value_noise(landscape.keys["coarse"], x0, y0, w, h, 40) - np.float32(0.5)
    p32 = p.astype(np.float32)
    cover = p32[_G0][ids] + p32[_ROWS][ids] * stripes
    cover += p32[_FINE][ids] * fine
    cover += p32[_COARSE][ids] * coarse
    return np.clip(cover, 0.0, 1.0, out=cover)


def _grain(key: int, bands: int, x0: int, y0: int, w: int, h: int) -> Iterator[np.ndarray]:
    """Sensor noise in [-1, 1) per band: 16 bits each of one 64-bit hash per pixel and 4 bands."""
    rows = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
    cols = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
    pixel = (rows << 32) | cols  # global pixel index: one coordinate hashes faster than two
    for group in range(0, bands, 4):
        bits = _hash(key ^ group, pixel)
        for word in range(min(4, bands - group)):
            chunk = (bits >> np.uint64(16 * word)) & np.uint64(0xFFFF)
            yield chunk.astype(np.float32) * np.float32(1 / 32768) - np.float32(1)


def _shade(
    landscape: _Landscape, objects: _ObjectTable, ids: np.ndarray, x0: int, y0: int
) -> np.ndarray:
    """Band values as float32 (bands, h, w): ground + cover x delta, haze and sensor grain."""
    h, w = ids.shape
    cover = _cover(landscape, objects, ids, x0, y0)
    haze = _value_noise(landscape.keys["haze"], x0, y0, w, h, 400)
    illumination = np.float32(0.96) + np.float32(0.08) * haze
    bands = objects.ground.shape[1]
    out = np.empty((bands, h, w), dtype=np.float32)
    grains = _grain(landscape.keys["grain"], bands, x0, y0, w, h)
    for b, grain in enumerate(grains):
        value = objects.ground[:, b][ids] + cover * objects.delta[:, b][ids]
        value *= illumination
        value *= np.float32(1) + np.float32(0.03) * grain
        value += np.float32(12) * grain
        out[b] = value
    return out


def _swath_mask(spec: SceneSpec, window: Window) -> np.ndarray:
    """True where the slanted nodata swath along the left edge covers the window."""
    top, bottom = spec.swath
    rows = np.arange(window.row_off, window.row_off + window.height, dtype=np.float64)
    cols = np.arange(window.col_off, window.col_off + window.width, dtype=np.float64)
    edge = top + (bottom - top) * (rows + 0.5) / spec.size
    return (cols[None, :] + 0.5) < edge[:, None]


def _render(
    landscape: _Landscape, cache: _CellCache, spec: SceneSpec, window: Window
) -> RenderedWindow:
    """Render one window of a scene (window in scene pixel coordinates)."""
    w, h = int(window.width), int(window.height)
    x0, y0 = spec.col_off + int(window.col_off), spec.row_off + int(window.row_off)
    cells = cache.around(x0, y0, x0 + w, y0 + h)
    objects = _window_objects(cells, landscape.background, (x0, y0, x0 + w, y0 + h))
    ids = _object_ids(objects, x0, y0, w, h)
    values = _shade(landscape, objects, ids, x0, y0)
    nodata = _swath_mask(spec, window)
    np.clip(values, 1, 10_000, out=values)
    values[:, nodata] = 0
    classes = objects.covers[ids]
    classes[nodata] = LandCover.NODATA
    return RenderedWindow(np.rint(values).astype(np.uint16), classes)


def _landscape(cfg: SynthConfig) -> _Landscape:
    return _Landscape(cfg.seed, _band_table(cfg.bands))


def render_window(cfg: SynthConfig, scene: int, window: Window) -> RenderedWindow:
    """Render any window of scene ``scene`` exactly as :func:`generate_scenes` writes it.

    Used to check that labels match pixels and that rendering does not depend on the windowing.
    """
    landscape = _landscape(cfg)
    spec = _layout(cfg, landscape)[scene]
    return _render(landscape, _CellCache(landscape), spec, window)


# ----------------------------------------------------------------------------------- labels
class _LabelWriter:
    """Appends crop polygons (clipped to the scene, in EPSG:4326) to one GeoPackage layer."""

    def __init__(self, path: Path, epsg: int) -> None:
        self.path = path
        self.to_wgs84 = Transformer.from_crs(epsg, LABEL_CRS, always_xy=True)
        self.rows: list[tuple[str, str]] = []
        self.geoms: list[BaseGeometry] = []
        self.created = False

    def add(self, spec: SceneSpec, cells: Sequence[_Cell]) -> None:
        """Queue the crop parcels of finished cells, flushing when the batch is full."""
        scene_box = shapely.box(
            spec.col_off, spec.row_off, spec.col_off + spec.size, spec.row_off + spec.size
        )
        for cell in cells:
            for geom, crop in cell.crops:
                for part in _polygons(geom.intersection(scene_box)):
                    if part.area >= MIN_LABEL_AREA:
                        self.geoms.append(self._to_wgs84(part, spec))
                        self.rows.append((spec.scene_id, crop))
        if len(self.geoms) >= LABEL_BATCH:
            self.flush()

    def _to_wgs84(self, geom: BaseGeometry, spec: SceneSpec) -> BaseGeometry:
        """Densify, then map global pixels -> scene CRS -> lon/lat, counter-clockwise shells."""
        world = spec.to_world()

        def project(coords: np.ndarray) -> np.ndarray:
            east = world.a * coords[:, 0] + world.b * coords[:, 1] + world.c
            north = world.d * coords[:, 0] + world.e * coords[:, 1] + world.f
            lon, lat = self.to_wgs84.transform(east, north)
            return np.column_stack([lon, lat])

        moved = shapely.transform(shapely.segmentize(geom, 64.0), project)
        return shapely.orient_polygons(moved)

    def flush(self) -> None:
        """Append the queued features (the first flush creates the layer)."""
        if not self.geoms and self.created:
            return
        columns = {
            "scene_id": [r[0] for r in self.rows],
            "crop": [r[1] for r in self.rows],
            "class": ["cropland"] * len(self.rows),
        }
        frame = gpd.GeoDataFrame(
            {name: pd.Series(values, dtype=object) for name, values in columns.items()},
            geometry=gpd.GeoSeries(self.geoms, crs=LABEL_CRS),
        )
        pyogrio.write_dataframe(
            frame,
            self.path,
            layer=LABEL_LAYER,
            driver="GPKG",
            geometry_type="Polygon",
            append=self.created,
        )
        self.created = True
        self.rows, self.geoms = [], []


# ----------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class SynthResult:
    """Final paths of everything :func:`generate_scenes` wrote."""

    scenes: list[Path]
    labels: Path
    summary: Path


def _profile(spec: SceneSpec, bands: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": spec.size,
        "height": spec.size,
        "count": bands,
        "dtype": "uint16",
        "crs": f"EPSG:{spec.epsg}",
        "transform": spec.transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def _windows(size: int, top: int, height: int) -> Iterator[Window]:
    for left in range(0, size, CHUNK_COLS):
        yield Window(left, top, min(CHUNK_COLS, size - left), height)


def _write_scene(
    landscape: _Landscape,
    spec: SceneSpec,
    path: Path,
    labels: _LabelWriter,
    on_strip: Callable[[], None],
) -> dict[str, Any]:
    """Render a scene strip by strip; returns its summary entry."""
    cache = _CellCache(landscape)
    counts = np.zeros(len(LandCover), dtype=np.int64)
    with rasterio.open(path, "w", **_profile(spec, len(landscape.bands))) as dst:
        for band, (name, wavelength) in enumerate(landscape.bands, start=1):
            dst.set_band_description(band, name)
            dst.update_tags(band, wavelength_nm=wavelength)
        for top in range(0, spec.size, STRIP_ROWS):
            height = min(STRIP_ROWS, spec.size - top)
            for window in _windows(spec.size, top, height):
                rendered = _render(landscape, cache, spec, window)
                dst.write(rendered.values, window=window)
                counts += np.bincount(rendered.classes.ravel(), minlength=len(LandCover))
            labels.add(spec, cache.release_above(spec.row_off + top + height))
            on_strip()
        labels.add(spec, cache.release_above(math.inf))
    return _scene_summary(spec, path, counts)


def _scene_summary(spec: SceneSpec, path: Path, counts: np.ndarray) -> dict[str, Any]:
    total = int(counts.sum())
    valid = total - int(counts[LandCover.NODATA])
    fractions = {
        lc.name.lower(): int(counts[lc]) / valid if valid else 0.0 for lc in LandCover if lc
    }
    return {
        "scene_id": spec.scene_id,
        "path": f"scenes/{path.name}",
        "width": spec.size,
        "height": spec.size,
        "crs": f"EPSG:{spec.epsg}",
        "transform": list(spec.transform)[:6],
        "bounds": list(spec.bounds),
        "nodata_fraction": int(counts[LandCover.NODATA]) / total,
        "cropland_fraction": fractions["cropland"],
        "class_fractions": fractions,
    }


def _write_summary(path: Path, cfg: SynthConfig, scenes: list[dict[str, Any]]) -> None:
    summary = {
        "config": cfg.model_dump(mode="json"),
        "bands": band_names(cfg.bands),
        "labels": {"path": LABELS_FILE, "layer": LABEL_LAYER, "crs": LABEL_CRS},
        "fractions_note": "cropland_fraction and class_fractions are of the valid pixels",
        "scenes": scenes,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")


def generate_scenes(cfg: SynthConfig, progress: bool = False) -> SynthResult:
    """Write ``cfg.scenes`` synthetic scenes, their crop polygons and a summary into ``cfg.out``.

    Output appears atomically (staged folder renamed into place); an existing output is refused
    unless ``cfg.overwrite``. ``progress`` shows a bar over all strips of all scenes.
    """
    out = Path(cfg.out)
    check_folder_output(out, cfg.overwrite, SYNTH_FOLDER)  # before minutes of landscape work
    landscape = _landscape(cfg)
    specs = _layout(cfg, landscape)
    strips = len(specs) * math.ceil(cfg.size / STRIP_ROWS)
    entries: list[dict[str, Any]] = []
    with (
        staged_dir(out, cfg.overwrite, SYNTH_FOLDER) as staging,
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        tqdm(total=strips, unit="strip", desc="synth", disable=not progress) as bar,
    ):
        (staging / "scenes").mkdir()
        labels = _LabelWriter(staging / LABELS_FILE, cfg.epsg)
        for spec in specs:
            path = staging / "scenes" / f"{spec.scene_id}.tif"
            entries.append(_write_scene(landscape, spec, path, labels, bar.update))
        labels.flush()
        _write_summary(staging / SUMMARY_FILE, cfg, entries)
    return SynthResult(
        scenes=[out / "scenes" / f"{spec.scene_id}.tif" for spec in specs],
        labels=out / LABELS_FILE,
        summary=out / SUMMARY_FILE,
    )
