"""Train / validation / test split of chips, spatially blocked so that nothing leaks across splits.

Why blocks: neighbouring chips share fields, texture and acquisition conditions, and overlapping
chips share pixels. A per-chip random split puts such pairs on both sides and inflates test scores.
Here chips are grouped into blocks and whole blocks go to one split:

* a scene no larger than ``k x k`` chips is one block, and scenes whose footprints overlap form one
  group, so the same ground never appears in two splits through two scenes;
* larger georeferenced scenes are cut into ``k x k``-chip blocks on a grid anchored in map
  coordinates (so overlapping scenes in the same CRS share blocks);
* chips without a CRS use blocks of their scene's pixel grid.

Blocks are shuffled with the seed and handed out greedily to the split that is furthest below its
target, so every split ends within one block of its share. Finally chips that still overlap a chip
of another split (shifted edge chips, strides below the chip size, overlapping scenes) are moved to
``excluded`` so that no pixel is shared between splits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from rs_seg.config import SplitConfig

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
_PRIORITY = {"test": 3, "val": 2, "train": 1}  # which chip keeps its split when two overlap
AUTO_BLOCK_CHOICES = (8, 4, 2, 1)
MIN_BLOCKS_PER_SMALL_SPLIT = 3


@dataclass(frozen=True)
class SceneLayout:
    """What the split needs to know about a scene: its grid, CRS and footprint."""

    name: str
    grid_rows: int
    grid_cols: int
    crs_key: str | None  # None for scenes without a CRS
    block_metres: tuple[float, float]  # map units covered by one chip, x and y
    footprint_wgs84: shapely.Geometry | None


def scene_groups(layouts: list[SceneLayout]) -> dict[str, str]:
    """Union scenes whose footprints overlap; returns scene -> group name (first member)."""
    parent = {layout.name: layout.name for layout in layouts}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    located = [lay for lay in layouts if lay.footprint_wgs84 is not None]
    geometries = np.array([lay.footprint_wgs84 for lay in located], dtype=object)
    if len(geometries) > 1:
        left, right = shapely.STRtree(geometries).query(geometries, predicate="intersects")
        for i, j in zip(left, right, strict=True):
            if i < j and _overlap_ratio(geometries[i], geometries[j]) > 1e-3:
                root_i, root_j = find(located[i].name), find(located[j].name)
                if root_i != root_j:
                    parent[max(root_i, root_j)] = min(root_i, root_j)
    return {name: find(name) for name in parent}


def _overlap_ratio(a: BaseGeometry, b: BaseGeometry) -> float:
    smaller = min(a.area, b.area)
    return a.intersection(b).area / smaller if smaller > 0 else 0.0


def block_keys(
    chips: pd.DataFrame, layouts: dict[str, SceneLayout], block_chips: int, groups: dict[str, str]
) -> pd.Series:
    """The block of every chip for a block side of ``block_chips`` chips."""
    keys = pd.Series(index=chips.index, dtype=object)
    for key, rows in chips.groupby("scene", sort=False):
        scene = cast(str, key)  # pandas-stubs type a group key as any scalar; scene names are str
        layout = layouts[scene]
        if layout.grid_rows <= block_chips and layout.grid_cols <= block_chips:
            keys[rows.index] = "group:" + groups[scene]
        elif layout.crs_key is None:
            keys[rows.index] = [
                f"pixel:{scene}:{r // block_chips}:{c // block_chips}"
                for r, c in zip(rows["row"], rows["col"], strict=True)
            ]
        else:
            keys[rows.index] = _map_block_keys(rows, layout, block_chips)
    return keys


def _map_block_keys(rows: pd.DataFrame, layout: SceneLayout, block_chips: int) -> list[str]:
    """Blocks on a grid anchored at the CRS origin, found from each chip's centre."""
    centres = shapely.centroid(rows["footprint"].to_numpy())
    size_x, size_y = (block_chips * m for m in layout.block_metres)
    bx = np.floor(shapely.get_x(centres) / size_x).astype(np.int64)
    by = np.floor(shapely.get_y(centres) / size_y).astype(np.int64)
    prefix = f"map:{layout.crs_key}:{size_x:g}x{size_y:g}"
    return [f"{prefix}:{x}:{y}" for x, y in zip(bx, by, strict=True)]


def blocks_needed(ratios: tuple[float, float, float]) -> int:
    """Blocks required so that each non-empty small split can get a few blocks."""
    small = [r for r in ratios[1:] if r > 0]
    return math.ceil(MIN_BLOCKS_PER_SMALL_SPLIT / min(small)) if small else 1


def allocate_blocks(
    sizes: pd.Series, ratios: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Assign whole blocks (``sizes``: block -> chip count) to splits, close to ``ratios``.

    Blocks are visited in a seeded random order; each goes to the split with the largest remaining
    deficit, so each split ends within one block of its target and the outcome is reproducible.
    """
    order = np.random.default_rng(seed).permutation(len(sizes))
    targets = np.asarray(ratios, dtype=float) * float(sizes.sum())
    counts = np.zeros(3)
    eligible = np.asarray(ratios) > 0
    assignment: dict[str, str] = {}
    for position in order:
        block, size = sizes.index[position], sizes.iloc[position]
        deficits = np.where(eligible, targets - counts, -np.inf)
        chosen = int(np.argmax(deficits))
        assignment[block] = SPLITS[chosen]
        counts[chosen] += size
    return assignment


def overlapping_pairs(footprints: pd.Series, space: pd.Series) -> np.ndarray:
    """Index pairs (i < j) of chips whose footprints overlap by more than a sliver.

    ``space`` says which footprints are comparable: geographic footprints with each other, pixel
    footprints only within their own scene.
    """
    pairs = []
    for _, positions in pd.Series(np.arange(len(space))).groupby(space.to_numpy()):
        idx = positions.to_numpy()
        geometries = footprints.to_numpy()[idx]
        if len(idx) < 2:
            continue
        left, right = shapely.STRtree(geometries).query(geometries, predicate="intersects")
        keep = left < right
        left, right = left[keep], right[keep]
        if len(left) == 0:
            continue
        shared = shapely.area(shapely.intersection(geometries[left], geometries[right]))
        smaller = np.minimum(shapely.area(geometries[left]), shapely.area(geometries[right]))
        real = shared > 1e-3 * smaller
        pairs.append(np.stack([idx[left[real]], idx[right[real]]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def exclude_cross_split_overlaps(splits: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """Move the lower-priority chip of every cross-split overlapping pair to ``excluded``."""
    splits = splits.copy()
    moved = 0
    for i, j in pairs:
        a, b = splits[i], splits[j]
        if a == b or EXCLUDED in (a, b):
            continue
        loser = i if _PRIORITY[a] < _PRIORITY[b] else j
        splits[loser] = EXCLUDED
        moved += 1
    return splits, moved


@dataclass(frozen=True)
class SplitOutcome:
    """Split columns for the chip table plus what the user should be told about it."""

    block: pd.Series
    split: pd.Series
    block_chips: int | None
    excluded_overlaps: int
    cross_split_overlaps: int
    notes: tuple[str, ...]


def choose_block_chips(
    chips: pd.DataFrame, layouts: dict[str, SceneLayout], groups: dict[str, str], cfg: SplitConfig
) -> tuple[int, pd.Series, list[str]]:
    """Block side and block keys; ``'auto'`` takes the largest side that yields enough blocks."""
    needed = blocks_needed(cfg.ratios)
    auto = cfg.block_chips == "auto"
    for k in AUTO_BLOCK_CHOICES if auto else (int(cfg.block_chips),):
        keys = block_keys(chips, layouts, k, groups)
        if keys.nunique() >= needed:
            break
    notes = [f"block size chosen automatically: {k}x{k} chips"] if auto else []
    if keys.nunique() < needed:
        notes.append(
            f"only {keys.nunique()} spatial blocks (want {needed}): validation/test shares will "
            "be coarse; add scenes or use smaller blocks"
        )
    return k, keys, notes


def assign_splits(
    chips: pd.DataFrame, layouts: dict[str, SceneLayout], cfg: SplitConfig
) -> SplitOutcome:
    """Give every chip a block and a split according to ``cfg``.

    ``chips`` needs columns ``scene``, ``row``, ``col``, ``chip_id``, ``footprint`` (in the
    scene's CRS), and ``overlap_geom`` / ``overlap_space``: footprints that can be compared with
    each other within the same space (EPSG:4326 for georeferenced chips, pixels of one scene
    otherwise).
    """
    notes: list[str] = []
    if cfg.method == "random":
        keys = "chip:" + chips["chip_id"].astype(str)
        block_k = None
    else:
        groups = scene_groups(list(layouts.values()))
        block_k, keys, notes = choose_block_chips(chips, layouts, groups, cfg)
    sizes = keys.value_counts(sort=False).sort_index()
    assignment = allocate_blocks(sizes, cfg.ratios, cfg.seed)
    splits = keys.map(assignment).to_numpy(dtype=object)
    pairs = overlapping_pairs(chips["overlap_geom"], chips["overlap_space"])
    crossing = int(sum(splits[i] != splits[j] for i, j in pairs))
    moved = 0
    if cfg.method == "block":
        splits, moved = exclude_cross_split_overlaps(splits, pairs)
    elif crossing:
        notes.append(
            f"random split: {crossing} pairs of overlapping chips straddle two splits "
            "(pixels shared between train and test); use the block split to avoid this"
        )
    return SplitOutcome(
        block=keys,
        split=pd.Series(splits, index=chips.index),
        block_chips=block_k,
        excluded_overlaps=moved,
        cross_split_overlaps=crossing,
        notes=tuple(notes),
    )
