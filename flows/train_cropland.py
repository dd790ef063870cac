"""Prefect flow ``train-cropland``: chips (when stale) -> training -> evaluation -> registry.

A thin layer over the same functions the CLI uses, so a scheduled run and ``rs-seg train`` give the
same run folder, bundle and report. Made for schedules: preparation is skipped while the chips are
current (:func:`rs_seg.prepare.run.chips_up_to_date`), an existing run folder gets a timestamped
sibling instead of an error, and the registry's ``latest`` pointer moves only for a model that is at
least as good on the same test split (:func:`rs_seg.ops.registry.register`). A Markdown artifact
``train-cropland-report`` records the outcome. Runs without a Prefect server (ephemeral mode) or
against the one ``PREFECT_API_URL`` points to.

Run locally::

    python flows/train_cropland.py --config configs/my-train.yaml [--models-dir models]

The YAML holds ``train:`` and optionally ``prepare:`` sections (``rs_seg.config``). A file whose
``prepare:`` names no scenes but that has a ``synth:`` section (``configs/demo.yaml``) trains on
generated scenes, as ``rs-seg demo`` does. Multi-GPU DDP: Lightning re-runs this script for the
extra processes; they only train, with the run folder rank 0 chose.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import rs_seg  # noqa: F401 - arms the torchvision shim before smp / torchmetrics are imported
from flows.runners import retry_io_errors
from flows.server import run_command
from rs_seg.config import PrepareConfig, SynthConfig, TrainConfig
from rs_seg.config_files import load_training_configs
from rs_seg.evaluate.evaluation import EvaluationOutcome
from rs_seg.evaluate.run import train_and_evaluate
from rs_seg.ops.registry import Registration, register
from rs_seg.prepare.index import SUMMARY_FILE
from rs_seg.prepare.run import chips_up_to_date
from rs_seg.prepare.run import prepare as prepare_chips
from rs_seg.records import SplitMetrics
from rs_seg.synthetic import reuse_or_generate
from rs_seg.train.fit import is_ddp_child
from rs_seg.train.fit import train as train_model

ARTIFACT_KEY = "train-cropland-report"
# Rank 0 hands its resolved train config to the extra DDP processes Lightning starts.
_DDP_CONFIG_ENV = "RS_SEG_FLOW_TRAIN_CONFIG"
_METRIC_LABELS = {
    "cropland_iou": "cropland IoU", "background_iou": "background IoU", "mean_iou": "mean IoU",
    "f1": "F1", "precision": "precision", "recall": "recall", "accuracy": "accuracy",
}  # fmt: skip


def _replaceable(config: PrepareConfig) -> PrepareConfig:
    """Stale chips written by ``rs-seg prepare`` may be replaced; any other folder needs consent."""
    if (Path(config.out) / SUMMARY_FILE).is_file():
        return config.model_copy(update={"overwrite": True})
    return config


@task(
    name="prepare-chips",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_io_errors,
)
def prepare_task(config: PrepareConfig) -> dict[str, Any]:
    """(Re)write the chip folder unless it already matches the config and the inputs."""
    logger = get_run_logger()
    current, reason = chips_up_to_date(config)
    if current:
        logger.info("chips in %s are up to date; preparation skipped", config.out)
        return {"prepared": False, "reason": reason, "out": str(config.out)}
    logger.info("preparing chips into %s (%s)", config.out, reason)
    summary = prepare_chips(_replaceable(config))
    logger.info("%s", summary.report())
    return {"prepared": True, "reason": reason, "out": str(config.out), "chips": summary.chips}


@task(name="synthesize-scenes", cache_policy=NO_CACHE)
def synth_task(config: SynthConfig) -> list[str]:
    """Generate the synthetic scenes and labels (reused while the settings match)."""
    result = reuse_or_generate(config)
    get_run_logger().info(
        "%d synthetic scenes in %s, labels %s", len(result.scenes), config.out, result.labels
    )
    return [str(scene) for scene in result.scenes]


@task(name="train-and-evaluate", cache_policy=NO_CACHE)
def train_task(config: TrainConfig, resume: bool) -> EvaluationOutcome:
    """Train into ``config.out`` and evaluate: bundle, metrics, report, the run published.

    The extra DDP processes rebuild this config from the env.
    """
    os.environ[_DDP_CONFIG_ENV] = config.model_dump_json()
    try:
        trained = train_and_evaluate(config, resume=resume)
    finally:  # later processes this one starts are not DDP ranks of this run
        os.environ.pop(_DDP_CONFIG_ENV, None)
    if trained is None:  # only the extra DDP processes get None, and they never run the flow
        raise RuntimeError("training returned no outcome in the flow's own process")
    outcome = trained.training
    logger = get_run_logger()
    logger.info("trained %d epochs (best: epoch %s) in %s", outcome.epochs_run,
                outcome.best_epoch, outcome.run)  # fmt: skip
    logger.info("%s", trained.summary())
    return trained.evaluation


@task(
    name="register-model",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_io_errors,
)
def register_task(run: Path, models_dir: Path, promote: str) -> Registration:
    """Store the bundle in the models directory; ``latest`` moves only if the model earns it."""
    registration = register(run, models_dir, promote)  # type: ignore[arg-type]
    get_run_logger().info("model %s: %s", registration.model_id, registration.reason)
    return registration


def run_folder(config: TrainConfig, resume: bool, now: dt.datetime | None = None) -> TrainConfig:
    """The config with a free run folder: ``<out>-<UTC time>`` when ``out`` is already taken.

    Scheduled runs reuse one config, so a taken folder is the normal case, not an error. Resuming
    continues in ``out`` itself, and ``overwrite`` replaces it, as on the command line.
    """
    out = Path(config.out)
    if resume or config.overwrite or not out.exists():
        return config
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    candidate, n = out.with_name(f"{out.name}-{stamp}"), 2
    while candidate.exists():
        candidate, n = out.with_name(f"{out.name}-{stamp}-{n}"), n + 1
    return config.model_copy(update={"out": candidate})


def _metrics_table(test: SplitMetrics) -> list[str]:
    rows = ["| test metric | value |", "|---|---:|"]
    for key, label in _METRIC_LABELS.items():
        value = test.get(key)
        rows.append(
            f"| {label} | {value:.4f} |" if isinstance(value, float) else f"| {label} | - |"
        )
    fields = test.get("objects")
    if fields is not None:
        rows.append(f"| object F1 (fields, chip by chip) | {fields['object_f1']:.4f} |")
        rows.append(f"| fields predicted / labelled | {fields['fields_predicted']} / "
                    f"{fields['fields_labelled']} |")  # fmt: skip
    return rows


def _markdown(evaluation: EvaluationOutcome, registration: Registration, chips: str) -> str:
    """The artifact: what was trained, how good it is, whether it is now the latest model."""
    metrics = evaluation.metrics
    test = metrics["test"]
    moved = "moved to this model" if registration.promoted else "not moved"
    lines = [
        f"## Cropland model `{registration.model_id}`",
        "",
        *_metrics_table(test),
        "",
        f"- test split: {test.get('chips')} chips, {test.get('pixels')} labelled pixels "
        f"(chip index `{metrics.get('chip_index_fingerprint')}`)",
        f"- threshold (tuned on validation): {metrics['threshold']:.3f}",
        f"- latest: **{moved}**: {registration.reason}",
        f"- registered bundle: `{registration.bundle}`",
        f"- run folder: `{evaluation.run}`; report: `{evaluation.report / 'README.md'}`",
        f"- chips: {chips}",
    ]
    return "\n".join(lines) + "\n"


@flow(name="train-cropland", log_prints=True)
def train_cropland(
    train: TrainConfig,
    prepare: PrepareConfig | None = None,
    models_dir: Path = Path("models"),
    promote: Literal["if_better", "always", "never"] = "if_better",
    resume: bool = False,
    synth: SynthConfig | None = None,
) -> dict[str, Any]:
    """Prepare chips if stale, train, evaluate, and register the model in ``models_dir``.

    Args:
        train: training settings; ``train.chips`` is replaced by ``prepare.out`` when ``prepare``
            is given, and a taken ``train.out`` becomes a timestamped sibling (unless resuming).
        prepare: chip preparation, skipped while ``prepare.out`` is up to date.
        models_dir: the model registry (see ``rs_seg.ops.registry``).
        promote: when ``latest`` moves: ``if_better`` (at least as good on the same test split),
            ``always`` or ``never``.
        resume: continue the run in ``train.out`` from its last checkpoint.
        synth: generate synthetic scenes first (the demo default, so the deployment runs on a
            fresh machine without data); ``prepare`` reads them
            (:meth:`rs_seg.config.SynthConfig.prepare_inputs`).

    Returns:
        model id, whether latest moved and why, registered bundle, run folder and test metrics.
    """
    logger = get_run_logger()
    chips = f"`{train.chips}` (given)"
    if prepare is not None:
        if synth is not None:
            synth_task(synth)
        prepared = prepare_task(prepare)
        chips = f"`{prepare.out}` ({'prepared' if prepared['prepared'] else 'up to date'})"
        train = train.model_copy(update={"chips": prepare.out})
    requested = train.out
    train = run_folder(train, resume)
    if train.out != requested:
        logger.info("run folder %s exists; this run goes to %s", requested, train.out)
    evaluation = train_task(train, resume)
    registration = register_task(evaluation.run, Path(models_dir), promote)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=_markdown(evaluation, registration, chips),
        description="Test metrics of the new cropland model and whether it became latest",
    )
    return {
        "model_id": registration.model_id,
        "promoted": registration.promoted,
        "reason": registration.reason,
        "bundle": str(registration.bundle),
        "run": str(evaluation.run),
        "threshold": evaluation.metrics["threshold"],
        "metrics": evaluation.metrics["test"],
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--config FILE`` plus registry options; prints the flow's result as JSON."""
    parser = argparse.ArgumentParser(description="Prepare chips, train, evaluate, register.")
    parser.add_argument("--config", type=Path, required=True, help="YAML with train:/prepare:")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="[models]")
    parser.add_argument("--promote", choices=["if_better", "always", "never"], default="if_better")
    parser.add_argument("--resume", action="store_true", help="continue train.out")
    args = parser.parse_args(argv)

    def run() -> None:
        if is_ddp_child() and _DDP_CONFIG_ENV in os.environ:
            train_model(TrainConfig.model_validate_json(os.environ[_DDP_CONFIG_ENV]), args.resume)
            return
        train, prepare, synth = load_training_configs(args.config)
        result = train_cropland(
            train, prepare, args.models_dir, args.promote, args.resume, synth=synth
        )
        print(json.dumps(result, indent=2))

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
