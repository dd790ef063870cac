"""The command line: bad input ends in one clear line, exit status 2 and no partial output."""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely
from typer.testing import CliRunner

from rs_seg.cli import app
from tests.helpers import UTM, pixel_box, write_labels, write_scene

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_clean_failure(result, out, *fragments: str) -> None:
    """Exit 2, exactly one error line naming the problem, nothing written."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, f"staging left behind: {leftovers}"


@pytest.fixture
def inputs(tmp_path):
    scene = write_scene(tmp_path / "scene.tif", 64, 64)
    labels = write_labels(tmp_path / "fields.gpkg", [pixel_box(0, 0, 30, 30)], to_crs="EPSG:4326")
    return tmp_path, scene, labels


def prepare_args(scene, labels, out, *extra):
    return [
        "prepare",
        "--scenes",
        scene,
        "--labels",
        labels,
        "--out",
        out,
        "--chip-size",
        32,
        *extra,
    ]


def test_prepare_succeeds_and_prints_the_split(inputs) -> None:
    tmp_path, scene, labels = inputs
    result = invoke(*prepare_args(scene, labels, tmp_path / "chips"))
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "index (open in QGIS)" in result.stdout
    assert (tmp_path / "chips" / "index.gpkg").exists()


def test_not_a_raster(inputs) -> None:
    tmp_path, _, labels = inputs
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not a GeoTIFF")
    out = tmp_path / "chips"
    result = invoke(*prepare_args(fake, labels, out))
    assert_clean_failure(result, out, "fake.tif", "not a raster")
    assert not out.exists()


def test_raster_without_crs_with_vector_labels(inputs) -> None:
    tmp_path, _, labels = inputs
    bare = write_scene(tmp_path / "bare.tif", 64, 64, crs=None)
    out = tmp_path / "chips"
    assert_clean_failure(invoke(*prepare_args(bare, labels, out)), out, "bare.tif", "no CRS")
    assert not out.exists()


def test_labels_that_overlap_no_scene(inputs) -> None:
    tmp_path, scene, _ = inputs
    far = write_labels(tmp_path / "far.gpkg", [shapely.box(10, 10, 11, 11)], crs="EPSG:4326")
    out = tmp_path / "chips"
    assert_clean_failure(invoke(*prepare_args(scene, far, out)), out, "far.gpkg", "overlap none")
    assert not out.exists()


def test_empty_label_file(inputs) -> None:
    tmp_path, scene, _ = inputs
    empty = tmp_path / "empty.gpkg"
    gpd.GeoDataFrame({"class": []}, geometry=[], crs=UTM).to_file(empty)
    out = tmp_path / "chips"
    assert_clean_failure(invoke(*prepare_args(scene, empty, out)), out, "empty.gpkg", "empty")
    assert not out.exists()


def test_zero_byte_label_file(inputs) -> None:
    tmp_path, scene, _ = inputs
    zero = tmp_path / "zero.geojson"
    zero.write_bytes(b"")
    out = tmp_path / "chips"
    assert_clean_failure(invoke(*prepare_args(scene, zero, out)), out, "zero.geojson")
    assert not out.exists()


def test_truncated_scene(inputs) -> None:
    tmp_path, _, labels = inputs
    whole = write_scene(tmp_path / "whole.tif", 256, 256, bands=3)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "chips"
    result = invoke(*prepare_args(truncated, labels, out))
    assert_clean_failure(result, out, "truncated.tif")
    assert not out.exists()


def test_scene_that_is_all_nodata(inputs) -> None:
    tmp_path, _, labels = inputs
    blank = write_scene(tmp_path / "blank.tif", 64, 64, nodata_cols=64)
    out = tmp_path / "chips"
    result = invoke(*prepare_args(blank, labels, out, "--max-nodata", 1.0))
    assert_clean_failure(result, out, "blank.tif", "entirely nodata")
    assert not out.exists()


def test_ratios_that_do_not_sum_to_one(inputs) -> None:
    tmp_path, scene, labels = inputs
    out = tmp_path / "chips"
    result = invoke(*prepare_args(scene, labels, out, "--ratios", 0.8, 0.1, 0.2))
    assert_clean_failure(result, out, "sum to 1")
    assert not out.exists()


def test_existing_output_needs_overwrite(inputs) -> None:
    tmp_path, scene, labels = inputs
    out = tmp_path / "chips"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_clean_failure(
        invoke(*prepare_args(scene, labels, out)), out, "already exists", "--overwrite"
    )
    assert (out / "keep.txt").read_text() == "precious"
    refused = invoke(*prepare_args(scene, labels, out, "--overwrite"))
    assert_clean_failure(refused, out, "'keep.txt', which rs-seg prepare did not write")
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()  # an empty folder is free to use
    assert invoke(*prepare_args(scene, labels, out)).exit_code == 0
    result = invoke(*prepare_args(scene, labels, out, "--overwrite"))  # its own folder: replaced
    assert result.exit_code == 0 and (out / "index.gpkg").is_file()


def test_scenes_with_different_band_counts(inputs) -> None:
    tmp_path, scene, labels = inputs
    other = write_scene(tmp_path / "four.tif", 64, 64, bands=4)
    out = tmp_path / "chips"
    result = invoke(
        "prepare", "--scenes", scene, "--scenes", other, "--labels", labels, "--out", out
    )
    assert_clean_failure(result, out, "four.tif", "bands")


def test_missing_scene_pattern(inputs) -> None:
    tmp_path, _, labels = inputs
    out = tmp_path / "chips"
    result = invoke(*prepare_args(tmp_path / "nothing" / "*.tif", labels, out))
    assert_clean_failure(result, out, "matched no files")


def test_config_file_with_flag_overrides(inputs) -> None:
    tmp_path, scene, labels = inputs
    config = tmp_path / "run.yaml"
    config.write_text(
        f"prepare:\n  scenes: ['{scene}']\n  labels: {labels}\n  out: {tmp_path / 'from_yaml'}\n"
        "  chip_size: 64\n  split: {seed: 3}\n"
    )
    result = invoke("prepare", "--config", config, "--chip-size", 32)
    assert result.exit_code == 0, result.output
    assert "4 chips" in result.stdout, "the flag (32 px chips) overrides the file (64 px)"


def test_config_typo_is_reported_with_its_key(inputs) -> None:
    tmp_path, *_ = inputs
    config = tmp_path / "bad.yaml"
    config.write_text("prepare:\n  scenes: [a.tif]\n  labels: l.gpkg\n  chip_sise: 64\n")
    result = invoke("prepare", "--config", config)
    assert result.exit_code == 2 and "chip_sise" in result.stderr and "bad.yaml" in result.stderr


def test_bad_label_map(inputs) -> None:
    _tmp_path, scene, _ = inputs
    result = invoke("prepare", "--scenes", scene, "--labels", scene, "--label-map", "1:2")
    assert result.exit_code == 2 and "--label-map" in result.stderr


def test_model_register_stores_a_bundle_and_moves_latest(tmp_path) -> None:
    import json

    from rs_seg.model.bundle import ModelBundle
    from tests.helpers import make_bundle

    unscored = make_bundle(tmp_path / "unscored.pt")
    models = tmp_path / "models"
    refused = runner.invoke(app, ["model", "register", str(unscored), "--models-dir", str(models)])
    assert refused.exit_code == 2 and "no test metric 'mean_iou'" in refused.output
    scored = ModelBundle.load(unscored)
    scored.metrics = {"test": {"mean_iou": 0.8, "chips": 3}}
    bundle = scored.save(tmp_path / "run" / "model-bundle.pt")
    register = ["model", "register", str(bundle), "--models-dir", str(models), "--promote"]
    first = runner.invoke(app, [*register, "if_better"])
    assert first.exit_code == 0, first.output
    assert "latest now this model" in first.output
    latest = json.loads((models / "latest.json").read_text())
    assert (models / latest["model_id"] / "model-bundle.pt").is_file()
    again = runner.invoke(app, [*register, "never"])
    assert again.exit_code == 0 and "latest unchanged" in again.output
    wrong = runner.invoke(app, ["model", "register", str(bundle), "--promote", "sometimes"])
    assert wrong.exit_code == 2 and "--promote must be" in wrong.output


def _bounds(spec: dict) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low exclusive, high exclusive) of a JSON-schema number, None where unbounded."""
    spec = next(s for s in spec.get("anyOf", [spec]) if s.get("type") != "null")
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    return low, high, "exclusiveMinimum" in spec, "exclusiveMaximum" in spec


@pytest.mark.parametrize(
    ("command", "flag", "field"),
    [
        ("infer", "--window", "window"),
        ("infer", "--overlap", "overlap"),
        ("infer", "--batch-size", "batch_size"),
        ("infer", "--workers", "workers"),
        ("infer", "--threshold", "threshold"),
        ("infer", "--boundary-threshold", "boundary_threshold"),
        ("infer", "--min-area", "min_area"),
        ("infer", "--simplify", "simplify"),
        ("vectorize", "--threshold", "threshold"),
        ("vectorize", "--boundary-threshold", "boundary_threshold"),
        ("vectorize", "--min-area", "min_area"),
        ("vectorize", "--simplify", "simplify"),
        ("vectorize", "--fill-holes-below", "fill_holes_below"),
        ("prepare", "--chip-size", "chip_size"),
        ("prepare", "--stride", "stride"),
        ("prepare", "--max-nodata", "max_nodata_fraction"),
    ],
)
def test_help_states_the_range_that_validation_keeps(command: str, flag: str, field: str) -> None:
    """``--overlap 0.99`` was accepted under a help text that said 0-0.9: now the help states the
    schema's own bounds, and a value just past one is refused in one line."""
    from rs_seg.config import InferOptions, PrepareConfig

    prepare = {"scenes": ["a.tif"], "labels": "l.gpkg"}
    model, base = (PrepareConfig, prepare) if command == "prepare" else (InferOptions, {})
    text = " ".join(invoke(command, "--help").stdout.split())
    start = text.index(f"{flag} <")
    described = text[start : text.find(" --", start + len(flag))]
    low, high, above, below = _bounds(model.model_json_schema()["properties"][field])
    step = 1 if model.model_fields[field].annotation in (int, int | None) else 1e-6
    for bound, exclusive, past in ((low, above, -step), (high, below, step)):
        if bound is None:
            continue
        assert f"{bound:g}" in described, described
        inside, outside = (bound - past, bound) if exclusive else (bound, bound + past)
        model.model_validate({**base, field: inside})
        with pytest.raises(ValueError, match=field):
            model.model_validate({**base, field: outside})
    assert low is not None, f"{flag} has no lower bound in the schema"
