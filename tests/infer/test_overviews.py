"""Overviews built from the rows as they are written: GDAL's levels, from any row blocks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.infer.overviews import OverviewPyramid, halve, overview_factors
from rs_seg.infer.predict import COG_OPTIONS, copy_to_cog

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


def _profile(height: int, width: int, bands: int = 2) -> dict:
    return {
        "driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": "uint8",
        "nodata": NODATA, "crs": "EPSG:32615", "transform": Affine(2.0, 0, 500000, 0, -2.0, 0),
        "tiled": True, "blockxsize": 16, "blockysize": 16,
    }  # fmt: skip


def _image(rng: np.random.Generator, height: int, width: int, bands: int = 2) -> np.ndarray:
    image = rng.integers(0, 255, size=(bands, height, width), dtype=np.uint8)
    image[rng.random(image.shape) < 0.2] = NODATA
    image[:, : height // 3, : width // 4] = NODATA  # a corner of nodata: whole blocks invalid
    return image


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    cuts=st.lists(st.integers(1, 89), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_levels_equal_the_whole_raster_halved_whatever_the_row_blocks(
    tmp_path_factory, height: int, width: int, cuts: list[int], seed: int
) -> None:
    folder = tmp_path_factory.mktemp("pyramid")
    image = _image(np.random.default_rng(seed), height, width)
    edges = [0, *sorted({c for c in cuts if c < height}), height]
    base = folder / "base.tif"
    with OverviewPyramid(base, _profile(height, width), block=8) as pyramid:
        for top, bottom in itertools.pairwise(edges):
            pyramid.add(image[:, top:bottom])
    assert len(pyramid.levels) == len(overview_factors(height, width, 8))
    expected = image
    for level in pyramid.levels:
        expected = reference_halve(expected)
        with rasterio.open(level.path) as src:
            np.testing.assert_array_equal(src.read(), expected)


def test_halving_a_single_row_and_odd_columns() -> None:
    row = np.array([[[10, 20, 255, 7, 8]]], dtype=np.uint8)
    np.testing.assert_array_equal(halve(row, NODATA), [[[15, 7, 8]]])


def test_the_factors_are_those_of_gdal_auto(tmp_path: Path) -> None:
    for height, width in ((4096, 4096), (1300, 700), (513, 40), (512, 512)):
        scratch = tmp_path / "scratch.tif"
        with rasterio.open(scratch, "w", **{**_profile(height, width, 1), "blockxsize": 512,
                                            "blockysize": 512}) as dst:  # fmt: skip
            dst.write(np.zeros((1, height, width), dtype=np.uint8))
        rasterio.shutil.copy(scratch, tmp_path / "cog.tif", **COG_OPTIONS)
        with rasterio.open(tmp_path / "cog.tif") as src:
            assert src.overviews(1) == overview_factors(height, width), (height, width)


def test_the_cog_from_built_overviews_matches_gdals_own(tmp_path: Path) -> None:
    """Same levels, values within one level of GDAL's AVERAGE, same nodata, tags and bands."""
    height, width = 1100, 1300
    image = _image(np.random.default_rng(3), height, width)
    profile = {**_profile(height, width), "blockxsize": 512, "blockysize": 512}
    scratch = tmp_path / "scratch.tif"
    with (
        OverviewPyramid(scratch, profile) as pyramid,
        rasterio.open(scratch, "w", **profile) as dst,
    ):
        for top in range(0, height, 192):
            rows = image[:, top : top + 192]
            dst.write(rows, window=((top, top + rows.shape[1]), (0, width)))
            pyramid.add(rows)
        dst.descriptions = ("cropland", "boundary")
        dst.update_tags(model_id="m1", threshold="0.5")
    copy_to_cog(pyramid.write_vrt(), tmp_path / "ours.tif", existing_overviews=True)
    copy_to_cog(scratch, tmp_path / "gdal.tif")
    pyramid.remove()
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
