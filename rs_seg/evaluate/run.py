"""A training run from chips to a complete run folder: fit, evaluate, publish.

The one composition of training and evaluation that ``rs-seg train``, ``rs-seg demo``, the
``train-cropland`` flow and the tests call, so a run is complete (bundle, metrics, report) the
same way whoever starts it, and a run that replaces an earlier one takes its place only once
everything in it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rs_seg.config import TrainConfig
from rs_seg.evaluate.evaluation import EvaluationOutcome, evaluate_run
from rs_seg.model.bundle import BUNDLE_FILE
from rs_seg.run_folder import RunFolder, publish_replacement
from rs_seg.train.fit import TrainOutcome, train


@dataclass(frozen=True)
class TrainedRun:
    """What training and evaluation left: the run where it now is, its bundle and its scores."""

    training: TrainOutcome
    evaluation: EvaluationOutcome

    @property
    def run(self) -> Path:
        """The run folder, at its final place."""
        return self.evaluation.run

    @property
    def bundle(self) -> Path:
        """The run's model bundle."""
        return self.evaluation.bundle

    def summary(self) -> str:
        """What a terminal shows: the test scores and where the bundle and report are."""
        return self.evaluation.summary()


def train_and_evaluate(
    cfg: TrainConfig, resume: bool = False, progress: bool = False
) -> TrainedRun | None:
    """Train, evaluate and publish one run; None in the extra processes of a DDP run.

    Evaluation runs once, in the launching process, on the best checkpoint; a replacement run
    (``overwrite``) is exchanged with the run it replaces only after it is evaluated.
    """
    trained = train(cfg, resume=resume, progress=progress)
    if trained is None:
        return None
    evaluation = evaluate_run(trained.run, trained.best_checkpoint)
    return TrainedRun(trained, published(evaluation))


def published(evaluation: EvaluationOutcome) -> EvaluationOutcome:
    """The evaluated run put in place of the run it replaces, if it replaces one."""
    final = publish_replacement(evaluation.run)
    if final == evaluation.run:
        return evaluation
    return EvaluationOutcome(
        final, final / BUNDLE_FILE, evaluation.metrics, RunFolder(final).report
    )
