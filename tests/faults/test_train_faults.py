"""Fault injection on ``rs-seg train``: a new run replaces a good one only once it has succeeded."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs_seg.run_folder import replacement_folder
from tests.helpers import (
    assert_one_line_error,
    digest,
    hidden_leftovers,
    rs_seg,
    signal_when_ready,
    small_disk,
)

CONFIG = """
train:
  model: {arch: Unet, encoder: resnet18}
  epochs: 2
  batch_size: 8
  num_workers: 0
  accelerator: cpu
"""


@pytest.fixture
def work(tmp_path: Path, tiny_chips: Path, trained_tiny_run) -> Path:
    """The chips, a good evaluated run in runs/good, and a user's file beside it."""
    _, evaluation = trained_tiny_run
    shutil.copytree(evaluation.run, tmp_path / "runs" / "good")
    (tmp_path / "train.yaml").write_text(CONFIG)
    (tmp_path / "runs" / "notes.txt").write_text("the user's own file")
    return tmp_path


def train_args(root: Path, chips: Path, *extra: str) -> list[str]:
    return ["train", "--chips", str(chips), "--out", "runs/good", "--config", "train.yaml",
            *extra]  # fmt: skip


def test_sigkill_mid_training_keeps_the_good_run_and_resume_finishes(
    work: Path, tiny_chips: Path
) -> None:
    good = work / "runs" / "good"
    before, notes = digest(good), digest(work / "runs" / "notes.txt")
    child = subprocess.Popen(
        [sys.executable, "-m", "rs_seg", *train_args(work, tiny_chips, "--overwrite")],
        cwd=work, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(replacement_folder(good) / "checkpoints" / "last.ckpt", child)
    child.kill()
    child.wait(timeout=60)
    assert digest(good) == before, "the good run is byte-identical after the kill"
    status = json.loads((replacement_folder(good) / "run.json").read_text())
    assert status["status"] == "running"  # what the killed process last wrote
    resumed = rs_seg(*train_args(work, tiny_chips, "--resume"), cwd=work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert digest(good) != before and json.loads((good / "run.json").read_text())["status"] == (
        "evaluated"
    )
    assert json.loads((good / "metrics.json").read_text())["model_id"]
    assert hidden_leftovers(work / "runs") == [] and not replacement_folder(good).exists()
    assert digest(work / "runs" / "notes.txt") == notes


def test_sigkill_while_the_new_run_takes_the_place(work: Path, tiny_chips: Path) -> None:
    good = work / "runs" / "good"
    killed = rs_seg(*train_args(work, tiny_chips, "--overwrite"), cwd=work,
                    env={"RS_SEG_KILL_AT": "swapped"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    status = json.loads((good / "run.json").read_text())
    assert status["status"] == "evaluated" and status["epochs_run"] == 2, "the new run, whole"
    assert (good / "model-bundle.pt").is_file() and (good / "report" / "README.md").is_file()
    assert replacement_folder(good).is_dir(), "the old run waits where the new one trained"
    again = rs_seg(*train_args(work, tiny_chips, "--overwrite", "--epochs", "1"), cwd=work)
    assert again.returncode == 0, again.stderr[-3000:]
    assert hidden_leftovers(work / "runs") == []


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_during_training_keeps_the_good_run(work: Path, tiny_chips: Path, name) -> None:
    good = work / "runs" / "good"
    before = digest(good)
    started = (replacement_folder(good) / "run.json").exists
    stopped = signal_when_ready(train_args(work, tiny_chips, "--overwrite"), work, started,
                                getattr(signal, name))  # fmt: skip
    assert stopped is not None, "training ended before the signal"
    stderr = stopped.stderr
    assert stopped.returncode == (130 if name == "SIGINT" else 143), stderr[-2000:]
    assert "no partial output was kept" in stderr
    assert "Traceback" not in stderr, stderr[-2000:]
    assert digest(good) == before
    status = replacement_folder(good) / "run.json"
    assert not status.exists() or json.loads(status.read_text())["status"] == "interrupted"


def wait_for(path: Path, child: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert child.poll() is None, child.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_the_run_folder_may_not_be_the_chips(work: Path, tiny_chips: Path) -> None:
    before = digest(tiny_chips)
    refused = rs_seg("train", "--chips", tiny_chips, "--out", tiny_chips, "--config",
                     "train.yaml", "--overwrite", cwd=work)  # fmt: skip
    assert_one_line_error(refused, "is (or holds) the input")
    assert digest(tiny_chips) == before


def test_a_full_disk_is_one_line_and_keeps_nothing_half_written(work: Path, tiny_chips) -> None:
    with small_disk(work / "disk", "2m") as disk:
        (disk / "keep.txt").write_text("already on the disk")
        full = rs_seg("train", "--chips", tiny_chips, "--out", "disk/run", "--config",
                      "train.yaml", cwd=work)  # fmt: skip
        assert_one_line_error(full, "disk/run: no space left on the device")
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]
