"""Training on CPU with a tiny model and 32 px chips: fit, resume, repeatability, DDP, bad input."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyogrio
import pytest
import torch
import yaml

from rs_seg.config import LossConfig, TrainConfig
from rs_seg.errors import RsSegError
from rs_seg.evaluate.evaluation import BOUNDARY_CANDIDATES, MIN_AREA_CANDIDATES
from rs_seg.model.bundle import ModelBundle
from rs_seg.run_folder import read_status, write_status
from rs_seg.train.fit import check_resumable, train, with_task
from rs_seg.train.module import CroplandModule, lr_factor, task_loss
from tests.helpers import ROOT, train_config


@pytest.fixture
def trained(trained_tiny_run):
    """The shared real fit + evaluation (see conftest)."""
    return trained_tiny_run


@pytest.mark.parametrize("outputs", [1, 2])
def test_loss_ignores_pixels_marked_255(outputs: int) -> None:
    """Extent and (fields task) boundary: ignored pixels add nothing to loss or gradient."""
    target = torch.randint(0, 3, (2, 16, 16), dtype=torch.uint8)
    target[:, :, :6] = 255
    logits = torch.randn(2, outputs, 16, 16, requires_grad=True)
    loss = task_loss(logits, target, LossConfig())
    loss.backward()
    assert torch.all(logits.grad[..., :6] == 0), "ignored pixels get no gradient"
    assert torch.all(logits.grad[..., 6:].flatten(2).abs().sum(-1) > 0), "every output learns"
    changed = logits.detach().clone()
    changed[..., :6] = torch.randn(2, outputs, 16, 6) * 100
    assert task_loss(changed, target, LossConfig()) == pytest.approx(loss.item())


def test_loss_of_all_ignore_batch_is_zero_not_nan() -> None:
    target = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    loss = task_loss(torch.randn(1, 2, 8, 8), target, LossConfig(dice_weight=0))
    assert float(loss) == 0.0


def test_a_boundary_is_cropland_for_the_extent_and_positive_for_the_boundary() -> None:
    target = torch.tensor([[[0, 1, 2, 2]]], dtype=torch.uint8)
    right = torch.tensor([[[[-9.0, 9.0, 9.0, 9.0]], [[-9.0, -9.0, 9.0, 9.0]]]])
    cfg = LossConfig(dice_weight=0)
    assert float(task_loss(right, target, cfg)) < 1e-3
    wrong_extent = right.clone()
    wrong_extent[0, 0, 0, 2] = -9.0  # a boundary pixel called background
    assert float(task_loss(wrong_extent, target, cfg)) > 1.0
    weighted = task_loss(-right, target, LossConfig(dice_weight=0, boundary_pos_weight=8.0))
    assert float(weighted) > float(task_loss(-right, target, cfg)), "boundary pixels weigh more"


def test_schedule_warms_up_then_decays_and_freezes() -> None:
    factors = [lr_factor(s, warmup=10, total=100, min_ratio=0.01) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.01, abs=1e-3)
    assert lr_factor(5, warmup=10, total=100, min_ratio=0.01, frozen=20) == 0.0


@pytest.mark.slow
def test_short_fit_learns_and_writes_a_complete_run(trained) -> None:
    outcome, evaluation = trained
    history = json.loads((outcome.run / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    test = evaluation.metrics["test"]
    assert test["cropland_iou"] > 0.8 and test["background_iou"] > 0.8
    assert 0 < evaluation.metrics["threshold"] < 1
    for name in ("model-bundle.pt", "metrics.json", "train.yaml", "normalization.json"):
        assert (outcome.run / name).exists(), name
    for name in ("README.md", "loss_iou.png", "chip_iou.png", "worst_chips.png", "best_chips.png"):
        assert (outcome.run / "report" / name).exists(), name
    assert json.loads((outcome.run / "run.json").read_text())["status"] == "evaluated"
    assert (outcome.run / "checkpoints" / "best.ckpt").exists()
    assert not (outcome.run / "chip-cache").exists(), "the decoded chips go when training ends"


def test_chips_with_field_boundaries_train_the_fields_task(trained) -> None:
    """The tiny chips come from vector labels: extent and boundary outputs, recorded once."""
    outcome, evaluation = trained
    bundle = ModelBundle.load(evaluation.bundle)
    assert (bundle.task, bundle.outputs) == ("fields", 2)
    assert (
        yaml.safe_load((outcome.run / "train.yaml").read_text())["train"]["model"]["task"]
        == "fields"
    )
    assert bundle.build()(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    fields = evaluation.metrics["test"]["objects"]
    assert fields["fields_labelled"] > 0 and 0 <= fields["object_f1"] <= 1
    assert "| object F1 |" in (evaluation.report / "README.md").read_text()
    assert "object F1" in evaluation.summary()
    tuned = evaluation.metrics["fields"]
    assert tuned["boundary_threshold"] in BOUNDARY_CANDIDATES
    assert bundle.fields is not None and bundle.fields.model_dump() == tuned
    assert bundle.fields.min_area in MIN_AREA_CANDIDATES
    assert (evaluation.report / "test_scenes" / "scene-01.gpkg").is_file()
    assert "fields        extent" in bundle.describe()
    # fields on whole test scenes: table, figure and metrics
    scenes = evaluation.metrics["test_scenes"]
    assert scenes and all(0 <= m["object_f1"] <= 1 for m in scenes.values())
    assert (evaluation.report / "fields_scenes.png").stat().st_size > 5000
    report = (evaluation.report / "README.md").read_text()
    assert "## Fields on whole test scenes" in report and "fields_scenes.png" in report


def test_the_task_follows_the_chips_unless_given(tiny_chips: Path, tmp_path: Path) -> None:
    fields = with_task(train_config(tiny_chips, tmp_path / "a"))
    assert fields.model.task == "fields"
    given = train_config(
        tiny_chips, tmp_path / "b", model={"encoder": "resnet18", "task": "cropland"}
    )
    assert with_task(given).model.task == "cropland", "a cropland model on field chips"
    binary = tmp_path / "binary"
    shutil.copytree(tiny_chips, binary)
    summary = json.loads((binary / "summary.json").read_text())
    (binary / "summary.json").write_text(json.dumps({**summary, "target": "cropland"}))
    assert with_task(train_config(binary, tmp_path / "c")).model.task == "cropland"
    wanted = train_config(binary, tmp_path / "e", model={"encoder": "resnet18", "task": "fields"})
    with pytest.raises(RsSegError, match="needs chips with field boundaries"):
        with_task(wanted)
    (binary / "summary.json").write_text(json.dumps({**summary, "target": None}))
    with pytest.raises(RsSegError, match="records no mask target"):
        with_task(train_config(binary, tmp_path / "d"))


@pytest.mark.slow
def test_same_seed_same_run_on_cpu(tiny_chips: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        outcome = train(train_config(tiny_chips, tmp_path / name, epochs=2))
        runs.append(json.loads((outcome.run / "history.json").read_text()))
    for a, b in zip(*runs, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_iou"] == b["val_iou"]
    weights = [torch.load(tmp_path / n / "checkpoints" / "last.ckpt")["state_dict"] for n in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _adam_steps(checkpoint: Path) -> int:
    state = torch.load(checkpoint, weights_only=False)["optimizer_states"][0]["state"]
    return int(next(iter(state.values()))["step"])


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch_with_optimizer_state(
    tiny_chips: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train(train_config(tiny_chips, out, epochs=2, early_stopping_patience=0))
    first = json.loads((out / "history.json").read_text())
    steps_per_epoch = _adam_steps(out / "checkpoints" / "last.ckpt") // 2
    outcome = train(train_config(tiny_chips, out, epochs=3, early_stopping_patience=0), resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:2] == first, "earlier epochs are kept, not re-run"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    assert _adam_steps(out / "checkpoints" / "last.ckpt") == 3 * steps_per_epoch
    assert outcome.epochs_run == 3


@pytest.mark.slow
def test_resume_refuses_a_run_with_other_settings(tiny_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(train_config(tiny_chips, out, epochs=1))
    other = train_config(tiny_chips, out, epochs=2, model={"arch": "FPN", "encoder": "resnet18"})
    with pytest.raises(RsSegError, match=r"other settings.*model.arch 'Unet' -> 'FPN'"):
        train(other, resume=True)


def test_resume_without_a_run_says_so(tiny_chips: Path, tmp_path: Path) -> None:
    with pytest.raises(RsSegError, match="nothing to resume"):
        train(train_config(tiny_chips, tmp_path / "missing"), resume=True)


def test_existing_run_needs_overwrite(tiny_chips: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.yaml").write_text("train: {}\n")
    with pytest.raises(RsSegError, match="--overwrite"):
        train(train_config(tiny_chips, tmp_path / "run"))


_DDP_SCRIPT = """
import json, sys
import rs_seg
from rs_seg.config import TrainConfig
from rs_seg.evaluate.run import train_and_evaluate
trained = train_and_evaluate(TrainConfig.model_validate_json(sys.argv[1]))
if trained is not None:
    print(json.dumps({"epochs": trained.training.epochs_run,
                      "chips": trained.evaluation.metrics["test"]["chips"]}))
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu_completes(tiny_chips: Path, tmp_path: Path) -> None:
    # In a fresh process: ddp_fork forks its caller, and forking pytest after hundreds of tests
    # (threads of in-process flows among them) can deadlock the ranks in their first collective.
    import subprocess
    import sys

    cfg = train_config(tiny_chips, tmp_path / "ddp", epochs=2, devices=2, strategy="ddp_fork")
    done = subprocess.run([sys.executable, "-c", _DDP_SCRIPT, cfg.model_dump_json()],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"epochs": 2, "chips": 3}


def _copy_chips(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_index(chips: Path, edit) -> None:
    path = chips / "index.gpkg"
    frame = pyogrio.read_dataframe(path, layer="chips")
    edit(frame)
    pyogrio.write_dataframe(frame, path, layer="chips")


def test_chips_with_different_band_counts_are_refused(tiny_chips: Path, tmp_path: Path) -> None:
    chips = _copy_chips(tiny_chips, tmp_path / "chips")

    def other_bands(frame: pd.DataFrame) -> None:
        frame.loc[frame.index[:5], "bands"] = 4
        frame.loc[frame.index[:5], "scene"] = "other"

    _edit_index(chips, other_bands)
    with pytest.raises(RsSegError, match=r"different band counts \(3 bands: scene; 4 bands: other"):
        train(train_config(chips, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_an_empty_split_is_refused(tiny_chips: Path, tmp_path: Path) -> None:
    chips = _copy_chips(tiny_chips, tmp_path / "chips")
    _edit_index(chips, lambda f: f.__setitem__("split", f["split"].replace("test", "train")))
    with pytest.raises(RsSegError, match="the test split is empty"):
        train(train_config(chips, tmp_path / "run"))


def test_all_ignore_chips_are_refused(tiny_chips: Path, tmp_path: Path) -> None:
    chips = _copy_chips(tiny_chips, tmp_path / "chips")

    def no_labels(frame: pd.DataFrame) -> None:
        frame.loc[frame["split"] == "val", "labelled_px"] = 0

    _edit_index(chips, no_labels)
    with pytest.raises(RsSegError, match=r"every val chip is all ignore \(255\)"):
        train(train_config(chips, tmp_path / "run"))


def test_missing_bands_are_refused(tiny_chips: Path, tmp_path: Path) -> None:
    cfg = train_config(tiny_chips, tmp_path / "run", model={"encoder": "resnet18", "bands": [1, 4]})
    with pytest.raises(RsSegError, match=r"bands \[4\] do not exist: chips have 3 bands"):
        train(cfg)


def test_out_of_memory_gives_a_hint_and_leaves_no_run(
    tiny_chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CroplandModule, "training_step", exhausted)
    with pytest.raises(RsSegError, match="out of memory at batch_size 8; try --batch-size 4"):
        train(train_config(tiny_chips, tmp_path / "run"))
    assert not (tmp_path / "run").exists(), "a run without any checkpoint is removed"


def test_run_folder_records_config_and_train_statistics(
    tiny_chips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Normalization is computed before training starts, from train chips only."""
    from rs_seg.train.dataset import band_statistics, load_chip_splits

    seen = {}

    def stop(*_args, **_kwargs):
        run = tmp_path / "run"
        seen["config"] = yaml.safe_load((run / "train.yaml").read_text())
        seen["stats"] = json.loads((run / "normalization.json").read_text())
        raise RuntimeError("stop here")

    monkeypatch.setattr(CroplandModule, "training_step", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        train(train_config(tiny_chips, tmp_path / "run"))
    splits = load_chip_splits(tiny_chips)
    expected = band_statistics(splits.paths("train")[0], [1, 2, 3])
    assert seen["stats"]["mean"] == pytest.approx(list(expected.mean))
    assert seen["config"]["train"]["model"]["encoder"] == "resnet18"


def test_cli_reports_bad_training_input_in_one_line(tiny_chips: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rs_seg.cli import app

    runner = CliRunner()
    out = str(tmp_path / "run")
    result = runner.invoke(
        app, ["train", "--chips", str(tiny_chips), "--out", out, "--arch", "Unett"]
    )
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown architecture 'Unett' (did you mean 'Unet'?)")
    assert "DeepLabV3Plus" in result.output and len(result.output.splitlines()) == 1
    result = runner.invoke(app, ["train", "--chips", str(tmp_path), "--out", out])
    assert result.exit_code == 2 and "no chip index (index.gpkg)" in result.output
    assert not (tmp_path / "run").exists()


def test_precision_is_chosen_for_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from rs_seg.train.fit import resolve_hardware

    cpu = resolve_hardware(TrainConfig(accelerator="auto"))
    if not torch.cuda.is_available():
        assert (cpu.accelerator, cpu.precision) == ("cpu", "32-true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_hardware(TrainConfig()).precision == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_hardware(TrainConfig()).precision == "16-mixed"
    asked = resolve_hardware(TrainConfig(accelerator="cpu", precision="bf16-mixed"))
    assert asked.precision == "bf16-mixed", "an explicit choice is kept"


@pytest.mark.slow
def test_frozen_encoder_epochs_leave_the_encoder_untouched(tiny_chips: Path, tmp_path: Path):
    from rs_seg.config import ModelConfig
    from rs_seg.model.networks import build_model

    torch.manual_seed(0)
    cfg = train_config(
        tiny_chips, tmp_path / "run", epochs=1,
        optimizer={"lr": 3e-3, "freeze_encoder_epochs": 1, "warmup_epochs": 0},
    )  # fmt: skip
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    import lightning as L

    L.seed_everything(cfg.seed, verbose=False)
    initial = build_model(ModelConfig(encoder="resnet18"), 3).state_dict()
    encoder = [k for k in initial if k.startswith("encoder.")]
    decoder = [k for k in initial if k.startswith("decoder.") and initial[k].is_floating_point()]
    assert all(torch.equal(state[f"net.{k}"], initial[k]) for k in encoder)
    assert not all(torch.equal(state[f"net.{k}"], initial[k]) for k in decoder)


@pytest.mark.parametrize(
    ("env", "child"),
    [
        ({}, False),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "RANK": "0"}, False),
        ({"LOCAL_RANK": "1"}, True),  # Lightning's launcher, second GPU
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, True),  # Lightning, second node
        ({"LOCAL_RANK": "0", "RANK": "4", "GROUP_RANK": "1"}, True),  # torchrun, second node
        ({"SLURM_PROCID": "3"}, True),  # srun
        ({"SLURM_PROCID": "0"}, False),
    ],
)
def test_only_global_rank_zero_sets_up_and_evaluates(monkeypatch, env, child) -> None:
    from rs_seg.train.fit import is_ddp_child

    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_ddp_child() is child


# A training run that stalls at the start of epoch ``kill_at`` (every earlier epoch is in
# last.ckpt) and says so with a marker file, for the parent to SIGKILL it there.
STALLING_RUN = """
import sys, time
from pathlib import Path
import tests.helpers  # offline settings, torchvision shim
from rs_seg.train.fit import train
from rs_seg.train.module import CroplandModule
from tests.helpers import train_config
chips, out, marker = (Path(a) for a in sys.argv[1:4])
kill_at, epochs, workers = (int(a) for a in sys.argv[4:7])
start = CroplandModule.on_train_epoch_start
def stall(self):
    if self.current_epoch == kill_at:
        marker.write_text(str(self.current_epoch))
        time.sleep(600)
    start(self)
CroplandModule.on_train_epoch_start = stall
train(train_config(chips, out, epochs=epochs, num_workers=workers))
"""


# The same run in a fresh process: torch's thread count and global state in the pytest process
# depend on the tests before, and bit-identity holds for one thread count.
TRAIN_RUN = """
import sys
from pathlib import Path
import tests.helpers  # offline settings, torchvision shim
from rs_seg.train.fit import train
from tests.helpers import train_config
chips, out = (Path(a) for a in sys.argv[1:3])
epochs, workers, resume = (int(a) for a in sys.argv[3:6])
train(train_config(chips, out, epochs=epochs, num_workers=workers), resume=bool(resume))
"""


def _child_env() -> dict[str, str]:
    """One compute thread, fixed: identity holds for one thread count, and MKL (dynamic by
    default) may pick fewer threads for a call when the machine is busy."""
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}
    return {**os.environ, **threads, "PYTHONPATH": str(ROOT)}


def _train_in_child(chips: Path, out: Path, epochs: int, workers: int, resume: bool) -> None:
    args = [chips, out, epochs, workers, int(resume)]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_RUN, *map(str, args)], cwd=ROOT,
        env=_child_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _wait_for(condition, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical_to_an_uninterrupted_run(
    tiny_chips: Path, tmp_path: Path
) -> None:
    """Kill -9 after epoch 1 of 2, resume (with a loader worker this time): same weights, same
    losses as one uninterrupted run without workers. Also: run.json of the live run, and of the
    killed one, as read_status reports them."""
    epochs = 2
    _train_in_child(tiny_chips, tmp_path / "full", epochs, workers=0, resume=False)
    out, marker = tmp_path / "killed", tmp_path / "stalled"
    args = [tiny_chips, out, marker, 1, epochs, 1]
    child = subprocess.Popen(
        [sys.executable, "-c", STALLING_RUN, *map(str, args)], cwd=ROOT,
        env=_child_env(),
    )  # fmt: skip
    try:
        _wait_for(lambda: marker.exists() or child.poll() is not None, "epoch 1 to end")
        assert child.poll() is None, "the stalling run ended by itself"
        live = read_status(out)
        assert (live["status"], live["pid"], live["host"]) == (
            "running",
            child.pid,
            socket.gethostname(),
        )
        with pytest.raises(RsSegError, match=rf"still training \(pid {child.pid}\)"):
            train(train_config(tiny_chips, out, epochs=epochs), resume=True)
        os.kill(child.pid, signal.SIGKILL)
        # Not reaped yet (a zombie): already gone as far as read_status is concerned.
        _wait_for(lambda: read_status(out)["status"] == "interrupted", "the kill")
    finally:
        child.kill()
        child.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running", "kill -9: no trace"
    status = read_status(out)
    assert status["status"] == "interrupted" and status["resumable"] is True
    assert f"pid {child.pid}" in status["error"]
    assert (out / "chip-cache" / "train" / "key.json").exists(), "trained from decoded chips"
    _train_in_child(tiny_chips, out, epochs, workers=1, resume=True)
    assert not (out / "chip-cache").exists()

    keys = ("epoch", "train_loss", "val_loss", "val_iou", "val_mean_iou", "lr")
    rows = [json.loads((tmp_path / n / "history.json").read_text()) for n in ("full", "killed")]
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
    ckpts = [
        torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False)
        for n in ("full", "killed")
    ]
    # last.ckpt is the final epoch whichever epoch scored best (which one does varies by CPU).
    assert [(c["epoch"], c["global_step"]) for c in ckpts] == [(epochs - 1, epochs * 4)] * 2
    weights = [c["state_dict"] for c in ckpts]
    assert weights[0].keys() == weights[1].keys()
    differ = {
        k: float((weights[0][k].double() - weights[1][k].double()).abs().max())
        for k in weights[0]
        if not torch.equal(weights[0][k], weights[1][k])
    }
    some = dict(list(differ.items())[:4])
    assert not differ, f"{len(differ)} of {len(weights[0])} tensors differ, e.g. {some}"
    moments = [c["optimizer_states"][0]["state"] for c in ckpts]
    assert all(torch.equal(moments[0][i]["exp_avg"], moments[1][i]["exp_avg"]) for i in moments[0])
    assert read_status(out)["status"] == "trained"


def _fake_run(tmp_path: Path) -> tuple[Path, TrainConfig, Path]:
    """A run folder with a small but real torch zip checkpoint holding Lightning's keys."""
    from rs_seg.train.fit import _resume_key

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = train_config(tmp_path / "chips", run)
    document = {"train": {}, "resume_key": _resume_key(cfg, "fingerprint")}
    (run / "train.yaml").write_text(yaml.safe_dump(document))
    last = run / "checkpoints" / "last.ckpt"
    state = {"w": torch.arange(4096, dtype=torch.float32)}
    torch.save({"state_dict": state, "optimizer_states": [], "epoch": 0, "loops": {}}, last)
    return run, cfg, last


def test_a_truncated_or_damaged_checkpoint_is_not_resumable(tmp_path: Path) -> None:
    run, cfg, last = _fake_run(tmp_path)
    assert check_resumable(run, cfg, "fingerprint") == last
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RsSegError) as caught:
        check_resumable(run, cfg, "fingerprint")
    assert str(caught.value).startswith(
        f"{last}: cannot resume: the checkpoint is incomplete or damaged ("
    )
    assert "start the run again with --overwrite" in str(caught.value)
    assert "\n" not in str(caught.value)
    flipped = bytearray(whole)
    flipped[whole.index(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[400:432])] ^= 1
    last.write_bytes(bytes(flipped))
    with pytest.raises(RsSegError, match=r"checkpoint is damaged \(CRC error in .*data/0\)"):
        check_resumable(run, cfg, "fingerprint")
    torch.save({"state_dict": {}}, last)
    with pytest.raises(RsSegError, match="missing optimizer_states, epoch, loops"):
        check_resumable(run, cfg, "fingerprint")


def test_read_status_tells_a_killed_run_from_a_live_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert read_status(run) == {}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_status(run, "running", pid=child.pid)
        status = read_status(run)
        assert (status["status"], status["host"]) == ("running", socket.gethostname())
        assert isinstance(status["process_started"], float)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
        child.wait()
    status = read_status(run)
    assert status["status"] == "interrupted" and status["resumable"] is False
    assert json.loads((run / "run.json").read_text())["status"] == "running", "only read"


def test_read_status_tells_a_reused_pid_and_cannot_judge_other_hosts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_status(run, "failed", error="RuntimeError: boom", resumable=True)
    write_status(run, "running", pid=os.getpid())
    data = json.loads((run / "run.json").read_text())
    assert "error" not in data and "resumable" not in data, "a new attempt drops the old error"
    assert read_status(run)["status"] == "running"
    (run / "run.json").write_text(json.dumps({**data, "process_started": 1000.0}))
    assert read_status(run)["status"] == "interrupted", (
        "same pid, other process: the pid was reused"
    )
    (run / "run.json").write_text(json.dumps({**data, "host": "elsewhere", "pid": 2**22 + 1}))
    assert read_status(run)["status"] == "running", "another host's process cannot be checked"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_start_time_from_proc_matches_psutil() -> None:
    from rs_seg.run_folder import _proc_start_time, process_start_time

    assert _proc_start_time(os.getpid()) == pytest.approx(process_start_time(os.getpid()), abs=1)
    assert process_start_time(2**22 + 1) is None and _proc_start_time(2**22 + 1) is None


def _damage_strip(path: Path) -> None:
    """Overwrite the frame header of the chip's compressed data: same size, unreadable data."""
    import rasterio

    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_cli_train_reports_damaged_chips_in_one_line(tiny_chips: Path, tmp_path: Path) -> None:
    """Up front for a truncated chip; from inside a loader worker (validation of epoch 1) for a
    damaged one that the cheap check cannot see."""
    from rs_seg.train.dataset import load_chip_splits

    chips = _copy_chips(tiny_chips, tmp_path / "chips")
    images, _ = load_chip_splits(chips, check_files=False).paths("train")
    settings = {
        "model": {"arch": "Unet", "encoder": "resnet18"}, "epochs": 1, "batch_size": 8,
        "accelerator": "cpu", "num_workers": 1,
    }  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"train": settings}))
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "rs_seg", "train", "--chips", str(chips), "--out", str(out),
        "--config", str(tmp_path / "train.yaml"),
    ]  # fmt: skip

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
        )

    truncated = Path(images[0])
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    result = run()
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {truncated}: chip is truncated (")
    assert len(result.stderr.splitlines()) == 1 and not out.exists()

    truncated.write_bytes(whole)
    damaged = Path(load_chip_splits(chips).paths("val")[0][0])  # read by a worker after epoch 1
    _damage_strip(damaged)
    result = run()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith(f"error: {damaged}: chip cannot be read (ZSTDDecode"), lines[-1]
    assert "Traceback" not in result.stderr
    assert [line for line in lines if line.startswith("error")] == lines[-1:]
    assert not out.exists(), "no checkpoint yet: nothing is left behind"


def test_an_interrupt_before_the_first_batch_is_an_interrupt(
    tiny_chips: Path, tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C while the loaders start (their workers are spawning): Lightning's teardown then
    fails on a loader never iterated, and the command must still see the interrupt (exit 130);
    the new run's folder, without a checkpoint, is gone."""
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(CombinedLoader, "__iter__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(train_config(tiny_chips, tmp_path / "run", epochs=1))
    assert not (tmp_path / "run").exists(), "nothing of a run without a checkpoint is kept"
