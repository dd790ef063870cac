"""The ``train-cropland`` flow end to end in ephemeral Prefect mode, on one tiny scene."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rs_seg.config import PrepareConfig, SplitConfig, TrainConfig
from tests.helpers import ROOT, ephemeral_prefect_env, pixel_box, write_labels, write_scene

# Two flow runs in one process (one ephemeral server start), then the artifacts they left.
FLOW_SCRIPT = """
import json, sys
from pathlib import Path
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from rs_seg.config import PrepareConfig, TrainConfig
from flows.train_cropland import ARTIFACT_KEY, train_cropland
train = TrainConfig.model_validate_json(sys.argv[1])
prepare = PrepareConfig.model_validate_json(sys.argv[2])
models = Path(sys.argv[3])
results = [train_cropland(train, prepare, models), train_cropland(train, prepare, models)]
with get_client(sync_client=True) as client:
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
    )
print("RESULT " + json.dumps({"runs": results, "artifacts": [a.data for a in found]}))
"""


def configs(tmp_path: Path) -> tuple[TrainConfig, PrepareConfig]:
    """25 chips of 32 px, one block each, so validation and test hold a few chips each."""
    scene = write_scene(tmp_path / "scenes" / "a.tif", 160, 160)
    fields = [pixel_box(8, 8, 70, 90), pixel_box(90, 0, 150, 50), pixel_box(100, 100, 160, 160)]
    prepare = PrepareConfig(
        scenes=[str(scene)],
        labels=write_labels(tmp_path / "fields.gpkg", fields),
        out=tmp_path / "chips",
        chip_size=32,
        split=SplitConfig(block_chips=1),
    )
    train = TrainConfig(
        chips=tmp_path / "unused",
        out=tmp_path / "runs" / "cropland",
        model={"encoder": "resnet18"},
        epochs=1,
        batch_size=4,
        num_workers=0,
        accelerator="cpu",
    )
    return train, prepare


@pytest.mark.slow
def test_flow_prepares_trains_registers_and_skips_fresh_chips(tmp_path) -> None:
    train, prepare = configs(tmp_path)
    models = tmp_path / "models"
    env = ephemeral_prefect_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT, train.model_dump_json(), prepare.model_dump_json(),
         str(models)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout.split("RESULT ", 1)[1])
    first, second = output["runs"]

    assert first["run"] == str(train.out)
    assert first["promoted"] and first["reason"] == "first registered model"
    assert first["bundle"] == str(models / first["model_id"] / "model-bundle.pt")
    assert Path(first["bundle"]).is_file() and (models / first["model_id"] / "report").is_dir()
    latest = json.loads((models / "latest.json").read_text())
    assert latest["model_id"] == first["model_id"]
    assert 0 <= first["metrics"]["mean_iou"] <= 1 and first["metrics"]["chips"] >= 2

    assert "preparing chips" in done.stderr and "up to date; preparation skipped" in done.stderr
    assert done.stderr.count("preparing chips into") == 1, "the second run reuses the chips"
    stamp = Path(second["run"]).name.removeprefix("cropland-")
    assert Path(second["run"]).parent == train.out.parent and len(stamp) == len("20260101T000000")
    assert dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S")
    assert second["model_id"] == first["model_id"], "same seed and chips: the same weights"
    assert not second["promoted"] and second["reason"] == "already the latest model"

    assert len(output["artifacts"]) == 2
    report = output["artifacts"][-1]
    assert f"Cropland model `{first['model_id']}`" in report and "mean IoU" in report
    assert "latest: **" in report and "threshold" in report
    decisions = (models / "registry.jsonl").read_text().splitlines()
    assert [json.loads(d)["promoted"] for d in decisions] == [True, False]


def test_a_taken_run_folder_gets_a_timestamped_sibling(tmp_path) -> None:
    from flows.train_cropland import run_folder

    train = TrainConfig(out=tmp_path / "cropland")
    assert run_folder(train, resume=False) is train, "a free folder is used as given"
    train.out.mkdir()
    now = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
    moved = run_folder(train, resume=False, now=now)
    assert moved.out == tmp_path / "cropland-20261121T120000"
    moved.out.mkdir()
    assert run_folder(train, False, now).out == tmp_path / "cropland-20261121T120000-2"
    assert run_folder(train, resume=True, now=now).out == train.out, "resume continues in place"
    replace = train.model_copy(update={"overwrite": True})
    assert run_folder(replace, False, now).out == train.out, "overwrite replaces, as in the CLI"


def test_the_flow_form_is_typed_by_the_shared_configs() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.train_cropland import train_cropland

    schema = parameter_schema(train_cropland.fn)
    assert list(schema.properties) == [
        "train", "prepare", "models_dir", "promote", "resume", "synth"
    ]  # fmt: skip
    assert schema.required == ["train"]
    assert schema.properties["promote"]["enum"] == ["if_better", "always", "never"]
    assert {"TrainConfig", "PrepareConfig", "SynthConfig"} <= set(schema.definitions)
