"""Training data: train-split normalization, joint augmentation, nothing changed on val/test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_seg.config import AugmentConfig
from rs_seg.dataset import (
    ChipDataModule,
    Normalization,
    band_statistics,
    build_augmentation,
    load_chip_splits,
)


def test_statistics_are_streamed_over_valid_pixels_of_train_chips(tiny_chips: Path) -> None:
    splits = load_chip_splits(tiny_chips)
    images, _ = splits.paths("train")
    stacked = []
    for path in images:
        with rasterio.open(path) as src:
            data = src.read().astype(np.float64)
        stacked.append(data[:, (data != 0).any(axis=0)])
    pixels = np.concatenate(stacked, axis=1)
    stats = band_statistics(images, [1, 2, 3])
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(axis=1), rtol=1e-6)
    reordered = band_statistics(images, [3, 1])
    assert reordered.mean == (stats.mean[2], stats.mean[0])


def test_normalization_zeroes_nodata_and_non_finite_pixels() -> None:
    norm = Normalization((10.0, 20.0), (2.0, 4.0))
    image = np.array([[[12, 0], [np.nan, 10]], [[24, 0], [20, 28]]], dtype=np.float32)
    valid = np.array([[True, False], [True, True]])
    out = norm.apply(image, valid)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 1.0])
    assert (out[:, 0, 1] == 0).all(), "nodata becomes the band mean (0 after scaling)"
    assert out[0, 1, 0] == 0 and np.isfinite(out).all()


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(32, 32, 4)).astype(np.float32)
    mask = (image[:, :, 0] > 0).astype(np.uint8)
    mask[:3, :5] = 255
    augment = build_augmentation(AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5), seed=3)
    changed = 0
    for _ in range(40):
        out = augment(image=image, mask=mask)
        expected = (out["image"][:, :, 0] > 0).astype(np.uint8)
        ignored = out["mask"] == 255
        np.testing.assert_array_equal(out["mask"][~ignored], expected[~ignored])
        assert ignored.sum() == 15
        changed += not np.array_equal(out["image"], image)
    assert 20 < changed < 40, "flips and rotations happen at the configured rate"


def test_augmentation_can_be_switched_off() -> None:
    assert build_augmentation(AugmentConfig(hflip=0, vflip=0, rot90=0)) is None


def test_only_training_chips_are_augmented_and_loading_is_repeatable(tiny_chips: Path) -> None:
    splits = load_chip_splits(tiny_chips)
    norm = band_statistics(splits.paths("train")[0], splits.bands)
    data = ChipDataModule(splits, norm, AugmentConfig(), batch_size=4, num_workers=0, seed=1)
    assert data.dataset("val").augment is None and data.dataset("test").augment is None
    assert data.dataset("train", augment=True).augment is not None
    first = [m.numpy().copy() for _, m in data.dataset("train", augment=True)]
    second = [m.numpy().copy() for _, m in data.dataset("train", augment=True)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    val_a = [img.numpy() for img, _ in data.dataset("val")]
    val_b = [img.numpy() for img, _ in data.dataset("val")]
    assert all(np.array_equal(a, b) for a, b in zip(val_a, val_b, strict=True))


def test_a_last_batch_of_one_is_dropped_for_batch_norm(tiny_chips: Path) -> None:
    splits = load_chip_splits(tiny_chips)
    norm = Normalization((0.0,) * 3, (1.0,) * 3)
    train_chips = splits.counts()["train"]
    size = train_chips - 1
    data = ChipDataModule(splits, norm, AugmentConfig(), batch_size=size, num_workers=0, seed=0)
    assert len(data.train_dataloader()) == 1
    assert len(data.val_dataloader()) >= 1


@pytest.mark.parametrize("bands", [[2], [3, 1, 2]])
def test_band_subsets_choose_model_inputs_in_order(tiny_chips: Path, bands: list[int]) -> None:
    splits = load_chip_splits(tiny_chips, bands)
    norm = band_statistics(splits.paths("train")[0][:3], bands)
    image, mask = ChipDataModule(
        splits, norm, AugmentConfig(), batch_size=2, num_workers=0, seed=0
    ).dataset("val")[0]
    assert image.shape == (len(bands), 32, 32) and mask.shape == (32, 32)
