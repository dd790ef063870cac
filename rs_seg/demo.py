"""``make demo``: the pipeline on data it generates itself, end to end on a laptop CPU.

The demo owns its output folder (``data/demo`` by default) and replaces it on every run, so it can
be repeated without flags. Stages and their settings come from the ``synth``, ``prepare`` and
``train`` sections of the demo config; the demo only wires the paths between them.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from rs_seg.config import PrepareConfig, SynthConfig, TrainConfig, build_config
from rs_seg.prepare import prepare
from rs_seg.synthetic import generate_scenes

log = logging.getLogger(__name__)


def run_demo(config: Path, out: Path) -> None:
    """Synthetic scenes -> chips with an 8:1:1 split -> a trained, evaluated model and report."""
    started = time.perf_counter()
    progress = sys.stderr.isatty()
    synth_cfg = build_config(
        SynthConfig, "synth", config, {"out": out / "synthetic", "overwrite": True}
    )
    typer.echo(
        f"[1/3] synthetic scenes: {synth_cfg.scenes} x {synth_cfg.size}px, {synth_cfg.bands} bands"
    )
    scenes = generate_scenes(synth_cfg, progress=progress)

    prepare_cfg = build_config(
        PrepareConfig,
        "prepare",
        config,
        {
            "scenes": [str(p) for p in scenes.scenes],
            "labels": scenes.labels,
            "out": out / "chips",
            "overwrite": True,
        },
    )
    typer.echo(f"[2/3] chips: {prepare_cfg.chip_size}px, {prepare_cfg.split.method} split")
    summary = prepare(prepare_cfg, progress=progress)
    typer.echo(summary.report())
    typer.echo(f"scenes: {out / 'synthetic' / 'scenes'}   labels: {scenes.labels}")
    _train(config, summary.out, out / "run", progress)
    typer.echo(f"demo finished in {time.perf_counter() - started:.0f} s")


def _train(config: Path, chips: Path, run: Path, progress: bool) -> None:
    """Train on the demo chips, evaluate on their test split, print metrics and the report path."""
    from rs_seg.evaluation import evaluate_run
    from rs_seg.training import train

    paths = {"chips": chips, "out": run, "overwrite": True}
    cfg = build_config(TrainConfig, "train", config, paths)
    typer.echo(
        f"[3/3] training {cfg.model.arch}/{cfg.model.encoder} for {cfg.epochs} epochs "
        "(a few minutes on a laptop CPU)"
    )
    outcome = train(cfg, progress=progress)
    if outcome is None:
        return
    typer.echo(evaluate_run(outcome.run, outcome.best_checkpoint).summary())
    typer.echo(f"inspect the model: rs-seg model info {run / 'model-bundle.pt'}")
