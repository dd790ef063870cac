"""A new training run replaces an earlier one only once it is trained and evaluated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rs_seg.config import TrainConfig
from rs_seg.errors import RsSegError
from rs_seg.evaluate.evaluation import evaluate_run
from rs_seg.evaluate.run import published
from rs_seg.run_folder import replacement_folder
from rs_seg.train.fit import EpochHistory, train
from tests.helpers import digest, train_config


def config(chips: Path, out: Path, **overrides) -> TrainConfig:
    """The tiny training settings, 2 epochs at the default learning rate, replacing ``out``."""
    defaults = {"epochs": 2, "optimizer": {}, "overwrite": True}
    return train_config(chips, out, **(defaults | overrides))


@pytest.fixture
def good_run(trained_tiny_run, tmp_path: Path) -> Path:
    """A copy of the shared evaluated run: the user's previous good model."""
    _, evaluation = trained_tiny_run
    return Path(shutil.copytree(evaluation.run, tmp_path / "runs" / "good"))


def fail_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make training raise at the start of ``epoch`` (1-based), after earlier checkpoints."""
    original = EpochHistory.on_train_epoch_start

    def start(self, trainer, module) -> None:
        if trainer.current_epoch + 1 == epoch:
            raise RuntimeError("simulated crash")
        original(self, trainer, module)

    monkeypatch.setattr(EpochHistory, "on_train_epoch_start", start)


def test_a_run_that_fails_leaves_the_earlier_run_untouched(
    good_run: Path, tiny_chips: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(good_run)
    fail_in_epoch(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(tiny_chips, good_run))
    assert digest(good_run) == before
    assert sorted(p.name for p in good_run.parent.iterdir()) == ["good"], "nothing left beside"


def test_an_interrupted_replacement_resumes_and_then_takes_the_place(
    good_run: Path, tiny_chips: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(good_run)
    old_id = json.loads((good_run / "metrics.json").read_text())["model_id"]
    fail_in_epoch(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config(tiny_chips, good_run))
    staging = replacement_folder(good_run)
    assert json.loads((staging / "run.json").read_text())["status"] == "failed"
    assert digest(good_run) == before, "the earlier run stays until the new one succeeds"
    monkeypatch.undo()
    outcome = train(config(tiny_chips, good_run), resume=True)
    assert outcome is not None and outcome.run == staging and outcome.epochs_run == 2
    assert digest(good_run) == before, "a trained but unevaluated run replaces nothing"
    evaluation = evaluate_run(outcome.run, outcome.best_checkpoint)
    assert digest(good_run) == before, "an evaluated run replaces nothing before it is published"
    evaluation = published(evaluation)
    assert evaluation.run == good_run and evaluation.bundle == good_run / "model-bundle.pt"
    metrics = json.loads((good_run / "metrics.json").read_text())
    assert metrics["model_id"] != old_id
    status = json.loads((good_run / "run.json").read_text())
    assert status["status"] == "evaluated" and status["epochs_run"] == 2
    assert sorted(p.name for p in good_run.parent.iterdir()) == ["good"]


def test_a_run_folder_with_foreign_files_is_not_replaced(good_run: Path, tiny_chips: Path) -> None:
    (good_run / "my-notes.txt").write_text("keep me")
    before = digest(good_run)
    with pytest.raises(RsSegError, match=r"'my-notes\.txt', which rs-seg train did not write"):
        train(config(tiny_chips, good_run))
    assert digest(good_run) == before


def test_the_chips_cannot_be_the_run_folder(tiny_chips: Path) -> None:
    before = digest(tiny_chips)
    with pytest.raises(RsSegError, match=r"is \(or holds\) the input"):
        train(config(tiny_chips, tiny_chips))
    assert digest(tiny_chips) == before
