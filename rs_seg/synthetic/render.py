"""Render: turning the objects of the cells around a window into band values and classes.

A window rasterizes the objects of the cells it touches into an object-id raster and computes all
bands vectorised from per-object arrays. All noise (crowns, within-field variation, haze, sensor
grain) is a hash of global pixel coordinates, so a pixel does not depend on how a scene is cut
into windows: :func:`render_window` renders any window exactly as the writer does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window

from rs_seg.config import SynthConfig
from rs_seg.synthetic.landscape import Cell, Landscape, build_landscape
from rs_seg.synthetic.noise import hash_coords, value_noise
from rs_seg.synthetic.objects import (
    PARAM_BASE_COVER,
    PARAM_COARSE_NOISE,
    PARAM_FINE_NOISE,
    PARAM_ROW_AMPLITUDE,
    PARAM_ROW_PHASE,
    PARAM_ROW_WAVENUMBER_X,
    PARAM_ROW_WAVENUMBER_Y,
    LandCover,
    ObjectTable,
)
from rs_seg.synthetic.scenes import SceneSpec, lay_out_scenes


@dataclass(frozen=True)
class RenderedWindow:
    """Band values (bands, h, w) uint16 and the land-cover truth (h, w) uint8 of one window."""

    values: np.ndarray
    classes: np.ndarray


class CellCache:
    """Cells the current strip needs; cells above the strip are handed out for labelling."""

    def __init__(self, landscape: Landscape) -> None:
        self.landscape = landscape
        self.cells: dict[tuple[int, int], Cell] = {}
        self.released: set[tuple[int, int]] = set()  # never rebuilt, so labelled only once

    def around(self, x0: int, y0: int, x1: int, y1: int) -> list[Cell]:
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

    def release_above(self, y: float) -> list[Cell]:
        """Drop and return the cells that end above row ``y`` (no later strip needs them)."""
        done = sorted(
            (k for k, c in self.cells.items() if c.bounds[3] <= y), key=lambda k: (k[1], k[0])
        )
        self.released.update(done)
        return [self.cells.pop(k) for k in done]


def _window_objects(
    cells: Sequence[Cell], background: ObjectTable, box: tuple[int, int, int, int]
) -> ObjectTable:
    """Objects touching the window in painter's order, with the background as row 0."""
    x0, y0, x1, y1 = box
    parts = []
    for cell in cells:
        b = cell.objects.bounds
        hit = (b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)
        parts.append(cell.objects.take(hit))
    objects = ObjectTable.concat(parts) if parts else background.take(np.zeros(0, dtype=int))
    order = np.argsort(objects.layers, kind="stable")
    return ObjectTable.concat([background, objects.take(order)])


def _object_ids(objects: ObjectTable, x0: int, y0: int, w: int, h: int) -> npt.NDArray[np.int32]:
    """Rasterize objects (row 0 is the background) into an id raster; later ones win."""
    if len(objects) == 1:
        return np.zeros((h, w), dtype=np.int32)
    shapes = zip(objects.geoms[1:], range(1, len(objects)), strict=True)
    transform = Affine(1, 0, x0, 0, 1, y0)  # global pixel coordinates, y pointing down
    # rasterio is untyped; rasterize returns an int32 array here (dtype="int32").
    ids = rasterize(shapes, out_shape=(h, w), transform=transform, fill=0, dtype="int32")
    return cast("npt.NDArray[np.int32]", ids)


def _cover(
    landscape: Landscape, objects: ObjectTable, ids: np.ndarray, x0: int, y0: int
) -> npt.NDArray[np.float32]:
    """Per-pixel cover fraction: base cover + crop rows + crown noise + field-scale noise."""
    h, w = ids.shape
    p = objects.params
    xs = np.arange(x0, x0 + w, dtype=np.float64) + 0.5
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5)[:, None]
    stripes = np.sin(
        p[PARAM_ROW_WAVENUMBER_X][ids] * xs
        + p[PARAM_ROW_WAVENUMBER_Y][ids] * ys
        + p[PARAM_ROW_PHASE][ids]
    ).astype(np.float32)
    fine = value_noise(landscape.keys["fine"], x0, y0, w, h, 3) - np.float32(0.5)
    coarse = value_noise(landscape.keys["coarse"], x0, y0, w, h, 40) - np.float32(0.5)
    p32 = p.astype(np.float32)
    cover: npt.NDArray[np.float32] = (
        p32[PARAM_BASE_COVER][ids] + p32[PARAM_ROW_AMPLITUDE][ids] * stripes
    )
    cover += p32[PARAM_FINE_NOISE][ids] * fine
    cover += p32[PARAM_COARSE_NOISE][ids] * coarse
    return np.clip(cover, 0.0, 1.0, out=cover)


def _grain(key: int, bands: int, x0: int, y0: int, w: int, h: int) -> Iterator[np.ndarray]:
    """Sensor noise in [-1, 1) per band: 16 bits each of one 64-bit hash per pixel and 4 bands."""
    rows = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
    cols = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
    pixel = (rows << 32) | cols  # global pixel index: one coordinate hashes faster than two
    for group in range(0, bands, 4):
        bits = hash_coords(key ^ group, pixel)
        for word in range(min(4, bands - group)):
            chunk = (bits >> np.uint64(16 * word)) & np.uint64(0xFFFF)
            yield chunk.astype(np.float32) * np.float32(1 / 32768) - np.float32(1)


def _shade(
    landscape: Landscape, objects: ObjectTable, ids: np.ndarray, x0: int, y0: int
) -> np.ndarray:
    """Band values as float32 (bands, h, w): ground + cover x delta, haze and sensor grain."""
    h, w = ids.shape
    cover = _cover(landscape, objects, ids, x0, y0)
    haze = value_noise(landscape.keys["haze"], x0, y0, w, h, 400)
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


def render_cached_window(
    landscape: Landscape, cache: CellCache, spec: SceneSpec, window: Window
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


def render_window(cfg: SynthConfig, scene: int, window: Window) -> RenderedWindow:
    """Render any window of scene ``scene`` exactly as :func:`generate_scenes` writes it.

    Used to check that labels match pixels and that rendering does not depend on the windowing.
    """
    landscape = build_landscape(cfg)
    spec = lay_out_scenes(cfg, landscape)[scene]
    return render_cached_window(landscape, CellCache(landscape), spec, window)
