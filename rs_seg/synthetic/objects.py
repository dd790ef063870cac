"""Objects: land-cover classes, looks and the object tables the landscape is painted with.

A look is the spectral recipe of one object (ground and canopy spectra, a cover fraction, crop
rows, noise amplitudes), drawn from the RNG of the cell that makes it. An object table holds a
cell's polygons with their looks as arrays, so that a window can rasterize and shade them
vectorised. No geometry is made here, so both the landscape (which makes objects) and the
renderer (which paints them) can build on this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from rs_seg.synthetic.spectra import ANCHOR_WAVELENGTHS_NM, material_spectrum


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


# ----------------------------------------------------------------------------------- looks
@dataclass(frozen=True)
class Look:
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


# Rows of ObjectTable.params: one shading parameter of every object each (see _look_params);
# the wavenumbers are the crop rows' 2 pi / period along x and y.
(
    PARAM_BASE_COVER,
    PARAM_ROW_AMPLITUDE,
    PARAM_FINE_NOISE,
    PARAM_COARSE_NOISE,
    PARAM_ROW_WAVENUMBER_X,
    PARAM_ROW_WAVENUMBER_Y,
    PARAM_ROW_PHASE,
) = range(7)


_ROOFS = ("roof_grey", "roof_red", "roof_dark")


def _jittered(rng: np.random.Generator, name: str, spread: float) -> np.ndarray:
    """A material spectrum with per-object brightness and per-wavelength variation."""
    brightness = rng.uniform(1 - spread, 1 + spread)
    return (
        material_spectrum(name)
        * brightness
        * (1 + rng.normal(0.0, spread / 3, len(ANCHOR_WAVELENGTHS_NM)))
    )


def _soil(rng: np.random.Generator) -> np.ndarray:
    """Soil between moist and dry, so neighbouring fields differ in brightness."""
    wet = rng.uniform(0.0, 1.0)
    return _jittered(rng, "soil", 0.08) * wet + _jittered(rng, "soil_dry", 0.08) * (1 - wet)


def crop_look(rng: np.random.Generator, crop: str, cover: tuple[float, float], axis: float) -> Look:
    """A crop parcel: soil under a crop canopy in rows, mostly along the parcel's long axis."""
    canopy = "weeds" if crop == "fallow" else crop
    along = axis if rng.random() < 0.7 else axis + math.pi / 2
    return Look(
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


def grass_look(rng: np.random.Generator, axis: float) -> Look:
    """Grassland: dry and green grass, with faint mowing stripes along ``axis``."""
    return Look(
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


def forest_look(rng: np.random.Generator) -> Look:
    """A forest stand: dark conifers or brighter broadleaves, dense or thinned."""
    broadleaf = rng.uniform(0.75, 1.25)  # scales the NIR plateau and the visible bands
    canopy = _jittered(rng, "canopy", 0.10) * np.where(ANCHOR_WAVELENGTHS_NM > 700, broadleaf, 1.0)
    return Look(
        LandCover.FOREST,
        ground=_jittered(rng, "shadow", 0.10),
        canopy=canopy,
        cover=rng.uniform(0.45, 0.75),
        fine=0.9,
        coarse=rng.uniform(0.4, 0.8),
    )


def water_look(rng: np.random.Generator) -> Look:
    """Open water, clear to turbid."""
    return Look(
        LandCover.WATER,
        ground=_jittered(rng, "water", 0.06),
        canopy=_jittered(rng, "water_turbid", 0.06),
        cover=rng.uniform(0.1, 0.5),
        fine=0.05,
        coarse=0.5,
    )


def verge_look(rng: np.random.Generator) -> Look:
    """Dry grass of road verges, also the ground wherever no other object lies."""
    return Look(
        LandCover.VERGE,
        ground=_jittered(rng, "grass_dry", 0.08),
        canopy=_jittered(rng, "grass", 0.08),
        cover=0.6,
        fine=0.5,
        coarse=0.3,
    )


def road_look(rng: np.random.Generator, paved: bool) -> Look:
    """A road surface: asphalt where ``paved``, else gravel."""
    surface = _jittered(rng, "asphalt" if paved else "gravel", 0.06)
    return Look(LandCover.ROAD, ground=surface, canopy=surface * 1.15, cover=0.5, fine=0.3)


def roof_look(rng: np.random.Generator) -> Look:
    """A roof of one of the common colours (grey, red, dark)."""
    roof = _jittered(rng, _ROOFS[int(rng.integers(len(_ROOFS)))], 0.12)
    return Look(LandCover.BUILDING, ground=roof, canopy=roof * 0.9, cover=0.0, fine=0.2)


def garden_look(rng: np.random.Generator) -> Look:
    """Village gardens: dry soil under a mix of grass and trees."""
    greenery = 0.5 * (_jittered(rng, "grass", 0.1) + _jittered(rng, "canopy", 0.1))
    return Look(
        LandCover.GARDEN,
        ground=_jittered(rng, "soil_dry", 0.1),
        canopy=greenery,
        cover=0.65,
        fine=0.9,
        coarse=0.3,
    )


# ----------------------------------------------------------------------------------- objects
@dataclass
class ObjectTable:
    """Objects as a struct of arrays: what a window needs to rasterize and shade them."""

    geoms: np.ndarray  # shapely geometries, global pixel coordinates
    bounds: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax
    layers: np.ndarray  # painter's order: higher layers are drawn over lower ones
    covers: np.ndarray  # LandCover code per object
    ground: np.ndarray  # (n, bands) float32
    delta: np.ndarray  # (n, bands) float32: canopy - ground
    params: np.ndarray  # (7, n) float64, rows indexed by the PARAM_ constants

    @staticmethod
    def concat(tables: Sequence[ObjectTable]) -> ObjectTable:
        """Stack several tables, keeping their order."""
        return ObjectTable(
            geoms=np.concatenate([t.geoms for t in tables]),
            bounds=np.concatenate([t.bounds for t in tables]),
            layers=np.concatenate([t.layers for t in tables]),
            covers=np.concatenate([t.covers for t in tables]),
            ground=np.concatenate([t.ground for t in tables]),
            delta=np.concatenate([t.delta for t in tables]),
            params=np.concatenate([t.params for t in tables], axis=1),
        )

    def take(self, index: np.ndarray) -> ObjectTable:
        """Rows ``index`` (a boolean mask or integer positions), in that order."""
        return ObjectTable(
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
class ObjectList:
    """Collects (geometry, layer, look) while a cell is built; frozen into an ObjectTable."""

    geoms: list[BaseGeometry] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)

    def add(self, geom: BaseGeometry, layer: int, look: Look) -> None:
        """Keep non-empty geometries only; GDAL cannot rasterize empty ones."""
        if not geom.is_empty:
            self.geoms.append(geom)
            self.layers.append(layer)
            self.looks.append(look)

    def table(self, to_bands: np.ndarray) -> ObjectTable:
        """Freeze into arrays, converting anchor spectra to band values."""
        geoms = np.empty(len(self.geoms), dtype=object)
        geoms[:] = self.geoms
        ground = np.array([lk.ground for lk in self.looks]).reshape(-1, len(ANCHOR_WAVELENGTHS_NM))
        canopy = np.array([lk.canopy for lk in self.looks]).reshape(-1, len(ANCHOR_WAVELENGTHS_NM))
        ground_bands = (ground @ to_bands.T).astype(np.float32)
        return ObjectTable(
            geoms=geoms,
            bounds=shapely.bounds(geoms).reshape(-1, 4),
            layers=np.array(self.layers, dtype=np.int16),
            covers=np.array([lk.land_cover for lk in self.looks], dtype=np.uint8),
            ground=ground_bands,
            delta=(canopy @ to_bands.T).astype(np.float32) - ground_bands,
            params=_look_params(self.looks),
        )


def _look_params(looks: Sequence[Look]) -> np.ndarray:
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
