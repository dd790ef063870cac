"""Decoded training chips in memory-mapped arrays, so each epoch reads pixels, not GeoTIFFs.

Reading a chip from its files costs two GeoTIFF opens and two decompressions (image and mask),
more than normalizing and flipping the chip, and it is paid
again every epoch. So training decodes every chip of a split once, into three NumPy arrays in the
run folder: the image values in the chips' own data type, the valid-pixel mask and the label
mask. From then on it reads them through memory maps, which is a copy out of the page cache.
Loader processes open the maps themselves (nothing large is pickled to them) and share the pages.
A chip comes out exactly as :func:`read_chip` and :func:`read_mask` give it, so training is the
same with and without the cache.

A split's cache is built in a hidden folder and renamed into place once complete. It is keyed by
the chip files (path, size, modification time) and the bands read, so a chip folder prepared
again gets a new one. It lives in the run folder (``chip-cache/``) and training removes it when
it ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rs_seg.staging import process_alive
from rs_seg.train.dataset import ChipReadError, ChipSplits, read_chip, read_mask

log = logging.getLogger(__name__)

CACHE_DIR = "chip-cache"  # in the run folder
CACHED_SPLITS = ("train", "val")  # what training reads every epoch
# "auto" caches when the arrays take at most this much, and at most a quarter of the free disk
AUTO_LIMIT_BYTES = 8 * 2**30
_ARRAYS = ("images", "valid", "masks")
_KEY_FILE = "key.json"


def cache_bytes(count: int, bands: int, size: int, dtype: str) -> int:
    """Disk space of a cache of ``count`` chips: image values, valid mask and label mask."""
    return count * size * size * (bands * np.dtype(dtype).itemsize + 2)


def use_cache(setting: bool | Literal["auto"], nbytes: int, folder: Path) -> bool:
    """Whether to cache: as set, or for ``auto`` where the arrays fit (see AUTO_LIMIT_BYTES)."""
    if setting != "auto":
        return bool(setting)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    return nbytes <= min(AUTO_LIMIT_BYTES, free // 4)


def chips_key(images: Sequence[Path], masks: Sequence[Path], bands: Sequence[int]) -> str:
    """A digest of the chip files (path, size, modification time) and the bands read."""
    digest = hashlib.sha256(json.dumps(list(bands)).encode())
    for path in (*images, *masks):
        stat = Path(path).stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def training_caches(
    splits: ChipSplits, setting: bool | Literal["auto"], run: Path
) -> dict[str, ChipCache]:
    """The caches of the splits training reads, in ``run``'s ``chip-cache/`` (none: not caching)."""
    paths = {split: splits.paths(split) for split in CACHED_SPLITS}
    count = sum(len(images) for images, _ in paths.values())
    first = Path(paths["train"][0][0])
    dtype = str(read_chip(first, splits.bands)[0].dtype)
    nbytes = cache_bytes(count, len(splits.bands), splits.chip_size, dtype)
    folder = run / CACHE_DIR
    if not use_cache(setting, nbytes, folder.parent):
        if setting == "auto":
            log.info("not caching chips: %.1f GiB decoded is more than auto allows (cache_chips)",
                     nbytes / 2**30)  # fmt: skip
        return {}
    log.info("chip cache: %d chips, %.0f MB decoded, in %s", count, nbytes / 1e6, folder)
    caches = {}
    for split, (images, masks) in paths.items():
        image_paths, mask_paths = [Path(p) for p in images], [Path(p) for p in masks]
        caches[split] = split_cache(
            folder, split, image_paths, mask_paths, splits.bands, splits.chip_size
        )
    return caches


def remove_caches(run: Path) -> None:
    """Remove a run's chip cache (what :func:`training_caches` wrote), if any."""
    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)


class ChipCache:
    """The decoded chips of one split, read through memory maps opened on first use.

    Pickling (to loader processes) sends only the folder; each process maps the arrays itself.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "_arrays": None}

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS
            }
        return self._arrays

    def __len__(self) -> int:
        return len(self._open()["masks"])

    def chip(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image values (bands x H x W), valid mask and label mask of chip ``index``.

        Views of the maps: read-only, copied by whoever transforms them (normalization does).
        """
        arrays = self._open()
        return arrays["images"][index], arrays["valid"][index], arrays["masks"][index]


def split_cache(
    folder: Path,
    split: str,
    images: Sequence[Path],
    masks: Sequence[Path],
    bands: Sequence[int],
    size: int,
) -> ChipCache:
    """The cache of one split in ``folder``: the one there if its key matches, else a new one.

    A chip that cannot be read, or does not fit the others, ends the build with the chip's
    one-line error; nothing of the build is left behind.
    """
    final = folder / split
    key = chips_key(images, masks, bands)
    if _stored_key(final) == key:
        return ChipCache(final)
    _remove_dead_builds(folder, split)
    # per process: under torchrun every rank may build at once; the first rename wins
    partial = folder / f".{split}.partial-{os.getpid()}"
    partial.mkdir(parents=True)
    started = time.perf_counter()
    try:
        _write_arrays(partial, images, masks, bands, size)
        (partial / _KEY_FILE).write_text(json.dumps({"key": key, "chips": len(images)}))
        if _stored_key(final) != key:
            shutil.rmtree(final, ignore_errors=True)  # a cache of chips changed since
            partial.rename(final)
    except OSError:
        if _stored_key(final) != key:  # not another rank's rename of the same cache
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("decoded %d %s chips into %s in %.1f s", len(images), split, final,
             time.perf_counter() - started)  # fmt: skip
    return ChipCache(final)


def _remove_dead_builds(folder: Path, split: str) -> None:
    """Partial caches of this split that a killed process of this run left behind."""
    for partial in folder.glob(f".{split}.partial-*"):
        pid = partial.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _stored_key(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / _KEY_FILE).read_text())["key"])
    except (OSError, ValueError, KeyError):
        return None


def _write_arrays(
    folder: Path, images: Sequence[Path], masks: Sequence[Path], bands: Sequence[int], size: int
) -> None:
    """Decode every chip into the three arrays; the first chip fixes the image data type."""
    count = len(images)
    first, _ = read_chip(images[0], bands)
    shapes = {
        "images": ((count, len(bands), size, size), first.dtype),
        "valid": ((count, size, size), np.dtype(bool)),
        "masks": ((count, size, size), np.dtype(np.uint8)),
    }
    arrays = {
        name: np.lib.format.open_memmap(folder / f"{name}.npy", "w+", dtype, shape)
        for name, (shape, dtype) in shapes.items()
    }
    for index, (image_path, mask_path) in enumerate(zip(images, masks, strict=True)):
        raw, valid = read_chip(image_path, bands)
        mask = read_mask(mask_path)
        if raw.shape[1:] != (size, size) or mask.shape != (size, size):
            raise ChipReadError(
                f"chip is {raw.shape[2]} x {raw.shape[1]} px and its mask {mask.shape[1]} x "
                f"{mask.shape[0]}, the index says {size} x {size}; prepare the chips again",
                image_path,
            )
        if raw.dtype != first.dtype:
            raise ChipReadError(
                f"chip is {raw.dtype}, the split's first chip {first.dtype}; prepare the chips "
                "again",
                image_path,
            )
        arrays["images"][index] = raw
        arrays["valid"][index] = valid
        arrays["masks"][index] = mask
    for array in arrays.values():
        array.flush()
    del arrays
