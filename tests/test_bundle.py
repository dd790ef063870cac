"""Model bundles: a round trip reproduces predictions exactly; foreign files are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from rs_seg.cli import app
from rs_seg.config import ModelConfig
from rs_seg.errors import RsSegError
from rs_seg.evaluate.evaluation import predict_levels
from rs_seg.model.bundle import FORMAT_VERSION, ModelBundle
from rs_seg.model.fields import DEFAULT_MIN_AREA, FieldSettings
from rs_seg.model.networks import build_model
from rs_seg.model.normalization import Normalization
from rs_seg.model.predictor import WindowPredictor
from rs_seg.model.upgrades import upgrade
from rs_seg.train.dataset import ChipDataset
from rs_seg.train.metrics import quantize
from rs_seg.train.module import CroplandModule
from tests.helpers import ROOT


def tiny_bundle() -> ModelBundle:
    model = ModelConfig(arch="Unet", encoder="resnet18")
    net = build_model(model, in_channels=3)
    return ModelBundle(
        model=model,
        bands=[3, 2, 1],
        band_names=["red", "green", "blue"],
        normalization=Normalization((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)),
        chip_size=32,
        threshold=0.47,
        pixel_size=[10.0, 10.0],
        crs="EPSG:32633",
        metrics={"test": {"cropland_iou": 0.8, "mean_iou": 0.85}},
        provenance={"chip_index_fingerprint": "abc"},
        state_dict=net.state_dict(),
    )


def test_band_index_counts_from_zero_in_the_bundles_band_order() -> None:
    """GDAL's band numbers (from 1, in the order the model reads them) as numpy indexes."""
    assert tiny_bundle().band_index.tolist() == [2, 1, 0]


def test_bundle_round_trip_keeps_metadata_and_weights(tmp_path: Path) -> None:
    bundle = tiny_bundle()
    path = bundle.save(tmp_path / "model-bundle.pt")
    loaded = ModelBundle.load(path)
    assert loaded.meta() == bundle.meta()
    assert loaded.model_id == bundle.model_id and len(loaded.model_id) == 12
    for key, value in bundle.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value)


# Metrics and provenance as evaluate_run has written them into format-1 bundles (config trimmed).
_SCORES = {
    "cropland_iou": 0.7775816416593115, "background_iou": 0.8849840255591054,
    "mean_iou": 0.8312828336092084, "f1": 0.874875868917577, "precision": 0.8620352250489237,
    "recall": 0.8881048387096774, "accuracy": 0.91796875, "pixels": 3072, "chips": 3,
}  # fmt: skip
WRITTEN_METRICS = {
    "validation": {**_SCORES, "pixels": 4096, "chips": 4},
    "test": _SCORES,
    "threshold_rule": "best validation mean IoU over uint8 probability levels",
}
WRITTEN_PROVENANCE = {
    "model_id": "2405b69207a0",
    "chip_index_fingerprint": "ceb29579e8779f92",
    "chips_dir": "/data/chips",
    "config": {"epochs": 2, "model": {"arch": "Unet", "encoder": "resnet18"}},
    "versions": {"rs-seg": "0.1.0", "torch": "2.13.0+cpu"},
    "created": "2026-12-01T16:40:55+00:00",
    "epochs_run": 2,
    "best_epoch": 2,
    "note": "keys rs_seg does not know are kept too",
}


def test_a_written_bundle_keeps_its_metrics_and_provenance_byte_for_byte(tmp_path: Path) -> None:
    """The typed metrics and provenance are the stored JSON itself: loading and saving again
    changes no key, value or order, so registry copies and ``model info`` see the same file."""
    bundle = tiny_bundle()
    path = bundle.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["meta"]["metrics"] = json.loads(json.dumps(WRITTEN_METRICS))
    payload["meta"]["provenance"] = json.loads(json.dumps(WRITTEN_PROVENANCE))
    torch.save(payload, path)
    loaded = ModelBundle.load(path)
    assert loaded.model_id == "2405b69207a0"
    assert json.dumps(loaded.meta()) == json.dumps(payload["meta"])
    again = torch.load(loaded.save(tmp_path / "again.pt"), weights_only=True)
    assert json.dumps(again["meta"]) == json.dumps(payload["meta"])
    assert "  test       cropland_iou 0.7776, background_iou 0.8850" in loaded.describe()


def _as_format_1(payload: dict, **meta: object) -> dict:
    """A format-2 payload written back the way format 1 stored field settings."""
    old = json.loads(json.dumps(payload["meta"]))
    old.pop("fields")
    old.update(meta)
    return {**payload, "format_version": 1, "meta": old}


def test_format_1_bundles_load_with_their_field_settings_in_one_place(tmp_path: Path) -> None:
    """Format 1 stored a fields model's boundary threshold twice and the tuning rule beside the
    settings; a cropland model stored none. The upgrader gives both the one FieldSettings."""
    payload = torch.load(tiny_bundle().save(tmp_path / "m.pt"), weights_only=True)
    tuned = {"threshold": 0.4, "boundary_threshold": 0.3, "min_area": 250.0, "grow": 2,
             "validation_object_f1": 0.8, "rule": "best validation object F1"}  # fmt: skip
    fields_model = _as_format_1(payload, boundary_threshold=0.3, fields=tuned)
    fields_model["meta"]["model"]["task"] = "fields"
    torch.save(fields_model, tmp_path / "fields.pt")
    with pytest.raises(RsSegError, match="weights do not fit"):  # tiny_bundle has one output
        ModelBundle.load(tmp_path / "fields.pt")
    meta = upgrade(fields_model["meta"], 1, tmp_path / "fields.pt")
    assert meta["fields"] == {"threshold": 0.4, "boundary_threshold": 0.3, "min_area": 250.0,
                              "grow": 2}  # fmt: skip
    assert "boundary_threshold" not in meta and meta["metrics"]["fields_rule"] == tuned["rule"]
    torch.save(_as_format_1(payload), tmp_path / "cropland.pt")
    cropland = ModelBundle.load(tmp_path / "cropland.pt")
    assert cropland.field_settings == FieldSettings(
        threshold=cropland.threshold, boundary_threshold=None, min_area=DEFAULT_MIN_AREA
    )


def test_bundle_is_written_atomically_and_never_overwritten_silently(tmp_path: Path) -> None:
    bundle = tiny_bundle()
    path = bundle.save(tmp_path / "m.pt")
    with pytest.raises(RsSegError, match="--overwrite"):
        bundle.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_newer_format_version_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tiny_bundle().save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(RsSegError, match=f"format version {FORMAT_VERSION + 1} is newer"):
        ModelBundle.load(path)


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_other_files_are_not_bundles(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(RsSegError, match=r"x.pt: not an rs_seg model bundle"):
        ModelBundle.load(path)


def test_a_lightning_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.6", "state_dict": {}}, path)
    with pytest.raises(RsSegError, match="a Lightning checkpoint"):
        ModelBundle.load(path)


def test_model_info_prints_what_inference_needs(tmp_path: Path) -> None:
    path = tiny_bundle().save(tmp_path / "m.pt")
    result = CliRunner().invoke(app, ["model", "info", str(path)])
    assert result.exit_code == 0, result.output
    for text in ("Unet / resnet18", "3:red, 2:green, 1:blue", "threshold     0.4700", "32 px"):
        assert text in result.output
    missing = CliRunner().invoke(app, ["model", "info", str(tmp_path / "none.pt")])
    assert missing.exit_code == 2 and "model bundle not found" in missing.output


@pytest.mark.slow
def test_trained_bundle_reproduces_evaluation_predictions_exactly(tiny_chips, tmp_path) -> None:
    from rs_seg.evaluate.run import train_and_evaluate
    from rs_seg.train.dataset import load_chip_splits
    from tests.helpers import train_config

    trained = train_and_evaluate(train_config(tiny_chips, tmp_path / "run", epochs=2))
    assert trained is not None
    outcome, evaluation = trained.training, trained.evaluation
    bundle = ModelBundle.load(evaluation.bundle)
    module = CroplandModule.load_from_checkpoint(outcome.best_checkpoint, load_weights=False)
    splits = load_chip_splits(tiny_chips)
    images, masks = splits.paths("test")
    dataset = ChipDataset(images, masks, bundle.bands, bundle.normalization)
    predictor = WindowPredictor(bundle, torch.device("cpu"), tta=False, precision="fp32")
    from_bundle = [b.levels for b in predict_levels(predictor, dataset)]
    net = module.net.eval()
    with torch.no_grad():
        from_checkpoint = [quantize(torch.sigmoid(net(images).float())[:, 0])
                           for images, _ in DataLoader(dataset, batch_size=16)]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(from_bundle, from_checkpoint, strict=True))
    assert bundle.threshold == evaluation.metrics["threshold"]
    assert bundle.provenance["chip_index_fingerprint"] == splits.fingerprint
    assert bundle.metrics["test"] == evaluation.metrics["test"]
    assert bundle.pixel_size == [10.0, 10.0] and bundle.crs == "EPSG:32633"


def _mismatched(tmp_path: Path, **meta) -> Path:
    """A bundle whose metadata says one model while its weights are tiny_bundle's resnet18."""
    bundle = tiny_bundle()
    for key, value in meta.items():
        setattr(bundle, key, value)
    return bundle.save(tmp_path / "m.pt")


def test_weights_of_another_encoder_are_refused_in_one_line(tmp_path: Path) -> None:
    path = _mismatched(tmp_path, model=ModelConfig(arch="Unet", encoder="resnet34"))
    with pytest.raises(RsSegError) as caught:
        ModelBundle.load(path)
    message = str(caught.value)
    assert message.startswith(
        f"{path}: the weights do not fit the model its metadata describes (Unet/resnet34, 3 "
        "input bands): "
    )
    assert "missing (encoder.layer1.2.conv1.weight" in message and "\n" not in message


def test_weights_for_other_bands_name_the_first_misfit_and_fail_build_too(tmp_path: Path) -> None:
    bands = {"bands": [1, 2, 3, 4], "band_names": ["b", "g", "r", "nir"]}
    normalization = Normalization((1.0, 2.0, 3.0, 4.0), (4.0, 5.0, 6.0, 7.0))
    path = _mismatched(tmp_path, **bands, normalization=normalization)
    shape = r"encoder.conv1.weight is \(64, 3, 7, 7\), the model needs \(64, 4, 7, 7\)"
    with pytest.raises(RsSegError, match=rf"\(Unet/resnet18, 4 input bands\): 1 tensors .*{shape}"):
        ModelBundle.load(path)
    in_memory = tiny_bundle()
    in_memory.bands, in_memory.band_names = bands["bands"], bands["band_names"]
    with pytest.raises(RsSegError, match=rf"^model bundle: the weights do not fit .*{shape}"):
        in_memory.build()


@pytest.mark.slow
def test_model_info_reports_mismatched_weights_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _mismatched(tmp_path, model=ModelConfig(arch="Unet", encoder="resnet34"))
    result = subprocess.run(
        [sys.executable, "-m", "rs_seg", "model", "info", str(path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}: the weights do not fit")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def saved_payload(tmp_path_factory) -> dict:
    """tiny_bundle as the file holds it, weights included (saved and read once)."""
    path = tiny_bundle().save(tmp_path_factory.mktemp("bundle") / "m.pt")
    return torch.load(path, weights_only=True)


def _edited(payload: dict, path: Path, edit: dict, drop: tuple[str, ...] = ()) -> Path:
    """The payload with metadata keys replaced (dotted keys reach into mappings) or dropped."""
    meta = json.loads(json.dumps(payload["meta"]))
    for key, value in edit.items():
        *parents, leaf = key.split(".")
        target = meta
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    for key in drop:
        *parents, leaf = key.split(".")
        target = meta
        for parent in parents:
            target = target[parent]
        del target[leaf]
    torch.save({**payload, "meta": meta}, path)
    return path


def _unweighted(payload: dict) -> dict:
    """Without its weights: metadata is refused before they are looked at (a small file)."""
    return {**payload, "state_dict": {}}


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ({"chip_size": 0}, "chip_size: Input should be greater than or equal to 8"),
        ({"chip_size": -64}, "chip_size"),
        ({"chip_size": 10**9}, "chip_size: Input should be less than or equal to 8192"),
        ({"chip_size": "64"}, "chip_size: Input should be a valid integer"),
        ({"threshold": NAN}, "threshold: Input should be a finite number"),
        ({"threshold": 5.0}, "threshold: Input should be less than or equal to 1"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": "0.5"}, "threshold: Input should be a valid number"),
        ({"fields.boundary_threshold": INF}, "fields.boundary_threshold"),
        ({"bands": [0, 1, 2]}, "bands.0: Input should be greater than or equal to 1"),
        ({"bands": [1, 1, 2]}, "bands [1, 1, 2] repeat a band"),
        ({"bands": [1, 2, 10**7]}, "bands.2: Input should be less than or equal to 65535"),
        ({"bands": []}, "bands: List should have at least 1 item"),
        ({"band_count": 2}, "bands [3, 2, 1] exceed band_count 2"),
        ({"band_names": ["red"]}, "3 bands but band_names has 1"),
        ({"normalization.mean": [1.0, 2.0]}, "normalization mean has 2"),
        ({"normalization.std": [4.0, 0.0, 6.0]}, "normalization.std.1: Input should be greater"),
        ({"normalization.std": [4.0, NAN, 6.0]}, "normalization.std.1"),
        ({"normalization.mean": [1.0, INF, 3.0]}, "normalization.mean.1"),
        ({"pixel_size": [0.0, 10.0]}, "pixel_size.0: Input should be greater than 0"),
        ({"pixel_size": [10.0]}, "pixel_size: List should have at least 2 items"),
        ({"classes": {"x": "crop"}}, "classes.x.[key]"),
        ({"provenance.model_id": "../../x"}, "provenance.model_id: String should match"),
        ({"provenance.model_id": "/home/user"}, "provenance.model_id"),
        ({"provenance.model_id": "."}, "provenance.model_id"),
        ({"provenance.versions": None}, "provenance.versions"),
        ({"metrics.test": [0.5]}, "metrics.test: Input should be a valid dictionary"),
        ({"model": "Unet"}, "model: Input should be a valid dictionary"),
        ({"model": {"encoder": "resnet18"}}, "model: missing arch"),
        ({"model.arch": None}, "model.arch: Input should be a valid string"),
        ({"model.bands": [1, 1]}, "repeat a band"),
        (
            {"fields": {"threshold": 2.0, "boundary_threshold": 0.5, "min_area": 0.0, "grow": 3}},
            "fields.threshold: Input should be less than 1",
        ),
        (
            {"fields": {"threshold": 0.5, "boundary_threshold": 0.5, "min_area": NAN, "grow": -1}},
            "fields.min_area: Input should be a finite number; fields.grow",
        ),
        ({"fields": {"threshold": 0.5}}, "fields: missing boundary_threshold, min_area, grow"),
        ({"fields.rule": "r"}, "fields.rule: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_edited_metadata_is_refused_in_one_line_naming_the_bundle(
    tmp_path: Path, saved_payload: dict, edit: dict, fragment: str
) -> None:
    """Values inference would size arrays, index bands or divide with are checked on load."""
    path = _edited(_unweighted(saved_payload), tmp_path / "m.pt", edit)
    with pytest.raises(RsSegError) as caught:
        ModelBundle.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid model bundle metadata (") and "\n" not in message
    assert fragment in message


@pytest.mark.parametrize(
    "key", ["model", "bands", "band_names", "normalization", "chip_size", "threshold",
            "normalization.std"],
)  # fmt: skip
def test_metadata_missing_a_key_is_refused_in_one_line(
    tmp_path: Path, saved_payload: dict, key: str
) -> None:
    path = _edited(_unweighted(saved_payload), tmp_path / "m.pt", {}, drop=(key,))
    with pytest.raises(RsSegError, match=rf"^{path}: invalid .*{key}: Field required"):
        ModelBundle.load(path)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"meta": [1, 2]}, "invalid model bundle metadata (not a mapping)"),
        ({"format_version": "1"}, "not an rs_seg model bundle (no format version)"),
        ({"state_dict": [1, 2]}, "the weights are not a state dict of named tensors"),
        ({"state_dict": {1: torch.zeros(1)}}, "the weights are not a state dict"),
    ],
)
def test_a_payload_of_the_wrong_shape_is_refused_in_one_line(
    tmp_path: Path, saved_payload: dict, payload: dict, fragment: str
) -> None:
    path = tmp_path / "m.pt"
    torch.save({**saved_payload, **payload}, path)
    with pytest.raises(RsSegError, match=rf"^{path}: {re.escape(fragment)}"):
        ModelBundle.load(path)


def test_metadata_at_the_edges_of_its_ranges_still_loads(tmp_path: Path, saved_payload) -> None:
    """What rs_seg writes, or could: bounds included, NaN nodata, unknown keys kept."""
    edit = {
        "threshold": 1, "chip_size": 8, "bands": [3, 2, 1], "band_count": 3,
        "nodata": NAN, "pixel_size": [10, 0.5], "newer_key": {"kept": True},
        "fields": {"threshold": 0.001, "boundary_threshold": 0.999, "min_area": 0.0, "grow": 0},
    }  # fmt: skip
    loaded = ModelBundle.load(_edited(saved_payload, tmp_path / "m.pt", edit))
    assert (loaded.threshold, loaded.chip_size, loaded.pixel_size) == (1.0, 8, [10.0, 0.5])
    assert loaded.field_settings.threshold == 0.001 and loaded.field_settings.grow == 0
    assert "fields        extent 0.001, boundary 1.00" in loaded.describe()
