"""Scenes: where each scene lies in the landscape and on the ground.

Scenes are windows onto the one landscape, at non-overlapping places so that each looks
different: laid out in rows with gaps in one UTM zone, each nudged by whole cells so that its
centre lies in farmland, each with a slanted nodata swath along its left edge. A
:class:`SceneSpec` is all that the renderer and the writers need to know about a scene.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from affine import Affine
from pyproj import CRS
from pyproj.exceptions import CRSError

from rs_seg.config import SynthConfig
from rs_seg.errors import RsSegError
from rs_seg.synthetic.landscape import CELL, CellKind, Landscape, build_landscape
from rs_seg.synthetic.noise import hash_coords, seed_key, unit_floats

SHIFT_CELLS = 4  # a scene may move this many cells east/south in the landscape into farmland

ORIGIN_EASTING = 400_000.0
ORIGIN_NORTHING = 5_300_000.0  # bottom of the first row of scenes
ROW_SPAN_M = 400_000.0  # scenes wrap to a new row after this many metres of eastings
UTM_MAX_EASTING = 1_000_000.0
SWATH_MIN, SWATH_MAX = 0.02, 0.06  # nodata swath width at the top/bottom, as a fraction of size


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
    u = unit_floats(hash_coords(seed_key(seed, "swath"), index, [0, 1]))
    return float(low + (high - low) * u[0]), float(low + (high - low) * u[1])


def _farmland_shift(landscape: Landscape, col: int, row: int, size: int) -> tuple[int, int]:
    """Whole cells to move a scene east/south so that its centre lies in plain farmland.

    Small scenes show little more than one cell; without this, some would be all forest.
    """
    steps = sorted(itertools.product(range(SHIFT_CELLS + 1), repeat=2), key=lambda s: (sum(s), s))
    for dx, dy in steps:
        x, y = col + dx * CELL + size / 2, row + dy * CELL + size / 2
        i, j = landscape.cell_at(x, y)
        if landscape.kind(i, j) == CellKind.FARM and landscape.woodiness(i, j) == 0:
            return int(dx * CELL), int(dy * CELL)
    return 0, 0


def scene_specs(cfg: SynthConfig) -> list[SceneSpec]:
    """Lay scenes out in rows (west to east, then southwards) with gaps between them.

    On the ground, scenes are ``size + gap`` apart. In the landscape they are further apart, so
    each can be moved east and south by up to ``SHIFT_CELLS`` cells into farmland without
    overlapping another.
    """
    return lay_out_scenes(cfg, build_landscape(cfg))


def lay_out_scenes(cfg: SynthConfig, landscape: Landscape) -> list[SceneSpec]:
    """:func:`scene_specs` on a landscape already built (the renderer and writer have one)."""
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
