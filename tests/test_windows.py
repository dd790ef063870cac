"""Window grids must cover every pixel of every scene size, including awkward ones."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from rs_seg.windows import (
    _any_band_differs,
    axis_offsets,
    axis_weight,
    grid_rows,
    grid_windows,
    hann_weight,
    inside_slices,
    loaded_in_order,
    read_padded,
    thread_pool,
    window_stride,
)
from tests.helpers import write_scene


def coverage(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """How many windows cover each pixel."""
    counts = np.zeros((height, width), dtype=np.int32)
    for w in grid_windows(height, width, size, stride):
        counts[w.row_off : w.row_off + size, w.col_off : w.col_off + size] += 1
    return counts


@pytest.mark.parametrize(
    ("height", "width", "size", "stride"),
    [(1, 1, 256, 256), (255, 257, 256, 256), (333, 777, 256, 256), (333, 777, 256, 200),
     (100, 50, 256, 256), (512, 512, 256, 256), (10, 1000, 64, 64), (257, 257, 256, 128)],
)  # fmt: skip
def test_every_pixel_is_covered(height: int, width: int, size: int, stride: int) -> None:
    assert (coverage(height, width, size, stride) >= 1).all()


def test_last_windows_shift_inward_to_the_right_and_bottom_edges() -> None:
    windows = grid_windows(333, 777, 256, 256)
    assert [w.col_off for w in windows if w.row == 0] == [0, 256, 512, 777 - 256]
    assert [w.row_off for w in windows if w.col == 0] == [0, 333 - 256]
    assert all(w.col_off + 256 <= 777 and w.row_off + 256 <= 333 for w in windows)


def test_scene_smaller_than_window_gets_one_window_at_origin() -> None:
    windows = grid_windows(100, 50, 256, 256)
    assert len(windows) == 1
    assert windows[0].window == Window(0, 0, 256, 256)


def test_exact_multiple_needs_no_extra_window() -> None:
    assert axis_offsets(1024, 256, 256) == [0, 256, 512, 768]


def test_stride_larger_than_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="gaps"):
        axis_offsets(100, 10, 11)


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(1, 5000),
    size=st.integers(1, 600),
    stride_fraction=st.floats(0.05, 1.0),
)
def test_axis_offsets_properties(length: int, size: int, stride_fraction: float) -> None:
    stride = max(1, int(size * stride_fraction))
    offsets = axis_offsets(length, size, stride)
    assert offsets[0] == 0
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    assert all(b - a <= stride for a, b in itertools.pairwise(offsets)), "no gaps"
    if length > size:
        assert offsets[-1] + size == length, "the last window ends exactly at the edge"
        assert len(offsets) == math.ceil((length - size) / stride) + 1
    else:
        assert offsets == [0]


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), size=st.integers(8, 128))
def test_grid_covers_every_pixel_property(height: int, width: int, size: int) -> None:
    counts = coverage(height, width, size, size)
    assert (counts >= 1).all()
    rows = list(grid_rows(grid_windows(height, width, size, size)))
    assert all(len({w.row for w in row}) == 1 for row in rows)


def test_inside_slices_clip_to_raster() -> None:
    inner, rows, cols = inside_slices(Window(-10, 90, 50, 50), height=100, width=30)
    assert inner == Window(0, 90, 30, 10)
    assert (rows, cols) == (slice(0, 10), slice(10, 40))


def test_read_padded_marks_padding_and_nodata(tmp_path) -> None:
    path = write_scene(tmp_path / "s.tif", 20, 30, bands=2, nodata_cols=5)
    with rasterio.open(path) as src:
        image, valid, inside = read_padded(src, Window(20, 10, 16, 16), fill=0)
        assert image.shape == (2, 16, 16)
        assert inside[:10, :10].all() and not inside[10:, :].any() and not inside[:, 10:].any()
        assert (image[:, ~inside] == 0).all()
        _, valid_left, _ = read_padded(src, Window(0, 0, 16, 16), fill=0)
        assert not valid_left[:, :5].any() and valid_left[:, 5:].all()
        assert (valid == inside).all()


@pytest.mark.parametrize("window", [Window(5, 40, 16, 16), Window(-20, -20, 16, 16)])
def test_read_padded_window_wholly_outside_is_all_padding(tmp_path, window) -> None:
    path = write_scene(tmp_path / "s.tif", 20, 30, bands=2)
    with rasterio.open(path) as src:
        image, valid, inside = read_padded(src, window, fill=7)
    assert image.shape == (2, 16, 16) and (image == 7).all()
    assert not valid.any() and not inside.any()


def test_a_thread_pool_left_by_an_interrupt_drops_its_queued_calls() -> None:
    """Ctrl-C acts at once: the running call is waited for (it may be using a dataset the
    caller closes next), the queued ones never run."""
    running, release = threading.Event(), threading.Event()
    ran = []

    def call(index: int) -> None:
        if index == 0:
            running.set()
            release.wait(10)
        ran.append(index)

    with pytest.raises(KeyboardInterrupt), thread_pool(1, "test") as pool:
        queued = [pool.submit(call, index) for index in range(50)]
        assert running.wait(10)
        threading.Timer(0.2, release.set).start()
        raise KeyboardInterrupt
    assert ran == [0] and all(future.cancelled() for future in queued[1:])


def test_a_thread_pool_left_normally_runs_every_call() -> None:
    with thread_pool(2, "test") as pool:
        futures = [pool.submit(pow, index, 2) for index in range(20)]
    assert [future.result() for future in futures] == [index**2 for index in range(20)]


@pytest.mark.parametrize(("handles", "ahead", "expected"), [(3, None, 3), (3, 1, 1), (3, 9, 3)])
def test_loaded_in_order_reads_at_most_ahead_loads_before_the_consumer(
    handles: int, ahead: int | None, expected: int
) -> None:
    """The loads in memory at once are bounded by ``ahead``, not by the handles alone."""
    drawn = []

    def starts():
        for start in range(20):
            drawn.append(start)
            yield start

    loads = loaded_in_order(
        lambda handle, start: (handle, start), list(range(handles)), starts(), ahead
    )
    for index, (handle, start) in enumerate(loads):
        assert start == index and handle in range(handles)
        # loads submitted while this one is used: ``expected`` beyond it, until none are left
        assert len(drawn) == min(20, index + 1 + expected)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    size=st.integers(1, 24),
    overlap=st.sampled_from([0.0, 0.25, 0.5]),
    data=st.data(),
)
def test_axis_weights_multiply_to_the_summed_window_weights(
    height: int, width: int, size: int, overlap: float, data: st.DataObject
) -> None:
    """Over any span of rows, row sum x column sum equals adding every window's 2-D Hann weight."""
    stride = window_stride(size, overlap)
    rows, cols = axis_offsets(height, size, stride), axis_offsets(width, size, stride)
    summed = np.zeros((max(rows) + size, max(cols) + size))
    for row in rows:
        for col in cols:
            summed[row : row + size, col : col + size] += hann_weight(size)
    top = data.draw(st.integers(0, height - 1))
    bottom = data.draw(st.integers(top + 1, height))
    row_sums = axis_weight(rows, size, top, bottom)
    col_sums = axis_weight(cols, size, 0, width)
    assert row_sums.shape == (bottom - top,) and (row_sums > 0).all()
    assert np.allclose(np.outer(row_sums, col_sums), summed[top:bottom, :width], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("bands", [1, 2, 4])
def test_any_band_differs_matches_the_all_band_comparison(dtype: type, bands: int) -> None:
    """Band by band gives what one comparison over all bands gives, whatever band holds a value."""
    rng = np.random.default_rng(bands)
    data = rng.integers(0, 3, size=(bands, 9, 11)).astype(dtype)  # many pixels are 0 in some band
    value = np.asarray(0, dtype=dtype)
    assert np.array_equal(_any_band_differs(data, value), (data != value).any(axis=0))
