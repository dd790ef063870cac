"""``make demo``: the pipeline on data it generates itself, end to end on a laptop CPU.

The demo owns its output folder (``data/demo`` by default) and replaces it on every run, so it can
be repeated without flags. Stages and their settings come from the ``synth`` and ``prepare``
sections of the demo config; the demo only wires the paths between them.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from rs_seg.config import PrepareConfig, SynthConfig, build_config
from rs_seg.prepare import prepare
from rs_seg.synthetic import generate_scenes

log = logging.getLogger(__name__)


def run_demo(config: Path, out: Path) -> None:
    """Generate synthetic scenes, cut them into chips, split them 8:1:1, print a summary."""
    started = time.perf_counter()
    progress = sys.stderr.isatty()
    synth_cfg = build_config(
        SynthConfig, "synth", config, {"out": out / "synthetic", "overwrite": True}
    )
    typer.echo(
        f"[1/2] synthetic scenes: {synth_cfg.scenes} x {synth_cfg.size}px, {synth_cfg.bands} bands"
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
    typer.echo(f"[2/2] chips: {prepare_cfg.chip_size}px, {prepare_cfg.split.method} split")
    summary = prepare(prepare_cfg, progress=progress)
    typer.echo(summary.report())
    typer.echo(f"scenes: {out / 'synthetic' / 'scenes'}   labels: {scenes.labels}")
    typer.echo(f"demo finished in {time.perf_counter() - started:.0f} s")
