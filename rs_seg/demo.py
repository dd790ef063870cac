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

from rs_seg.config import InferConfig, PrepareConfig, SynthConfig, TrainConfig
from rs_seg.config_files import build_config
from rs_seg.evaluate.run import train_and_evaluate
from rs_seg.infer.run import run_infer
from rs_seg.prepare.run import prepare
from rs_seg.synthetic import generate_scenes

log = logging.getLogger(__name__)


def run_demo(config: Path | None, out: Path) -> None:
    """Synthetic scenes -> chips (8:1:1) -> model and report -> fields of an unseen scene."""
    started = time.perf_counter()
    progress = sys.stderr.isatty()
    synth_cfg = build_config(
        SynthConfig, "synth", config, {"out": out / "synthetic", "overwrite": True}
    )
    typer.echo(
        f"[1/4] synthetic scenes: {synth_cfg.scenes} x {synth_cfg.size}px, {synth_cfg.bands} bands"
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
    typer.echo(f"[2/4] chips: {prepare_cfg.chip_size}px, {prepare_cfg.split.method} split")
    summary = prepare(prepare_cfg, progress=progress)
    typer.echo(summary.report())
    typer.echo(f"scenes: {out / 'synthetic' / 'scenes'}   labels: {scenes.labels}")
    bundle = _train(config, summary.out, out / "run", progress)
    if bundle is not None:
        _map_unseen_scene(synth_cfg, bundle, out, progress)
    typer.echo(f"demo finished in {time.perf_counter() - started:.0f} s")


def _train(config: Path | None, chips: Path, run: Path, progress: bool) -> Path | None:
    """Train on the demo chips, evaluate on their test split, print metrics and the report path."""
    paths = {"chips": chips, "out": run, "overwrite": True}
    cfg = build_config(TrainConfig, "train", config, paths)
    typer.echo(
        f"[3/4] training {cfg.model.arch}/{cfg.model.encoder} for {cfg.epochs} epochs "
        "(a few minutes on a laptop CPU)"
    )
    trained = train_and_evaluate(cfg, progress=progress)
    if trained is None:
        return None
    typer.echo(trained.summary())
    typer.echo(f"inspect the model: rs-seg model info {trained.bundle}")
    return trained.bundle


def _map_unseen_scene(synth: SynthConfig, bundle: Path, out: Path, progress: bool) -> None:
    """Generate one more scene with another seed (never seen in training) and map its fields."""
    unseen = synth.model_copy(
        update={"out": out / "unseen", "seed": synth.seed + 1000, "scenes": 1, "overwrite": True}
    )
    typer.echo(f"[4/4] mapping an unseen synthetic scene (seed {unseen.seed})")
    scene = generate_scenes(unseen, progress=progress).scenes[0]
    cfg = InferConfig(scene=scene, out=out / "fields.gpkg", model=bundle, overwrite=True)
    summary = run_infer(cfg, progress=progress)
    typer.echo(summary.report())
    typer.echo(
        f"open in QGIS: drag {summary.fields} onto the map (its style loads with it), "
        f"then {summary.prob} and {scene} for the probabilities and the image"
    )
