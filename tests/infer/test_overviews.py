"""Overviews built from the rows as they are written: GDAL's levels, from any row blocks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.infer.overviews import OverviewPyramid, halve, overview_factors
from rs_seg.infer.predict import COG_OPTIONS, copy_to_cog
from tests.helpers import uint8_profile, write_streamed_cog

NODATA = 255


def reference_halve(image: np.ndarray) -> np.ndarray:
    """Pixel by pixel: the rounded-half-up mean of the valid pixels of each 2 x 2 block."""
    bands, height, width = image.shape
    out = np.full((bands, -(-height // 2), -(-width // 2)), NODATA, dtype=np.uint8)
    for b in range(bands):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                block = image[b, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
                valid = block[block != NODATA].astype(int)
                if valid.size:
                    out[b, y, x] = (valid.sum() + valid.size // 2) // valid.size
    return out


def _image(
    rng: np.random.Generator, height: int, width: int, bands: int = 2, nodata: bool = True
) -> np.ndarray:
    image = rng.integers(0, 255, size=(bands, height, width), dtype=np.uint8)
    if not nodata:  # every pixel valid: halve's fast path, from the first level up
        return image
    image[rng.random(image.shape) < 0.2] = NODATA
    image[:, : height // 3, : width // 4] = NODATA  # a corner of nodata: whole blocks invalid
    return image


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    cuts=st.lists(st.integers(1, 89), max_size=6),
    seed=st.integers(0, 2**16),
    nodata=st.booleans(),
)
def test_levels_equal_the_whole_raster_halved_whatever_the_row_blocks(
    tmp_path_factory, height: int, width: int, cuts: list[int], seed: int, nodata: bool
) -> None:
    folder = tmp_path_factory.mktemp("pyramid")
    image = _image(np.random.default_rng(seed), height, width, nodata=nodata)
    edges = [0, *sorted({c for c in cuts if c < height}), height]
    base = folder / "base.tif"
    with OverviewPyramid(base, uint8_profile(height, width, block=16), block=8) as pyramid:
        for top, bottom in itertools.pairwise(edges):
            pyramid.add(image[:, top:bottom])
    assert len(pyramid.levels) == len(overview_factors(height, width, 8))
    expected = image
    for level in pyramid.levels:
        expected = reference_halve(expected)
        with rasterio.open(level.path) as src:
            np.testing.assert_array_equal(src.read(), expected)


def test_halving_rows_without_nodata_rounds_half_up() -> None:
    rows = np.array([[[0, 1, 254, 254], [1, 0, 253, 253]]], dtype=np.uint8)
    np.testing.assert_array_equal(halve(rows, NODATA), [[[1, 254]]])  # 0.5 -> 1, 253.5 -> 254


def test_halving_a_single_row_and_odd_columns() -> None:
    row = np.array([[[10, 20, 255, 7, 8]]], dtype=np.uint8)
    np.testing.assert_array_equal(halve(row, NODATA), [[[15, 7, 8]]])


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 6), (2, 5), (7, 8), (9, 9)])
def test_halving_rows_of_nodata_only_gives_nodata(height: int, width: int) -> None:
    """Most rows of a mostly empty scene: the same result, without the arithmetic."""
    rows = np.full((2, height, width), NODATA, dtype=np.uint8)
    halved = halve(rows, NODATA)
    assert halved.dtype == np.uint8
    np.testing.assert_array_equal(halved, reference_halve(rows))


def test_the_factors_are_those_of_gdal_auto(tmp_path: Path) -> None:
    for height, width in ((4096, 4096), (1300, 700), (513, 40), (512, 512)):
        scratch = tmp_path / "scratch.tif"
        with rasterio.open(scratch, "w", **uint8_profile(height, width, 1)) as dst:
            dst.write(np.zeros((1, height, width), dtype=np.uint8))
        rasterio.shutil.copy(scratch, tmp_path / "cog.tif", **COG_OPTIONS)
        with rasterio.open(tmp_path / "cog.tif") as src:
            assert src.overviews(1) == overview_factors(height, width), (height, width)


def test_the_cog_from_built_overviews_matches_gdals_own(tmp_path: Path) -> None:
    """Same levels, values within one level of GDAL's AVERAGE, same nodata, tags and bands."""
    height, width = 1100, 1300
    image = _image(np.random.default_rng(3), height, width)
    write_streamed_cog(tmp_path / "ours.tif", image, 192, model_id="m1", threshold="0.5")
    scratch = tmp_path / "scratch.tif"  # the same raster, its overviews left to GDAL's copy
    with rasterio.open(scratch, "w", **uint8_profile(height, width)) as dst:
        dst.write(image)
        dst.descriptions = ("band_1", "band_2")
        dst.update_tags(model_id="m1", threshold="0.5")
    copy_to_cog(scratch, tmp_path / "gdal.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "ours.tif", "scratch.tif"]
    with rasterio.open(tmp_path / "ours.tif") as ours, rasterio.open(tmp_path / "gdal.tif") as gdal:
        assert ours.overviews(1) == gdal.overviews(1) == [2, 4]
        assert (ours.descriptions, ours.nodata, ours.tags()) == (
            gdal.descriptions, gdal.nodata, gdal.tags()
        )  # fmt: skip
        assert ours.profile == gdal.profile
        np.testing.assert_array_equal(ours.read(), image)
        for factor in (2, 4):
            shape = (2, -(-height // factor), -(-width // factor))
            a, b = (s.read(out_shape=shape).astype(int) for s in (ours, gdal))
            np.testing.assert_array_equal(a == NODATA, b == NODATA)
            assert np.abs(a - b).max() <= 1
