"""The rule that splits cropland into fields, shared by vectorizing and evaluation.

A cropland pixel is a *seed* when its boundary probability is below the boundary level; the
4-connected components of the seeds are the fields' cores, and boundary pixels join the nearest
core at most ``grow`` steps away (see :mod:`rs_seg.infer.boundary_split`, which streams this rule
over a scene). Evaluation applies the same functions to validation chips in memory, so the
settings it tunes there mean the same thing on a saved probability raster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
GROW = 3  # pixels boundaries grow into fields by default (vectorizing and evaluation)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a mask, labelled 1..n (int32)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    count = ndimage.label(mask, structure=FOUR_CONNECTED, output=labels)
    return labels, int(count)


def grow_seeds(cropland: np.ndarray, seeds: np.ndarray, grow: int) -> np.ndarray:
    """Seed keys grown ``grow`` steps into the boundary pixels (cropland without a seed key).

    A boundary pixel at distance ``d`` (4-connected steps through cropland) from the nearest seed
    takes the key of its first neighbour at distance ``d - 1`` in the order north, west, east,
    south; all pixels of a step are decided at once. Returns keys for the whole window, 0 where no
    seed was within ``grow`` steps; only pixels ``grow`` rows or more from the window's top and
    bottom (unless those are the raster's) have their whole-raster value.
    """
    height, width = seeds.shape
    padded = padded_keys(height, width)
    padded[1:-1, :width] = seeds
    grown, _ = grow_padded(cropland, padded, grow)
    return grown


def padded_keys(height: int, width: int, dtype: type = np.int64) -> np.ndarray:
    """Zeroed keys for a window, with one padding column and a row above and below.

    The padding keeps neighbours of flat indices from wrapping (see :func:`grow_padded`).
    """
    return np.zeros((height + 2, width + 1), dtype=dtype)


def grow_padded(
    cropland: np.ndarray, padded: np.ndarray, grow: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grow_seeds` in place on seed keys already in a :func:`padded_keys` array.

    Streaming writes each strip's keys straight into the padded window, so the window is copied
    once. Returns the window's keys (a view) and the padded flat indices of the cropland pixels
    no seed reached, which become fields of their own.
    """
    width = cropland.shape[1]
    stride = width + 1
    flat = padded.reshape(-1)
    pending = np.flatnonzero(cropland & (padded[1:-1, :width] == 0))
    pending += pending // width + stride  # window index -> padded index
    for _ in range(grow):
        if pending.size == 0:
            break
        south, east = flat[pending + stride], flat[pending + 1]
        chosen = np.where(east > 0, east, south)
        west = flat[pending - 1]
        chosen = np.where(west > 0, west, chosen)
        north = flat[pending - stride]
        chosen = np.where(north > 0, north, chosen)
        reached = chosen > 0
        flat[pending[reached]] = chosen[reached]
        pending = pending[~reached]
    return padded[1:-1, :width], pending


def split_labels(
    values: np.ndarray,
    boundary: np.ndarray,
    level: int,
    boundary_level: int,
    grow: int,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Field ids (int32, 0 = no field) of one in-memory chip or scene, by the rule of this module.

    The raster form of :func:`field_records` before any minimum area: the same seeds, growth and
    unreached components, so evaluation can score (and tune) the fields vectorizing would give
    without writing a raster. Seed components are numbered first, unreached ones after them.
    """
    cropland = values >= level
    if valid is not None:
        cropland &= valid
    seeds, count = label_components(cropland & (boundary < boundary_level))
    grown = grow_seeds(cropland, seeds.astype(np.int64), grow) if grow else seeds
    fields = np.asarray(grown, dtype=np.int32)
    unreached, _ = label_components(cropland & (fields == 0))
    fields[unreached > 0] = unreached[unreached > 0] + count
    return fields


def drop_small(ids: np.ndarray, min_pixels: float) -> np.ndarray:
    """``ids`` with every field of fewer than ``min_pixels`` pixels set to 0."""
    if min_pixels <= 0:
        return ids
    sizes = np.bincount(ids.reshape(-1))
    keep = sizes >= min_pixels
    keep[0] = False
    return np.where(keep[ids], ids, 0)


@dataclass(frozen=True)
class FieldRule:
    """Extent and boundary levels, the smallest field (pixels) and the growth that split fields.

    ``boundary_level`` None: fields are the connected cropland (a cropland model's fields).
    """

    level: int
    boundary_level: int | None
    min_pixels: float = 0.0
    grow: int = GROW

    def split(
        self, extent: np.ndarray, boundary: np.ndarray | None, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """Field ids (int32, 0 = none) of one chip or mosaic; small fields dropped.

        Without a boundary level or band, the 4-connected cropland components are the fields.
        """
        if self.boundary_level is None or boundary is None:
            cropland = extent >= self.level
            if valid is not None:
                cropland &= valid
            ids, _ = label_components(cropland)
        else:
            ids = split_labels(extent, boundary, self.level, self.boundary_level, self.grow, valid)
        return drop_small(ids, self.min_pixels)
