"""Window grids over rasters, and padded window reads.

The grid is the contract every tiling stage relies on: windows start at multiples of the stride,
the last row and column are shifted inward so they end exactly at the right and bottom edges (no
strip of the scene is ever dropped), and a scene smaller than a window gets a single window that
extends past the scene and is padded by the reader.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import queue
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from rs_seg.errors import RsSegError
from rs_seg.rasters import gdal_message

_T = TypeVar("_T")


def loaded_ahead(load: Callable[[int], _T], starts: Iterable[int]) -> Generator[_T, None, None]:
    """``load(start)`` for every start, the next one loading in a thread while this one is used.

    Reading and decoding with GDAL (and numpy's thresholding and scipy's labelling) release the
    GIL, so they overlap with the work on the strip before; one result more is in memory.
    """
    return loaded_in_order(lambda _, start: load(start), [None], starts)


_H = TypeVar("_H")


def loaded_in_order(
    load: Callable[[_H, int], _T],
    handles: Sequence[_H],
    starts: Iterable[int],
    ahead: int | None = None,
) -> Generator[_T, None, None]:
    """``load(handle, start)`` for every start, on one thread per handle, yielded in order.

    A GDAL dataset must not be read by two threads at once, so each load borrows a handle of
    its own (one dataset per thread, opened by the caller) and gives it back. ``ahead`` loads
    (default and at most: one per handle, at least one) run while the consumer works on the
    result before them, so at most ``ahead + 1`` results are in memory. Closed early (or left
    by an error), it drops the loads not yet started and waits for those running.
    """
    ahead = len(handles) if ahead is None else max(1, min(ahead, len(handles)))
    free: queue.SimpleQueue[_H] = queue.SimpleQueue()
    for handle in handles:
        free.put(handle)

    def borrowed(start: int) -> _T:
        handle = free.get()
        try:
            return load(handle, start)
        finally:
            free.put(handle)

    with thread_pool(len(handles), "rs-seg-read") as pool:
        pending: deque[Future[_T]] = deque()
        for start in starts:
            pending.append(pool.submit(borrowed, start))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextlib.contextmanager
def thread_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose queued work is cancelled when the block raises (or is interrupted).

    Leaving a plain ``ThreadPoolExecutor`` block waits for every queued call, so a Ctrl-C or
    SIGTERM acted only once all of them had run (many seconds on a wide scene). The calls
    already running are still waited for: they may be using datasets the caller closes next.
    """
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def window_stride(size: int, overlap: float) -> int:
    """Step between windows for an overlap fraction (at least one pixel)."""
    return max(1, size - round(size * overlap))


def hann_ramp(size: int) -> np.ndarray:
    """1-D Hann weight, positive everywhere (sampled at pixel centres), float64."""
    return np.asarray(np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2)


def hann_weight(size: int) -> np.ndarray:
    """2-D Hann weight (the outer product of :func:`hann_ramp`), float32."""
    ramp = hann_ramp(size)
    return np.outer(ramp, ramp).astype(np.float32)


def axis_weight(offsets: Sequence[int], size: int, start: int, stop: int) -> np.ndarray:
    """Sum of the Hann ramps of the windows at sorted ``offsets`` over pixels start to stop.

    A window grid is the product of its row and column offsets, so the sum of the 2-D weights
    of every window over a pixel is the product of this sum along each axis (float64).
    """
    ramp = hann_ramp(size)
    total = np.zeros(stop - start)
    first = bisect.bisect_right(offsets, start - size)  # the first window ending after start
    for offset in offsets[first : bisect.bisect_left(offsets, stop)]:
        lo, hi = max(offset, start), min(offset + size, stop)
        total[lo - start : hi - start] += ramp[lo - offset : hi - offset]
    return total


def axis_offsets(length: int, size: int, stride: int) -> list[int]:
    """Window start offsets along one axis that together cover ``[0, length)``.

    Regular steps of ``stride``; the last window is shifted inward to end at ``length``. When the
    axis is shorter than one window the only offset is 0 (the window runs past the end).
    """
    if length < 1 or size < 1 or stride < 1:
        raise ValueError(
            f"length, size and stride must be positive, got {length}, {size}, {stride}"
        )
    if stride > size:
        raise ValueError(f"stride {stride} > window size {size} would leave gaps")
    if length <= size:
        return [0]
    count = math.ceil((length - size) / stride) + 1
    return [i * stride for i in range(count - 1)] + [length - size]


@dataclass(frozen=True)
class GridWindow:
    """One window of a grid: its grid position and its pixel window in the raster."""

    row: int
    col: int
    window: Window

    @property
    def row_off(self) -> int:
        """Top pixel row of the window in the raster."""
        return int(self.window.row_off)

    @property
    def col_off(self) -> int:
        """Left pixel column of the window in the raster."""
        return int(self.window.col_off)


def grid_windows(height: int, width: int, size: int, stride: int) -> list[GridWindow]:
    """All windows of a ``size`` x ``size`` grid over a ``height`` x ``width`` raster, row-major."""
    rows = axis_offsets(height, size, stride)
    cols = axis_offsets(width, size, stride)
    return [
        GridWindow(r, c, Window(col_off, row_off, size, size))
        for r, row_off in enumerate(rows)
        for c, col_off in enumerate(cols)
    ]


def grid_rows(windows: list[GridWindow]) -> Iterator[list[GridWindow]]:
    """Group row-major grid windows into rows (one strip of the raster each)."""
    current: list[GridWindow] = []
    for window in windows:
        if current and window.row != current[0].row:
            yield current
            current = []
        current.append(window)
    if current:
        yield current


def inside_slices(window: Window, height: int, width: int) -> tuple[Window, slice, slice]:
    """The part of ``window`` inside the raster, and where it sits within the window's array."""
    row0 = max(0, int(window.row_off))
    col0 = max(0, int(window.col_off))
    row1 = min(height, int(window.row_off + window.height))
    col1 = min(width, int(window.col_off + window.width))
    inner = Window(col0, row0, max(0, col1 - col0), max(0, row1 - row0))
    rows = slice(row0 - int(window.row_off), row1 - int(window.row_off))
    cols = slice(col0 - int(window.col_off), col1 - int(window.col_off))
    return inner, rows, cols


def strip_slices(
    strip: Window, window: Window, shape: tuple[int, ...]
) -> tuple[slice, slice] | None:
    """Where ``window`` lies in an array loaded for ``strip``; None where it sticks out of it.

    Readers that load a whole strip at once (vector and raster label masks) hand out the windows
    inside it as slices of that array.
    """
    row = int(window.row_off - strip.row_off)
    col = int(window.col_off - strip.col_off)
    height, width = int(window.height), int(window.width)
    if row < 0 or col < 0 or row + height > shape[0] or col + width > shape[1]:
        return None
    return slice(row, row + height), slice(col, col + width)


def valid_pixels(
    src: rasterio.io.DatasetReaderBase, data: npt.NDArray[Any], window: Window
) -> npt.NDArray[np.bool_]:
    """GDAL's dataset mask (valid where any band is valid) for pixels already read into ``data``.

    For the common nodata-value case the mask follows from the data itself; asking GDAL for it
    would read every band a second time.
    """
    flags = src.mask_flag_enums
    if all(MaskFlags.all_valid in band for band in flags):
        return np.ones(data.shape[1:], dtype=bool)
    nodata = src.nodata
    if nodata is not None and all(band == [MaskFlags.nodata] for band in flags):
        # numpy's stubs type ufuncs on an array of unknown dtype (and rasterio's reads) as Any.
        if np.isnan(nodata):
            return cast("npt.NDArray[np.bool_]", ~np.isnan(data).all(axis=0))
        return _any_band_differs(data, np.asarray(nodata, dtype=data.dtype))
    return cast("npt.NDArray[np.bool_]", src.dataset_mask(window=window) > 0)


def _any_band_differs(data: npt.NDArray[Any], value: np.ndarray) -> npt.NDArray[np.bool_]:
    """Pixels where any band of ``data`` (bands x rows x cols) is not ``value``.

    Band by band into one result: comparing all bands at once would make a boolean copy of the
    whole read, bands x rows x the scene's width, before reducing it.
    """
    differs: npt.NDArray[np.bool_] = np.not_equal(data[0], value)
    scratch = np.empty_like(differs)
    for band in data[1:]:
        differs |= np.not_equal(band, value, out=scratch)
    return differs


@contextlib.contextmanager
def unreadable_pixels_in_one_line(src: rasterio.io.DatasetReaderBase) -> Iterator[None]:
    """A truncated or corrupt file is the user's to fix: one line naming it, not a traceback."""
    try:
        yield
    except RasterioIOError as exc:
        raise RsSegError(
            f"cannot read pixels, the file looks truncated or corrupt ({gdal_message(exc)})",
            src.name,
        ) from None


def read_padded(
    src: rasterio.io.DatasetReaderBase,
    window: Window,
    fill: float = 0,
    indexes: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a window that may extend past the raster, padding outside pixels with ``fill``.

    Returns ``(image, valid, inside)``: image is (bands, h, w); ``valid`` marks pixels that are
    inside the raster and not nodata (GDAL's dataset mask, plus NaN for float rasters); ``inside``
    marks pixels within the raster bounds (a read-only broadcast where every pixel is). Reading
    only the inner part is faster than a boundless read through a VRT and keeps the memory to
    one window. A file that cannot be decoded (truncated, half-copied) raises
    :class:`RsSegError` naming it.
    """
    bands = indexes or list(range(1, src.count + 1))
    height, width = int(window.height), int(window.width)
    inner, rows, cols = inside_slices(window, src.height, src.width)

    def blank() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.full((len(bands), height, width), fill, dtype=src.dtypes[bands[0] - 1])
        return image, np.zeros((height, width), dtype=bool), np.zeros((height, width), dtype=bool)

    if inner.width == 0 or inner.height == 0:  # the window lies wholly outside the raster
        return blank()
    with unreadable_pixels_in_one_line(src):
        data = src.read(bands, window=inner)
        valid = valid_pixels(src, data, inner)
    data = _finite(data, valid, fill)
    if inner.width == width and inner.height == height:  # the usual case: no padding needed
        # all inside: a read-only view of one value, not an array of the window's size
        return data, valid, np.broadcast_to(np.True_, (height, width))
    image, padded_valid, inside = blank()
    image[:, rows, cols] = data
    padded_valid[rows, cols] = valid
    inside[rows, cols] = True
    return image, padded_valid, inside


def _finite(data: np.ndarray, valid: np.ndarray, fill: float) -> np.ndarray:
    """Replace NaN/inf in float data by ``fill`` and mark those pixels invalid (in place)."""
    if not np.issubdtype(data.dtype, np.floating):
        return data
    finite = np.isfinite(data)
    valid &= finite.all(axis=0)
    return np.where(finite, data, fill).astype(data.dtype, copy=False)
