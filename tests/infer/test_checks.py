"""The scene checks: the drift sample's windows and its statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.infer.checks import DRIFT_SAMPLE_LATTICE, _sample_windows, check_compatibility
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.predictor import _band_selection
from rs_seg.windows import read_padded
from tests.helpers import make_bundle, write_scene


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(1, 5000),
    width=st.integers(1, 5000),
    size=st.sampled_from([64, 256, 512]),
    block_rows=st.sampled_from([1, 16, 64, 256, 512, 1024]),
    block_cols=st.sampled_from([64, 256, 512, 1024, 5000]),
)
def test_sample_windows_lie_in_the_scene_spread_over_it_on_the_block_grid(
    height: int, width: int, size: int, block_rows: int, block_cols: int
) -> None:
    windows = _sample_windows(height, width, size, (block_rows, block_cols))
    assert 1 <= len(windows) <= DRIFT_SAMPLE_LATTICE**2
    for window in windows:
        assert window.row_off >= 0 and window.col_off >= 0
        assert window.height == min(size, height) and window.width == min(size, width)
        if height >= size:
            assert window.row_off + window.height <= height
        if width >= size:
            assert window.col_off + window.width <= width
        if block_rows <= size:  # snapped only where a block is no larger than a window
            assert window.row_off % block_rows == 0
        if block_cols <= size:
            assert window.col_off % block_cols == 0
    # spread: from the first block row / column to within one block (or pixel) of the far end
    for offsets, length, block in (
        ([w.row_off for w in windows], height, block_rows),
        ([w.col_off for w in windows], width, block_cols),
    ):
        assert min(offsets) == 0
        step = block if block <= size else 1
        assert max(offsets) > max(0, length - size) - step


@pytest.mark.parametrize("nodata_cols", [0, 100])
def test_drift_statistics_are_the_mean_and_spread_of_the_valid_sampled_pixels(
    tmp_path: Path, nodata_cols: int
) -> None:
    """Windows all valid (reshaped) and partly nodata (masked) give numpy's own figures."""
    scene = write_scene(tmp_path / "scene.tif", 700, 900, bands=3, nodata_cols=nodata_cols)
    bundle = ModelBundle.load(make_bundle(tmp_path / "model.pt", bands=3, chip=256))
    with rasterio.open(scene) as src:
        result = check_compatibility(src, bundle, scene, 256)
        windows = _sample_windows(src.height, src.width, 256, src.block_shapes[0])
        samples = [read_padded(src, window) for window in windows]
    pixels = np.concatenate(
        [image[:, valid].astype(np.float64) for image, valid, _ in samples], axis=1
    )
    assert result.band_mean == pytest.approx(list(pixels.mean(axis=1)), rel=1e-9)
    assert result.band_std == pytest.approx(list(pixels.std(axis=1)), rel=1e-6)


def test_consecutive_bundle_bands_are_read_as_a_view_and_others_by_index() -> None:
    """The window's band selection (predict's normalize): a slice where it can be, same values."""
    image = np.arange(5 * 3 * 3).reshape(5, 3, 3)
    for index in ([0, 1, 2, 3, 4], [1, 2], [3], [2, 0], [0, 2, 4]):
        selection = _band_selection(np.asarray(index))
        assert isinstance(selection, slice) == (index == list(range(index[0], index[-1] + 1)))
        np.testing.assert_array_equal(image[selection], image[np.asarray(index)])


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "model.pt", bands=3, chip=64)


@pytest.mark.parametrize(
    ("crs", "pixel", "warned"),
    [
        ("EPSG:32633", 10.0, None),
        ("EPSG:2263", 10 / (1200 / 3937), None),  # 32.8 US survey feet = 10 m: the same pixels
        ("EPSG:2263", 10.0, "pixel size 3.04801 m differs from the training pixel size 10 m"),
        ("EPSG:32633", 30.0, "pixel size 30 m differs"),
    ],
)
def test_pixel_sizes_are_compared_in_metres(
    tmp_path: Path, bundle_file: Path, crs: str, pixel: float, warned: str | None
) -> None:
    """A CRS in US survey feet once gave a false 'pixel size 32.8 differs from 10' warning."""
    scene = write_scene(tmp_path / "scene.tif", 64, 64, crs=crs, pixel=pixel, origin=(1e6, 2e5))
    bundle = ModelBundle.load(bundle_file)
    with rasterio.open(scene) as src:
        warnings = [w for w in check_compatibility(src, bundle, scene, 64).warnings if "pixel" in w]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith(warned), warnings


def test_training_pixel_sizes_in_feet_are_converted_too(tmp_path: Path, bundle_file: Path) -> None:
    """A model trained on a CRS in feet: its 32.8 ft pixels are 10 m, as are a UTM scene's."""
    scene = write_scene(tmp_path / "scene.tif", 64, 64)
    bundle = ModelBundle.load(bundle_file)
    bundle.pixel_size, bundle.crs = [10 / (1200 / 3937)] * 2, "EPSG:2263"
    with rasterio.open(scene) as src:
        assert not [w for w in check_compatibility(src, bundle, scene, 64).warnings if "pixel" in w]
