"""The decoded chip cache: chips as their files give them, rebuilt on change, never half-built."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_seg.config import AugmentConfig
from rs_seg.model.normalization import Normalization
from rs_seg.train import chip_cache
from rs_seg.train.chip_cache import CACHE_DIR, remove_caches, split_cache, training_caches
from rs_seg.train.dataset import (
    ChipDataset,
    ChipReadError,
    ChipSplits,
    build_augmentation,
    load_chip_splits,
)

NORMALIZATION = Normalization((90.0, 110.0, 70.0), (20.0, 30.0, 25.0))


@pytest.fixture
def chips(tiny_chips: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny chip folder, which these tests change."""
    return Path(shutil.copytree(tiny_chips, tmp_path / "chips"))


def _train(splits: ChipSplits) -> tuple[list[Path], list[Path]]:
    images, masks = splits.paths("train")
    return [Path(p) for p in images], [Path(p) for p in masks]


def test_cached_chips_train_exactly_like_the_files(chips: Path, tmp_path: Path) -> None:
    splits = load_chip_splits(chips)
    images, masks = _train(splits)
    with rasterio.open(images[1], "r+") as dst:  # a nodata corner, so valid masks matter
        assert dst.nodata is not None
        dst.write(np.full((3, 5, 9), dst.nodata, dtype=dst.dtypes[0]), window=((0, 5), (0, 9)))
    cache = split_cache(tmp_path / "cache", "train", images, masks, splits.bands, 32)
    augment = [build_augmentation(AugmentConfig(), seed=0) for _ in range(2)]
    datasets = [
        ChipDataset(images, masks, splits.bands, NORMALIZATION, a, cache=c)
        for a, c in zip(augment, (None, cache), strict=True)
    ]
    invalid = 0
    for index in range(len(images)):
        plain, cached = (d[(index, 1000 + index)] for d in datasets)
        assert torch.equal(plain[0], cached[0]) and torch.equal(plain[1], cached[1])
        assert cached[0].is_contiguous() and cached[1].dtype == torch.uint8
        invalid += int((~cache.chip(index)[1]).sum())
    assert invalid == 45
    # a loader process gets the folder, not the arrays
    assert len(pickle.dumps(cache)) < 1000


def test_a_cache_is_reused_until_a_chip_changes(chips: Path, tmp_path: Path) -> None:
    splits = load_chip_splits(chips)
    images, masks = _train(splits)
    folder = tmp_path / "cache"
    split_cache(folder, "train", images, masks, splits.bands, 32)
    built = (folder / "train" / "images.npy").stat().st_mtime_ns
    split_cache(folder, "train", images, masks, splits.bands, 32)
    assert (folder / "train" / "images.npy").stat().st_mtime_ns == built

    with rasterio.open(images[0], "r+") as dst:
        dst.write(np.full((3, 32, 32), 7, dtype=dst.dtypes[0]))
    cache = split_cache(folder, "train", images, masks, splits.bands, 32)
    assert (cache.chip(0)[0] == 7).all()
    assert sorted(p.name for p in folder.iterdir()) == ["train"], "no partial build left"
    # other bands are another cache
    other = split_cache(folder, "train", images, masks, [3, 1], 32)
    assert other.chip(0)[0].shape == (2, 32, 32)


def test_a_damaged_chip_stops_the_build_in_one_line_and_leaves_nothing(
    chips: Path, tmp_path: Path
) -> None:
    splits = load_chip_splits(chips)
    images, masks = _train(splits)
    images[2].write_bytes(images[2].read_bytes()[:300])
    folder = tmp_path / "cache"
    with pytest.raises(ChipReadError, match="chip cannot be read") as caught:
        split_cache(folder, "train", images, masks, splits.bands, 32)
    assert "\n" not in str(caught.value) and str(images[2]) in str(caught.value)
    assert list(folder.iterdir()) == []


def test_an_interrupted_build_leaves_no_cache_and_the_next_one_completes(
    chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = load_chip_splits(chips)
    images, masks = _train(splits)
    folder = tmp_path / "cache"
    reads = 0
    real_read_mask = chip_cache.read_mask

    def interrupted(path: Path) -> np.ndarray:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise KeyboardInterrupt
        return real_read_mask(path)

    monkeypatch.setattr(chip_cache, "read_mask", interrupted)
    with pytest.raises(KeyboardInterrupt):
        split_cache(folder, "train", images, masks, splits.bands, 32)
    assert list(folder.iterdir()) == []
    # a build a killed process left behind (its pid is gone) is removed by the next one
    dead = folder / ".train.partial-999999999"
    dead.mkdir()
    cache = split_cache(folder, "train", images, masks, splits.bands, 32)
    assert len(cache) == len(images)
    assert sorted(p.name for p in folder.iterdir()) == ["train"]


def test_auto_caches_only_what_fits(
    chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = load_chip_splits(chips)
    run = tmp_path / "run"
    caches = training_caches(splits, "auto", run)
    assert set(caches) == {"train", "val"}
    train_count = len(splits.paths("train")[0])
    assert len(caches["train"]) == train_count
    itemsize = caches["train"].chip(0)[0].itemsize
    expected = (3 * itemsize + 2) * 32 * 32 * (train_count + len(splits.paths("val")[0]))
    stored = sum(f.stat().st_size for f in (run / CACHE_DIR).rglob("*.npy"))
    assert expected <= stored < expected + 6 * 4096  # six .npy headers
    remove_caches(run)
    assert not (run / CACHE_DIR).exists()

    monkeypatch.setattr(chip_cache, "AUTO_LIMIT_BYTES", 1000)
    assert training_caches(splits, "auto", run) == {}
    assert training_caches(splits, False, run) == {}
    assert not (run / CACHE_DIR).exists()
    assert set(training_caches(splits, True, run)) == {"train", "val"}


def test_a_cache_is_read_only_for_the_loaders(chips: Path, tmp_path: Path) -> None:
    splits = load_chip_splits(chips)
    images, masks = _train(splits)
    cache = split_cache(tmp_path / "cache", "train", images, masks, splits.bands, 32)
    raw = cache.chip(0)[0]
    with pytest.raises(ValueError, match="read-only"):
        raw[0, 0, 0] = 1
    assert os.access(tmp_path / "cache" / "train" / "images.npy", os.R_OK)
