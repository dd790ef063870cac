"""Chips as training data: the chip index, per-band normalization, augmentation, data loaders.

Normalization statistics come from the train split alone, streamed chip by chip, and travel in the
model bundle so inference applies exactly the same transform. Nodata pixels (and non-finite values)
become 0 after normalization, i.e. the band mean, so they cannot poison a batch; their labels are
already 255 (ignore) in the masks written by ``rs-seg prepare``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, SupportsInt, cast

import albumentations as A
import lightning as L
import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rs_seg.config import AugmentConfig
from rs_seg.errors import RsSegError
from rs_seg.model.normalization import Normalization
from rs_seg.prepare.index import index_fingerprint, read_index
from rs_seg.prepare.split import SPLITS
from rs_seg.rasters import GDAL_ENV
from rs_seg.windows import valid_pixels

log = logging.getLogger(__name__)

# One chip as the loaders yield it: normalized image (bands x H x W) and mask (H x W).
ChipPair = tuple[torch.Tensor, torch.Tensor]


class ChipReadError(RsSegError):
    """A chip file that cannot be read; stays one line across DataLoader workers.

    torch re-raises an exception from a loader worker as ``type(exc)(text)``, where ``text`` is
    "Caught ChipReadError in DataLoader worker process N. Original Traceback ..." ending in this
    error's own line; that line is recovered, so the command line still prints one ``error:`` line.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        if path is None and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message, path)


def _detail(exc: BaseException) -> str:
    # rasterio says "Read failed. See previous exception for details."; GDAL's chained errors
    # below it say why (e.g. "ZSTDDecode: ... Unknown frame descriptor").
    for _ in range(8):
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc = cause
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _unreadable(path: Path, exc: Exception) -> ChipReadError:
    detail = _detail(exc)
    return ChipReadError(
        f"chip cannot be read ({detail}); the chip folder changed or is damaged: prepare the chips "
        "again (rs-seg prepare --overwrite)",
        path,
    )


# Chip files are self-contained GeoTIFFs (prepare writes no sidecars), so GDAL need not list a
# chip's folder on every open to look for .aux.xml / .msk files: thousands of opens per epoch.
CHIP_ENV = {**GDAL_ENV, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def read_chip(path: Path, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The chosen bands of an image chip and its valid-pixel mask."""
    try:
        with rasterio.Env(**CHIP_ENV), rasterio.open(path) as src:
            data = src.read(list(bands))
            window = Window(0, 0, src.width, src.height)
            return data, valid_pixels(src, data, window)
    except (RasterioError, OSError) as exc:
        raise _unreadable(Path(path), exc) from None


def read_mask(path: Path) -> np.ndarray:
    """A mask chip as prepared: 0/1/255, or 0/1/2/255 with field boundaries (cropland = 1 or 2).

    Consumers that need cropland only take :func:`rs_seg.train.metrics.extent_target` of it.
    """
    try:
        with rasterio.Env(**CHIP_ENV), rasterio.open(path) as src:
            return cast(np.ndarray, src.read(1))
    except (RasterioError, OSError) as exc:
        raise _unreadable(Path(path), exc) from None


def band_statistics(paths: Sequence[str | Path], bands: Sequence[int]) -> Normalization:
    """Mean and std per band over the valid pixels of ``paths``, one chip in memory at a time."""
    count = np.zeros(len(bands), dtype=np.float64)
    total = np.zeros(len(bands), dtype=np.float64)
    squares = np.zeros(len(bands), dtype=np.float64)
    for path in paths:
        data, valid = read_chip(Path(path), bands)
        pixels = data[:, valid].astype(np.float64)
        pixels = np.where(np.isfinite(pixels), pixels, np.nan)
        count += np.sum(~np.isnan(pixels), axis=1)
        total += np.nansum(pixels, axis=1)
        squares += np.nansum(pixels**2, axis=1)
    if not count.all():
        raise RsSegError("the training chips have no valid pixels in some band")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def build_augmentation(cfg: AugmentConfig, seed: int | None = None) -> A.Compose | None:
    """Flips and 90-degree rotations, applied to image and mask together (None: nothing on)."""
    steps = []
    if cfg.hflip:
        steps.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip:
        steps.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.rot90:
        steps.append(A.RandomRotate90(p=cfg.rot90))
    if not steps:
        return None
    compose = A.Compose(steps, seed=seed)
    if seed is not None:
        reseed(compose, seed)
    return compose


def reseed(augment: A.Compose, seed: int) -> None:
    """Restart ``augment``'s random stream from ``seed``, one stream shared by all its steps.

    ``Compose.set_random_seed`` gives every step its own generator with the *same* seed, so steps
    with the same probability (hflip and vflip at 0.5) always fire together; shared generators
    draw one after another and are independent.
    """
    augment.set_random_state(np.random.default_rng(seed % 2**32), random.Random(seed))


class DecodedChips(Protocol):
    """Chips already read (:class:`rs_seg.train.chip_cache.ChipCache`), by index."""

    def chip(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image values (bands x H x W), valid mask and label mask of chip ``index``."""
        ...


class ChipDataset(Dataset[ChipPair]):
    """Normalized image chips (float32, bands x H x W) with their 0/1/255 masks (uint8, H x W).

    With a ``cache`` (:mod:`rs_seg.train.chip_cache`: the same chips, decoded once) pixels come
    from its memory maps instead of the chip files; everything after reading is the same.
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        masks: Sequence[str | Path],
        bands: Sequence[int],
        normalization: Normalization,
        augment: A.Compose | None = None,
        cache: DecodedChips | None = None,
    ) -> None:
        self.images = [Path(p) for p in images]
        self.masks = [Path(p) for p in masks]
        self.bands = list(bands)
        self.normalization = normalization
        self.augment = augment
        self.cache = cache

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int | tuple[int, int]) -> ChipPair:
        """One chip; ``(index, seed)`` (from :class:`EpochSampler`) also seeds its augmentation."""
        if isinstance(index, tuple):
            index, seed = index
            if self.augment is not None:
                reseed(self.augment, seed)
        raw, valid, mask = self._read(index)
        image = self.normalization.apply(raw, valid)
        if self.augment is not None:
            out = self.augment(image=image.transpose(1, 2, 0), mask=mask)
            image = np.ascontiguousarray(out["image"].transpose(2, 0, 1))
            mask = out["mask"]
        return torch.from_numpy(image), torch.from_numpy(np.array(mask, order="C"))

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image values, valid mask and label mask of one chip, from the cache or the files."""
        if self.cache is not None:
            return self.cache.chip(index)
        raw, valid = read_chip(self.images[index], self.bands)
        mask_path = self.masks[index]
        mask = read_mask(mask_path)
        if mask.shape != raw.shape[1:]:
            raise ChipReadError(
                f"mask is {mask.shape[1]} x {mask.shape[0]} px but its image chip is "
                f"{raw.shape[2]} x {raw.shape[1]}; prepare the chips again",
                mask_path,
            )
        return raw, valid, mask


def seed_augmentation(worker_id: int) -> None:
    """Give each loader worker its own, reproducible augmentation stream.

    albumentations keeps its own random generator; torch hands every worker a seed derived from
    the run's seed, so reusing it keeps augmentation repeatable and different across workers.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None:
        augment = getattr(info.dataset, "augment", None)
        if augment is not None:
            reseed(augment, info.seed % 2**32)


class EpochSampler(DistributedSampler[tuple[int, int]]):
    """Training order and augmentation seeds that depend only on the run's seed and the epoch.

    Yields ``(index, augmentation_seed)`` pairs: the order is a permutation seeded with
    ``seed + epoch`` and every chip's augmentation seed is drawn from ``(seed, epoch)``. Nothing
    carries over from earlier epochs, so an epoch after ``--resume`` sees exactly the chips and
    flips it would have seen in an uninterrupted run, whatever the number of loader workers
    (their own random state is never used). Being a ``DistributedSampler``, Lightning keeps it
    under DDP (each rank reads its share of the same permutation) and calls :meth:`set_epoch`
    before every epoch.
    """

    def __init__(
        self, dataset: Dataset[Any], seed: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        count = len(self.dataset)  # type: ignore[arg-type]
        rng = np.random.default_rng([self.seed % 2**32, self.epoch])
        seeds = rng.integers(0, 2**32, size=count).tolist()
        # DistributedSampler yields dataset indices whatever its type argument (torch types them
        # as the sampler's items).
        for index in cast(Iterator[int], super().__iter__()):
            yield int(index), int(seeds[index])


@dataclass(frozen=True)
class ChipSplits:
    """The chip index, checked for training: one band count, labelled chips in every split."""

    chips_dir: Path
    table: pd.DataFrame
    band_count: int
    bands: tuple[int, ...]
    chip_size: int
    fingerprint: str

    def rows(self, split: str) -> pd.DataFrame:
        """Chips of one split that have at least one labelled pixel, in index order."""
        return self.table[(self.table["split"] == split) & (self.table["labelled_px"] > 0)]

    def paths(self, split: str) -> tuple[list[str], list[str]]:
        """Image and mask paths of one split."""
        rows = self.rows(split)
        return list(rows["image_path"]), list(rows["mask_path"])

    def counts(self) -> dict[str, int]:
        """Usable chips per split."""
        return {split: len(self.rows(split)) for split in SPLITS}


def _check_band_counts(table: pd.DataFrame, chips_dir: Path) -> int:
    counts = table.groupby("bands")["scene"].unique()
    if len(counts) > 1:
        detail = "; ".join(
            f"{int(cast(SupportsInt, n))} bands: {', '.join(sorted(scenes)[:3])}"
            for n, scenes in counts.items()
        )
        raise RsSegError(
            f"chips have different band counts ({detail}); prepare scenes with the same bands "
            "into separate folders",
            chips_dir,
        )
    return int(counts.index[0])


def _check_splits(table: pd.DataFrame, chips_dir: Path) -> None:
    for split in SPLITS:
        rows = table[table["split"] == split]
        if rows.empty:
            raise RsSegError(
                f"the {split} split is empty; use more scenes, a smaller split.block_chips, or "
                "other split.ratios when preparing",
                chips_dir,
            )
        if int(rows["labelled_px"].sum()) == 0:
            raise RsSegError(
                f"every {split} chip is all ignore (255): no labelled pixels to "
                f"{'learn from' if split == 'train' else 'evaluate on'}",
                chips_dir,
            )


def _chip_size(table: pd.DataFrame, chips_dir: Path) -> int:
    sizes = table["size"].unique()
    if len(sizes) > 1:
        raise RsSegError(f"chips have different sizes {sorted(sizes)}", chips_dir)
    return int(sizes[0])


def _last_block_end(src: rasterio.DatasetReader) -> int | None:
    """Where the last block of a GeoTIFF ends in the file (None: not known, e.g. not a GeoTIFF)."""
    rows, cols = src.block_shapes[-1]
    y, x = (src.height - 1) // rows, (src.width - 1) // cols
    try:
        offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=src.count)
        size = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=src.count)
    except (RasterioError, ValueError):
        return None
    return int(offset) + int(size) if offset is not None and size is not None else None


def _chip_file_problem(
    path: Path, src: rasterio.DatasetReader, size: int, count: int, dtype: str | None
) -> str | None:
    if (src.width, src.height) != (size, size):
        return f"is {src.width} x {src.height} px, the index says {size} x {size}"
    if src.count != count:
        return f"has {src.count} bands, the index says {count}"
    if dtype and src.dtypes[0] != dtype:
        return f"is {src.dtypes[0]}, the index says {dtype}"
    # GDAL writes blocks in order, so a truncated file lacks (part of) its last block.
    end = _last_block_end(src)
    if end is None:
        src.read(window=Window(0, src.height - 1, src.width, 1))  # a truncated file fails here
    elif end > path.stat().st_size:
        return f"is truncated ({path.stat().st_size} bytes, its data reaches to byte {end})"
    return None


def check_chip_files(splits: ChipSplits) -> None:
    """Every image and mask chip that training and evaluation read opens, and fits the index.

    Checks size, band count and data type from the file header, and that the file is as long as
    its last data block says (a truncated file is not): it reads headers (one row of pixels
    where the block offsets are unknown), not whole chips, so it is cheap.
    Refuses with the first bad chip and how many are bad, so a damaged chip folder ends before
    anything is written, not deep inside an epoch.
    """
    table = splits.table
    rows = table[table["split"].isin(SPLITS) & (table["labelled_px"] > 0)]
    dtypes = rows["dtype"] if "dtype" in rows else [None] * len(rows)
    expected = [
        *((Path(p), splits.band_count, d) for p, d in zip(rows["image_path"], dtypes, strict=True)),
        *((Path(p), 1, "uint8") for p in rows["mask_path"]),
    ]
    bad: list[tuple[Path, str]] = []
    with rasterio.Env(**CHIP_ENV):
        for path, count, dtype in expected:
            try:
                with rasterio.open(path) as src:
                    problem = _chip_file_problem(path, src, splits.chip_size, count, dtype)
            except (RasterioError, OSError) as exc:
                problem = f"cannot be read ({_detail(exc)})"
            if problem:
                bad.append((path, problem))
    if bad:
        path, problem = bad[0]
        raise RsSegError(
            f"chip {problem} ({len(bad)} of {len(expected)} chip files are bad); prepare the "
            "chips again (rs-seg prepare --overwrite)",
            path,
        )


def load_chip_splits(
    chips_dir: Path, bands: Sequence[int] | None = None, check_files: bool = True
) -> ChipSplits:
    """Read and check a chip folder; ``bands`` (1-based) selects and orders model inputs.

    ``check_files`` also opens every chip file that will be read (:func:`check_chip_files`).
    """
    chips_dir = Path(chips_dir)
    table = read_index(chips_dir)
    if table.empty:
        raise RsSegError("the chip index holds no chips", chips_dir)
    band_count = _check_band_counts(table, chips_dir)
    chosen = tuple(bands) if bands else tuple(range(1, band_count + 1))
    wrong = [b for b in chosen if b > band_count]
    if wrong:
        raise RsSegError(f"bands {wrong} do not exist: chips have {band_count} bands", chips_dir)
    _check_splits(table, chips_dir)
    splits = ChipSplits(
        chips_dir=chips_dir,
        table=pd.DataFrame(table.drop(columns="geometry")),
        band_count=band_count,
        bands=chosen,
        chip_size=_chip_size(table, chips_dir),
        fingerprint=index_fingerprint(table),
    )
    if check_files:
        check_chip_files(splits)
    return splits


def chip_metadata(image_path: Path, bands: Sequence[int]) -> dict[str, Any]:
    """Pixel size, CRS, dtype and band descriptions of the chips: what the bundle records."""
    with rasterio.open(image_path) as src:
        names = [src.descriptions[b - 1] or f"band_{b}" for b in bands]
        return {
            "band_names": names,
            "pixel_size": [abs(src.res[0]), abs(src.res[1])] if src.crs else None,
            "crs": src.crs.to_string() if src.crs else None,
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
        }


def auto_workers(on_gpu: bool) -> int:
    """Loader processes: none on small CPU machines (the model step dominates), more on GPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    if on_gpu:
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus // 2)


class ChipDataModule(L.LightningDataModule):
    """Train (augmented, shuffled), validation and test loaders over a checked chip folder."""

    def __init__(
        self,
        splits: ChipSplits,
        normalization: Normalization,
        augment: AugmentConfig,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool = False,
        caches: Mapping[str, DecodedChips] | None = None,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.normalization = normalization
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.caches = caches or {}
        self._start_epoch = 0

    def dataset(self, split: str, augment: bool = False) -> ChipDataset:
        """The chips of one split; augmentation only when asked (train)."""
        images, masks = self.splits.paths(split)
        transform = build_augmentation(self.augment, seed=self.seed) if augment else None
        cache = self.caches.get(split)
        return ChipDataset(images, masks, self.splits.bands, self.normalization, transform, cache)

    def train_sampler(self, dataset: ChipDataset) -> EpochSampler:
        """The training order for the trainer's rank, starting at the epoch training continues at.

        Lightning calls ``set_epoch`` before every epoch, but on ``--resume`` it creates the loader
        iterator (and hands loader workers their first chips) before that, while the trainer's own
        epoch counters are not restored yet: the starting epoch comes from the checkpoint through
        :meth:`load_state_dict`.
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return EpochSampler(dataset, self.seed, epoch=self._start_epoch)
        return EpochSampler(
            dataset, self.seed, num_replicas=trainer.world_size, rank=trainer.global_rank,
            epoch=self._start_epoch,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the epoch the sampler continues at after ``--resume``.

        That is the epoch Lightning passes to ``set_epoch`` next (``processed`` is already counted
        up when checkpoints are written at the end of an epoch).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        return {"sampler_epoch": int(trainer.fit_loop.epoch_progress.current.processed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the sampler's starting epoch from a checkpoint."""
        self._start_epoch = int(state_dict.get("sampler_epoch", 0))

    def _loader(self, dataset: ChipDataset, train: bool) -> DataLoader[ChipPair]:
        # A last batch of one sample breaks BatchNorm (e.g. DeepLabV3+ pooling); drop only that.
        drop_last = train and len(dataset) % self.batch_size == 1 and len(dataset) > 1
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler(dataset) if train else None,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_augmentation if self.num_workers else None,
        )

    def train_dataloader(self) -> DataLoader[ChipPair]:
        """Shuffled, augmented training chips."""
        return self._loader(self.dataset("train", augment=True), train=True)

    def val_dataloader(self) -> DataLoader[ChipPair]:
        """Validation chips, unchanged."""
        return self._loader(self.dataset("val"), train=False)

    def test_dataloader(self) -> DataLoader[ChipPair]:
        """Test chips, unchanged."""
        return self._loader(self.dataset("test"), train=False)
