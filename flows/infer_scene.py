"""Prefect flow ``infer-scene``: one scene mapped exactly as ``rs-seg infer`` maps it.

A thin layer over :func:`rs_seg.infer.run.run_infer` that adds retries on I/O errors and a
Markdown artifact with the outputs. Scheduled mapping of an incoming folder is the
``infer-new-imagery`` flow (:mod:`flows.infer_new_imagery`).

Run locally:  python -m flows.infer_scene configs/my-scene.yaml   (a YAML file with ``infer:``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
from flows.runners import retry_io_errors
from flows.server import run_command
from rs_seg.config import InferConfig
from rs_seg.config_files import build_config
from rs_seg.infer.run import InferSummary, run_infer


@task(
    name="infer-scene",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_io_errors,
)
def infer_task(config: InferConfig) -> InferSummary:
    """``rs-seg infer`` on one scene, retried on I/O errors (outputs are staged, never partial).

    A first attempt that fails on an existing output raises an RsSegError and is not retried, so
    whatever a retry replaces was published by an earlier attempt of this same task.
    """
    return run_infer(config.model_copy(update={"overwrite": True}) if _retrying() else config)


def _retrying() -> bool:
    """A retry may replace what its own first attempt published before failing."""
    return (task_run.run_count or 1) > 1


@flow(name="infer-scene", log_prints=True)
def infer_scene(config: InferConfig) -> dict[str, Any]:
    """Map one scene: probability COG and field polygons (``rs-seg infer`` as a flow)."""
    summary = infer_task(config)
    print(summary.report())
    create_markdown_artifact(
        key="infer-scene",
        markdown=f"## Fields: `{summary.fields}`\n\n```\n{summary.report()}\n```\n",
        description="Outputs, throughput and warnings of one scene",
    )
    return {
        "fields": str(summary.fields),
        "prob": str(summary.prob),
        "fields_count": summary.polygons,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.infer_scene CONFIG``: one infer-scene run; its outputs as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flows.infer_scene CONFIG  (a YAML file with an infer: section)")
        return 2
    config_file = Path(args[0])

    def run() -> int:
        result = infer_scene(build_config(InferConfig, "infer", config_file, {}))
        print(json.dumps(result, indent=2))
        return 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
