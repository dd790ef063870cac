"""The probability and mask COGs explain themselves to a GIS: nodata 255 instead of a mask band,
scale 1/255 so values read as probabilities 0-1, band descriptions, valid levels 0-254; and
rasters of earlier releases (internal mask, 255 valid, no nodata) still vectorize the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.shutil
import shapely
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from typer.testing import CliRunner

from rs_seg.cli import app
from rs_seg.infer.predict import (
    BAND_DESCRIPTIONS,
    COG_OPTIONS,
    MASK_DESCRIPTION,
    predict_scene,
    write_binary_mask,
)
from rs_seg.infer.vectorize import LAYER, VectorizeSettings, vectorize
from rs_seg.levels import threshold_to_level
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.fields import FieldSettings
from tests.helpers import ORIGIN, PIXEL, UTM, FunctionPredictor, make_bundle, write_scene

NODATA_COLS = 3


def pointwise(model: FunctionPredictor, batch: np.ndarray) -> np.ndarray:
    """Sigmoid of the normalized band 1 (and its complement as the boundary): no context."""
    extent = 1 / (1 + np.exp(-batch[:, :1]))
    return np.concatenate([extent, 1 - extent], axis=1)[:, : model.bundle.outputs]


def expected_levels(scene: Path) -> np.ndarray:
    """What ``pointwise`` stores: round(p * 255) capped at 254 (the bundle normalizes 1000/300)."""
    with rasterio.open(scene) as src:
        band = src.read(1).astype(np.float64)
    return np.minimum(np.round(255 / (1 + np.exp(-(band - 1000) / 300))), 254).astype(int)


@pytest.fixture(params=["cropland", "fields"])
def predicted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, ModelBundle]:
    """A probability COG of a scene whose first columns are nodata and whose p reaches ~1."""
    scene = write_scene(tmp_path / "s.tif", 130, 97, nodata_cols=NODATA_COLS)
    bundle = ModelBundle.load(make_bundle(tmp_path / "m.pt", task=request.param))
    prob = tmp_path / "p.tif"
    predict_scene(scene, bundle, prob, window=32, overlap=0.5, device="cpu",
                  predictor=FunctionPredictor(bundle, pointwise))  # fmt: skip
    return scene, prob, bundle


def valid_columns(height: int, width: int) -> np.ndarray:
    valid = np.ones((height, width), dtype=bool)
    valid[:, :NODATA_COLS] = False
    return valid


def test_nodata_is_255_and_there_is_no_mask_band(predicted) -> None:
    scene, prob, bundle = predicted
    bands = bundle.outputs
    with rasterio.open(prob) as src:
        assert src.nodata == 255 and src.nodatavals == (255.0,) * bands
        # GDAL derives the mask from nodata: no per-dataset (internal) mask QGIS shows as alpha.
        assert src.mask_flag_enums == ([MaskFlags.nodata],) * bands
        data, masks = src.read(), src.read_masks()
    valid = valid_columns(*data.shape[1:])
    assert (data[:, ~valid] == 255).all(), "masked pixels store the nodata value in every band"
    assert (masks[:, ~valid] == 0).all() and (masks[:, valid] == 255).all()
    assert data[:, valid].max() == 254, "p ~ 1 is stored as 254, never as 255"
    expected = expected_levels(scene)
    assert np.abs(data[0][valid] - expected[valid]).max() <= 1
    assert (expected[valid] == 254).any(), "the scene reaches the top level"


def test_scale_offset_descriptions_and_values_text(predicted) -> None:
    _, prob, bundle = predicted
    bands = bundle.outputs
    with rasterio.open(prob) as src:
        assert src.scales == pytest.approx((1 / 255,) * bands, rel=1e-12)
        assert src.offsets == (0.0,) * bands
        assert src.descriptions == BAND_DESCRIPTIONS[:bands]
        assert src.descriptions == ("cropland probability", "boundary probability")[:bands]
        values = src.tags()["values"]
        top = float(src.read(1, masked=True).max()) * src.scales[0] + src.offsets[0]
    assert "255 = nodata" in values and "254" in values and "1/255" in values
    assert top == pytest.approx(254 / 255), "a GIS applying scale/offset reads 0-1"


def test_statistics_skip_nodata(predicted) -> None:
    _, prob, _ = predicted
    with rasterio.open(prob) as src:
        stats = src.stats(indexes=[1], approx=False)[0]  # GDAL's band statistics (gdalinfo -stats)
        levels, masked = src.read(1), src.read(1, masked=True)
    valid = levels[valid_columns(*levels.shape)].astype(np.float64)
    assert (stats.min, stats.max) == (valid.min(), valid.max())
    assert stats.mean == pytest.approx(valid.mean(), rel=1e-9)
    assert masked.count() == valid.size and float(masked.mean()) == pytest.approx(valid.mean())


def test_the_cog_stays_valid_and_overviews_keep_nodata(tmp_path: Path, bundle_path: Path) -> None:
    scene = write_scene(tmp_path / "s.tif", 600, 700, nodata_cols=64)
    prob = tmp_path / "p.tif"
    predict_scene(scene, ModelBundle.load(bundle_path), prob, device="cpu")
    ghost = prob.read_bytes()[:400]  # GDAL's COG "ghost" header, as its COG validator reads it
    assert b"LAYOUT=IFDS_BEFORE_DATA" in ghost and b"KNOWN_INCOMPATIBLE_EDITION=NO" in ghost
    assert b"MASK_INTERLEAVED_WITH_IMAGERY" not in ghost, "no mask IFDs any more"
    with rasterio.open(prob) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1) == [2]
        assert src.nodata == 255 and src.scales[0] == pytest.approx(1 / 255)
        overview = src.read(1, out_shape=(300, 350))
        overview_mask = src.read_masks(1, out_shape=(300, 350))
    assert (overview[:, :32] == 255).all() and (overview_mask[:, :32] == 0).all()
    assert overview[:, 32:].max() <= 254 and (overview_mask[:, 32:] == 255).all()


def test_a_cog_cut_short_by_a_full_disk_is_an_error(
    tmp_path: Path, bundle_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GDAL's COG copy can return without an error on a full disk, leaving the file cut short.
    real = rasterio.shutil.copy

    def cut_short(source: Path, target: Path, **options: object) -> None:
        real(source, target, **options)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) * 9 // 10])

    monkeypatch.setattr(rasterio.shutil, "copy", cut_short)
    scene = write_scene(tmp_path / "s.tif", 300, 200)
    with pytest.raises(RasterioIOError):
        predict_scene(scene, ModelBundle.load(bundle_path), tmp_path / "p.tif", device="cpu")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "model-bundle.pt")


def test_binary_mask_is_0_1_with_nodata_255(predicted, tmp_path: Path) -> None:
    _, prob, _ = predicted
    level = threshold_to_level(0.5)
    mask_path = tmp_path / "mask.tif"
    write_binary_mask(prob, mask_path, level, run_id="r1", strip_rows=50)
    with rasterio.open(prob) as src, rasterio.open(mask_path) as mask:
        levels = src.read(1)
        assert mask.nodata == 255 and mask.mask_flag_enums == ([MaskFlags.nodata],)
        assert mask.descriptions == (MASK_DESCRIPTION,) and "255 = nodata" in mask.tags()["values"]
        assert mask.tags()["run_id"] == "r1" and mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        binary = mask.read(1)
    valid = valid_columns(*levels.shape)
    assert (binary[~valid] == 255).all()
    assert (binary[valid] == (levels[valid] >= level)).all()
    assert set(np.unique(binary[valid])) == {0, 1}


# --- rasters of earlier releases -----------------------------------------------------------------


def profile_of(levels: np.ndarray, **extra: object) -> dict[str, object]:
    return {
        "driver": "GTiff", "height": levels.shape[1], "width": levels.shape[2],
        "count": len(levels), "dtype": "uint8", "crs": UTM,
        "transform": rasterio.transform.from_origin(*ORIGIN, PIXEL, PIXEL), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "zstd", **extra,
    }  # fmt: skip


def write_old_format(path: Path, levels: np.ndarray, valid: np.ndarray) -> Path:
    """A probability COG the way rs_seg wrote it before nodata 255: internal mask, 255 valid."""
    scratch = path.with_name(f"{path.stem}.scratch.tif")
    profile = profile_of(levels)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(scratch, "w", **profile) as dst:
        dst.write(np.where(valid, levels, 0).astype(np.uint8))
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
        dst.descriptions = ("cropland", "boundary")[: len(levels)]
        dst.update_tags(rs_seg_version="0.9.0", model_id="old", threshold_used="0.500000",
                        values="cropland probability x 255; nodata masked")  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        rasterio.shutil.copy(scratch, path, **COG_OPTIONS)
    scratch.unlink()
    return path


def write_new_format(path: Path, levels: np.ndarray, valid: np.ndarray) -> Path:
    """The same probabilities as this release writes them: capped at 254, nodata 255."""
    with rasterio.open(path, "w", **profile_of(levels, nodata=255)) as dst:
        dst.write(np.where(valid, np.minimum(levels, 254), 255).astype(np.uint8))
        dst.descriptions = BAND_DESCRIPTIONS[: len(levels)]
    return path


def field_landscape(bands: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Blocky probabilities with many 255s and 254s, a boundary band, and a nodata corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(
        [0, 40, 130, 200, 254, 255], size=(12, 12), p=[0.2, 0.1, 0.1, 0.2, 0.1, 0.3]
    )
    extent = np.kron(coarse, np.ones((6, 6), dtype=int))
    boundary = np.zeros_like(extent)
    boundary[::6, :] = boundary[:, ::6] = 255  # outlines of every block, some at p = 1
    boundary[3::12, :] = 254
    valid = np.ones(extent.shape, dtype=bool)
    valid[:20, :15] = False
    return np.stack([extent, boundary][:bands]), valid


def fields_of(path: Path, threshold: float, boundary: float | None) -> list[shapely.Geometry]:
    out = path.with_suffix(".gpkg")
    settings = VectorizeSettings(FieldSettings(threshold=threshold, boundary_threshold=boundary))
    vectorize(path, out, settings, overwrite=True)
    return list(pyogrio.read_dataframe(out, layer=LAYER).geometry)


@pytest.mark.parametrize("bands", [1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.9961])  # 0.9961: level 255 before, now 254
def test_old_format_rasters_vectorize_like_new_ones(
    tmp_path: Path, bands: int, threshold: float
) -> None:
    levels, valid = field_landscape(bands)
    old = write_old_format(tmp_path / "old.tif", levels, valid)
    new = write_new_format(tmp_path / "new.tif", levels, valid)
    with rasterio.open(old) as src:
        assert src.mask_flag_enums[0] == [MaskFlags.per_dataset] and src.nodata is None
        assert (src.read(1)[valid] == 255).any(), "level 255 is a valid probability here"
    boundary = 0.5 if bands == 2 else None
    old_fields = fields_of(old, threshold, boundary)
    new_fields = fields_of(new, threshold, boundary)
    assert len(old_fields) == len(new_fields) > 0
    for a, b in zip(old_fields, new_fields, strict=True):
        assert a.equals(b)
    cropland = (levels[0] >= threshold_to_level(threshold)) & valid
    area = shapely.union_all(old_fields).area
    assert area == pytest.approx(cropland.sum() * PIXEL * PIXEL), "nodata pixels stay outside"


def test_rs_seg_vectorize_re_splits_an_old_raster(tmp_path: Path) -> None:
    levels, valid = field_landscape(2)
    old = write_old_format(tmp_path / "old_prob.tif", levels, valid)
    result = CliRunner().invoke(
        app,
        [
            "vectorize",
            str(old),
            "-o",
            str(tmp_path / "f.gpkg"),
            "--min-area",
            "0",
            "--threshold",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    fields = pyogrio.read_dataframe(tmp_path / "f.gpkg", layer=LAYER)
    assert len(fields) > 0 and fields.mean_prob.max() <= 1.0
