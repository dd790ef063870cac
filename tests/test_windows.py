"""Window grids must cover every pixel of every scene size, including awkward ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from rs_seg.windows import axis_offsets, grid_rows, grid_windows, inside_slices, read_padded
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
