"""Model bundles: a round trip reproduces predictions exactly; foreign files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rs_seg.bundle import FORMAT_VERSION, ModelBundle
from rs_seg.cli import app
from rs_seg.config import ModelConfig
from rs_seg.errors import RsSegError
from rs_seg.train.dataset import ChipDataset, Normalization
from rs_seg.train.evaluation import predict_levels
from rs_seg.train.models import build_model
from rs_seg.train.module import CroplandModule
from tests.helpers import ROOT


def tiny_bundle() -> ModelBundle:
    model = ModelConfig(arch="Unet", encoder="resnet18")
    net = build_model(model, in_channels=3)
    return ModelBundle(
        model=model.model_dump(mode="json"),
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
    from rs_seg.train.dataset import load_chip_splits
    from rs_seg.train.evaluation import evaluate_run
    from rs_seg.train.fit import train
    from tests.helpers import train_config

    outcome = train(train_config(tiny_chips, tmp_path / "run", epochs=2))
    evaluation = evaluate_run(outcome.run, outcome.best_checkpoint)
    bundle = ModelBundle.load(evaluation.bundle)
    module = CroplandModule.load_from_checkpoint(outcome.best_checkpoint, load_weights=False)
    splits = load_chip_splits(tiny_chips)
    images, masks = splits.paths("test")
    dataset = ChipDataset(images, masks, bundle.bands, bundle.normalization)
    device = torch.device("cpu")
    from_bundle = [b.levels for b in predict_levels(bundle.build(), dataset, device)]
    from_checkpoint = [b.levels for b in predict_levels(module.net, dataset, device)]
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
    path = _mismatched(tmp_path, model=ModelConfig(arch="Unet", encoder="resnet34").model_dump())
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

    path = _mismatched(tmp_path, model=ModelConfig(arch="Unet", encoder="resnet34").model_dump())
    result = subprocess.run(
        [sys.executable, "-m", "rs_seg", "model", "info", str(path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}: the weights do not fit")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""
