"""The split is reproducible, honours the ratios and never lets ground leak between splits."""

from __future__ import annotations

import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.config import PrepareConfig, SplitConfig
from rs_seg.prepare.index import read_index
from rs_seg.prepare.run import prepare
from rs_seg.prepare.split import SceneLayout, allocate_blocks, blocks_needed, scene_groups
from tests.helpers import write_labels, write_scene


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    scene = write_scene(root / "big.tif", 640, 640, bands=1)
    labels = write_labels(root / "l.gpkg", [shapely.box(500_000, 5_294_000, 503_000, 5_300_000)])
    return root, scene, labels


def prepared(root, scene, labels, name, **split):
    cfg = PrepareConfig(
        scenes=[str(scene)], labels=labels, out=root / name, chip_size=32,
        split=SplitConfig(**split), overwrite=True,
    )  # fmt: skip
    return read_index(prepare(cfg).out)


def test_split_is_reproducible_and_seed_dependent(big_scene) -> None:
    first = prepared(*big_scene, "a", seed=1)
    again = prepared(*big_scene, "b", seed=1)
    other = prepared(*big_scene, "c", seed=2)
    pd.testing.assert_series_equal(first["split"], again["split"])
    assert (first["split"] != other["split"]).any()


def test_no_block_is_shared_between_splits(big_scene) -> None:
    chips = prepared(*big_scene, "d", block_chips=4)
    assert chips.groupby("block")["split"].nunique().max() == 1
    # 20x20 chips in blocks of 4x4 chips on a map-anchored grid: 5x5 blocks if the grid happens to
    # align with the scene, up to 6x6 (with partial blocks at the edges) when it does not.
    assert 25 <= chips["block"].nunique() <= 36
    assert chips["block"].value_counts().max() <= 16
    counts = chips["split"].value_counts()
    assert abs(counts["train"] - 0.8 * 400) <= 16 and abs(counts["test"] - 40) <= 16


def test_auto_block_size_yields_enough_blocks(big_scene) -> None:
    chips = prepared(*big_scene, "e")
    assert chips["block"].nunique() >= blocks_needed((0.8, 0.1, 0.1))


def test_random_split_is_per_chip(big_scene) -> None:
    chips = prepared(*big_scene, "f", method="random")
    assert chips["block"].nunique() == len(chips) == 400
    assert chips["split"].value_counts()["train"] == 320


def test_overlapping_chips_never_straddle_splits(tmp_path) -> None:
    scene = write_scene(tmp_path / "s.tif", 300, 300, bands=1)
    labels = write_labels(
        tmp_path / "l.gpkg", [shapely.box(500_000, 5_298_000, 501_000, 5_300_000)]
    )
    cfg = PrepareConfig(
        scenes=[str(scene)], labels=labels, out=tmp_path / "o", chip_size=32, stride=16,
        split=SplitConfig(block_chips=2),
    )  # fmt: skip
    chips = read_index(prepare(cfg).out)
    assert (chips["split"] == "excluded").sum() > 0
    kept = chips[chips["split"] != "excluded"].reset_index(drop=True)
    tree = shapely.STRtree(kept.geometry.to_numpy())
    left, right = tree.query(kept.geometry.to_numpy(), predicate="intersects")
    for i, j in zip(left, right, strict=True):
        a, b = kept.geometry[i], kept.geometry[j]
        if kept.split[i] != kept.split[j]:
            assert a.intersection(b).area < 1e-3 * a.area, "chips of two splits share pixels"


def test_small_scenes_are_whole_blocks_and_overlapping_scenes_one_group(tmp_path) -> None:
    box = shapely.box
    layouts = [
        SceneLayout("a", 2, 2, "EPSG:32633", (10, 10), box(0, 0, 1, 1)),
        SceneLayout("b", 2, 2, "EPSG:32633", (10, 10), box(0.5, 0, 1.5, 1)),
        SceneLayout("c", 2, 2, "EPSG:32633", (10, 10), box(1.5, 0, 2.5, 1)),  # touches b only
        SceneLayout("d", 2, 2, None, (1, 1), None),
    ]
    groups = scene_groups(layouts)
    assert groups["a"] == groups["b"] == "a"
    assert groups["c"] == "c" and groups["d"] == "d"


def test_small_scenes_go_whole_into_one_split(tmp_path) -> None:
    scenes = [
        write_scene(tmp_path / f"s{i}.tif", 64, 64, origin=(500_000 + 2000 * i, 5_300_000))
        for i in range(30)
    ]
    labels = write_labels(
        tmp_path / "l.gpkg", [shapely.box(500_000, 5_299_500, 560_000, 5_300_000)]
    )
    cfg = PrepareConfig(
        scenes=[str(s) for s in scenes], labels=labels, out=tmp_path / "o", chip_size=32
    )
    chips = read_index(prepare(cfg).out)
    assert chips.groupby("scene")["split"].nunique().max() == 1
    per_split = chips.groupby("split")["scene"].nunique()
    assert per_split.to_dict() == {"train": 24, "val": 3, "test": 3}


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=3, max_size=120),
    seed=st.integers(0, 10_000),
    ratios=st.sampled_from([(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.9, 0.1, 0.0)]),
)
def test_each_split_ends_within_one_block_of_its_target(sizes, seed, ratios) -> None:
    blocks = pd.Series(sizes, index=[f"b{i}" for i in range(len(sizes))])
    assignment = allocate_blocks(blocks, ratios, seed)
    assert set(assignment) == set(blocks.index)
    totals = {
        s: sum(blocks[b] for b, split in assignment.items() if split == s)
        for s in ("train", "val", "test")
    }
    for split, ratio in zip(("train", "val", "test"), ratios, strict=True):
        assert abs(totals[split] - ratio * blocks.sum()) <= blocks.max() + 1e-9
        if ratio == 0:
            assert totals[split] == 0
    assert allocate_blocks(blocks, ratios, seed) == assignment, "same seed, same split"
