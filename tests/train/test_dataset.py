"""Training data: train-split normalization, joint augmentation, nothing changed on val/test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from rs_seg.config import AugmentConfig
from rs_seg.model.normalization import Normalization
from rs_seg.train.dataset import (
    ChipDataModule,
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


def test_flips_and_rotations_are_drawn_independently() -> None:
    """One seed for every step made hflip and vflip (both p=0.5) always fire together."""
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    augment = build_augmentation(AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5), seed=3)
    outcomes = {
        tuple(augment(image=image, mask=image[:, :, 0].astype(np.uint8))["image"].ravel())
        for _ in range(200)
    }
    assert len(outcomes) == 8, "all eight flips/rotations of the square occur"


def _train_batches(data: ChipDataModule, epoch: int) -> list[np.ndarray]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [masks.numpy().copy() for _, masks in loader]


def test_training_order_and_flips_depend_on_seed_and_epoch_only(tiny_chips: Path) -> None:
    splits = load_chip_splits(tiny_chips)
    norm = Normalization((0.0,) * 3, (1.0,) * 3)

    def module(workers: int, seed: int = 1) -> ChipDataModule:
        return ChipDataModule(splits, norm, AugmentConfig(), 4, workers, seed)

    fresh = _train_batches(module(0), 2)
    after_other_epochs = module(0)
    _train_batches(after_other_epochs, 0)
    _train_batches(after_other_epochs, 1)
    again = _train_batches(after_other_epochs, 2)
    workers = _train_batches(module(2), 2)
    for other in (again, workers):
        assert all(np.array_equal(a, b) for a, b in zip(fresh, other, strict=True))
    epoch_one = _train_batches(module(0), 1)
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, epoch_one, strict=True))


def test_ddp_ranks_share_one_permutation() -> None:
    from rs_seg.train.dataset import EpochSampler

    dataset = list(range(10))
    shards = [list(EpochSampler(dataset, seed=5, num_replicas=2, rank=r, epoch=3)) for r in (0, 1)]
    alone = list(EpochSampler(dataset, seed=5, epoch=3))
    assert sorted(shards[0] + shards[1]) == sorted(alone), "same chips, same augmentation seeds"


def _copy_chips(tiny_chips: Path, tmp_path: Path) -> tuple[Path, list[str], list[str], int]:
    import shutil

    chips = tmp_path / "chips"
    shutil.copytree(tiny_chips, chips)
    splits = load_chip_splits(chips, check_files=False)
    images, masks = splits.paths("train")
    return chips, images, masks, 2 * sum(splits.counts().values())


def _block_offset(path: Path) -> int:
    with rasterio.open(path) as src:
        return int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))


def test_damaged_chips_are_refused_before_training(tiny_chips: Path, tmp_path: Path) -> None:
    from rs_seg.errors import RsSegError

    chips, images, masks, total = _copy_chips(tiny_chips, tmp_path)
    first = Path(images[0])
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with pytest.raises(RsSegError) as caught:
        load_chip_splits(chips)
    message = str(caught.value)
    assert message.startswith(f"{first}: chip is truncated (")
    assert f"(1 of {total} chip files are bad); prepare the chips again" in message
    Path(masks[2]).write_bytes(b"not a GeoTIFF")
    with pytest.raises(RsSegError, match=rf"^{first}: chip is truncated .*\(2 of {total} chip"):
        load_chip_splits(chips)
    first.unlink()
    with pytest.raises(RsSegError, match=rf"^{first}: chip cannot be read \("):
        load_chip_splits(chips)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [((2, 32, 32), "has 2 bands, the index says 3"), ((3, 16, 32), "is 32 x 16 px, the index")],
)
def test_chips_that_do_not_fit_the_index_are_refused(
    tiny_chips: Path, tmp_path: Path, shape: tuple[int, int, int], problem: str
) -> None:
    from rs_seg.errors import RsSegError

    chips, images, _, _ = _copy_chips(tiny_chips, tmp_path)
    count, height, width = shape
    with rasterio.open(
        images[1], "w", driver="GTiff", width=width, height=height, count=count, dtype="uint16"
    ) as dst:
        dst.write(np.ones(shape, dtype="uint16"))
    with pytest.raises(RsSegError, match=f"^{images[1]}: chip {problem}"):
        load_chip_splits(chips)


def test_a_chip_damaged_after_the_check_fails_in_one_line_also_in_workers(
    tiny_chips: Path, tmp_path: Path
) -> None:
    """Damage inside the data (not a truncation) passes the cheap check but not a read."""
    from torch.utils.data import DataLoader

    from rs_seg.train.dataset import ChipReadError

    chips, images, _, _ = _copy_chips(tiny_chips, tmp_path)
    bad = Path(images[3])
    data = bytearray(bad.read_bytes())
    offset = _block_offset(bad)
    data[offset : offset + 16] = b"\xff" * 16  # the compressed strip's frame header
    bad.write_bytes(bytes(data))
    splits = load_chip_splits(chips)  # same size, valid header: the cheap check passes
    dataset = ChipDataModule(
        splits, Normalization((0.0,) * 3, (1.0,) * 3), AugmentConfig(), 4, 0, 0
    ).dataset("train", augment=True)
    expected = rf"^{bad}: chip cannot be read \(ZSTDDecode.*\); the chip folder changed"
    with pytest.raises(ChipReadError, match=expected):
        dataset[(3, 12345)]
    with pytest.raises(ChipReadError, match=expected):
        band_statistics(images, [1, 2, 3])
    with pytest.raises(ChipReadError, match=expected) as caught:
        list(DataLoader(dataset, batch_size=4, num_workers=1))
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value)
