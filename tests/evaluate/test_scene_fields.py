"""Test chips laid out as scenes and mapped by rs-seg infer: a run records what users get."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from typer.testing import CliRunner

from rs_seg.cli import app
from rs_seg.config import MASK_IGNORE
from rs_seg.evaluate.scene_fields import SceneScores, scene_mosaic, score_field_layer
from rs_seg.infer.field_layer import LAYER
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.fields import FieldSettings
from rs_seg.train.dataset import load_chip_splits
from rs_seg.train.field_figure import SceneFields
from tests.helpers import ORIGIN, PIXEL, UTM


def _chip(path: Path, row: int, col: int, value: int, size: int = 4) -> Path:
    """A 2-band chip of ``size`` px at (row, col) of a scene, georeferenced as prepare cuts it."""
    transform = rasterio.transform.from_origin(
        ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL, PIXEL, PIXEL
    )
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 2, "dtype": "uint16",
               "crs": UTM, "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((2, size, size), value, dtype=np.uint16))
    return path


def _mask(path: Path, value: int, size: int = 4) -> Path:
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, size, size), value, dtype=np.uint8))
    return path


def test_chips_are_laid_out_at_their_offsets_with_the_scene_grid(tmp_path: Path) -> None:
    rows = pd.DataFrame({"scene": ["s", "s"], "row_off": [8, 12], "col_off": [4, 12], "size": 4})
    images = [_chip(tmp_path / "a.tif", 8, 4, 100), _chip(tmp_path / "b.tif", 12, 12, 200)]
    masks = [_mask(tmp_path / "a_m.tif", 1), _mask(tmp_path / "b_m.tif", 0)]
    mosaic = scene_mosaic("s", images, masks, rows, band_count=2)
    assert mosaic.image.shape == (2, 8, 12) and mosaic.crs == UTM
    assert (mosaic.transform.c, mosaic.transform.f) == (
        ORIGIN[0] + 4 * PIXEL,
        ORIGIN[1] - 8 * PIXEL,
    )
    assert (mosaic.image[:, :4, :4] == 100).all() and (mosaic.image[:, 4:, 8:] == 200).all()
    assert not mosaic.valid[:4, 4:].any() and (mosaic.target[:4, 4:] == MASK_IGNORE).all()
    written = mosaic.write(tmp_path / "scene.tif")
    with rasterio.open(written) as src:
        assert src.transform == mosaic.transform and (src.read_masks(1) > 0).sum() == 32


def _scene(name: str) -> SceneFields:
    ids = np.zeros((4, 4), dtype=np.int32)
    return SceneFields(name, np.zeros((3, 4, 4), np.uint8), ids, ids)


def test_the_worst_and_best_scenes_are_kept_and_tabled_worst_first() -> None:
    scores = SceneScores()
    metrics = {"object_precision": 0.5, "object_recall": 0.5, "fields_predicted": 2}
    for name, f1 in (("b", 0.5), ("a", 0.2), ("c", 0.9)):
        scores.keep(_scene(name), {**metrics, "object_f1": f1, "fields_labelled": 3}, Path(name))  # type: ignore[typeddict-item]
    assert [s.name for s in scores.shown()] == ["a", "c"]
    rows = [line for line in scores.table() if line.startswith("| a") or line.startswith("| c")]
    assert rows[0].startswith("| a") and "0.200" in rows[0] and "scene-01.gpkg" in rows[0]
    single = SceneScores()
    single.keep(_scene("only"), {**metrics, "object_f1": 0.4, "fields_labelled": 3}, Path("x"))  # type: ignore[typeddict-item]
    assert [s.name for s in single.shown()] == ["only"]


def _geometries(layer: Path) -> list[shapely.Geometry]:
    return sorted(pyogrio.read_dataframe(layer, layer=LAYER).geometry, key=shapely.to_wkb)


@pytest.mark.slow
def test_the_scores_a_run_records_are_those_of_rs_seg_infer_on_the_scene(
    trained_tiny_run, tmp_path: Path
) -> None:
    """Point 2 of the model contract: same scene, same settings -> same polygons, same F1."""
    _, evaluation = trained_tiny_run
    bundle = ModelBundle.load(evaluation.bundle)
    recorded = evaluation.metrics["test_scenes"]
    splits = load_chip_splits(Path(bundle.provenance["chips_dir"]), bundle.bands)
    rows = splits.rows("test").reset_index(drop=True)
    images, masks = splits.paths("test")
    assert recorded and set(recorded) == set(rows["scene"])
    layers = sorted((evaluation.report / "test_scenes").glob("scene-*.gpkg"))
    for (name, chips), stored in zip(rows.groupby("scene", sort=True), layers, strict=True):
        picked = list(chips.index)
        files = [Path(images[i]) for i in picked], [Path(masks[i]) for i in picked]
        scene = scene_mosaic(str(name), *files, chips, splits.band_count)
        source = scene.write(tmp_path / f"{name}.tif")
        out = tmp_path / f"{name}.gpkg"
        result = CliRunner().invoke(
            app,
            [
                "infer",
                str(source),
                "-o",
                str(out),
                "--model",
                str(evaluation.bundle),
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        metrics, _ = score_field_layer(out, scene)
        assert json.dumps(metrics, sort_keys=True) == json.dumps(
            recorded[str(name)], sort_keys=True
        )
        assert [g.wkb for g in _geometries(out)] == [g.wkb for g in _geometries(stored)]
        with rasterio.open(out.with_name(f"{name}_prob.tif")) as prob:
            assert FieldSettings.from_tags(prob.tags()) == bundle.field_settings


@pytest.mark.slow
def test_validation_tuning_and_inference_apply_the_same_field_settings(trained_tiny_run) -> None:
    _, evaluation = trained_tiny_run
    bundle = ModelBundle.load(evaluation.bundle)
    assert bundle.task == "fields" and bundle.fields is not None
    assert evaluation.metrics["fields"] == bundle.field_settings.model_dump()
    assert bundle.metrics["validation"]["objects"]["object_f1"] >= 0
