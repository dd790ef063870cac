"""Prefect flows ``infer-scene`` and ``infer-new-imagery``: thin layers over rs_seg inference.

``infer-scene`` maps one scene, exactly as ``rs-seg infer`` does. ``infer-new-imagery`` is the one
to schedule: it lists an incoming folder or glob, and each scene becomes a task that claims the
scene in the SQLite ledger (content fingerprint x model id), maps it with the current model and
records the outcome, so overlapping or repeated runs map every scene exactly once and failures are
retried by the next run without blocking the others (:mod:`rs_seg.incoming`). Scene tasks run on
the flow's task runner: threads by default, a Dask cluster for many machines.

Run locally:  python -m flows.infer_scene configs/my-incoming.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
from rs_seg.config import InferConfig, build_config
from rs_seg.incoming import IncomingConfig, SceneJob, SceneResult, plan, process_scene
from rs_seg.inference import run_infer


@flow(name="infer-scene", log_prints=True)
def infer_scene(config: InferConfig) -> dict[str, Any]:
    """Map one scene: probability COG and field polygons (``rs-seg infer`` as a flow)."""
    summary = run_infer(config)
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


@task(name="map-scene", cache_policy=NO_CACHE)
def map_scene_task(config: IncomingConfig, job: SceneJob) -> SceneResult:
    """Claim, map and record one scene (a bad scene is recorded, not raised)."""
    return process_scene(config, job)


@flow(name="infer-new-imagery", log_prints=True)
def infer_new_imagery(config: IncomingConfig) -> dict[str, Any]:
    """Map every new or changed scene of the incoming folder once with the current model."""
    logger = get_run_logger()
    jobs = plan(config)
    logger.info(
        "%d scenes in %s; model %s", len(jobs), config.incoming, jobs[0].model_id if jobs else "-"
    )
    results = [f.result() for f in map_scene_task.map(unmapped(config), jobs)]
    counts = {s: sum(r.status == s for r in results) for s in ("mapped", "skipped", "failed")}
    create_markdown_artifact(
        key="infer-new-imagery",
        markdown=_markdown(config, results, counts),
        description="Scenes mapped, skipped (already done) and failed (retried next run)",
    )
    return {**counts, "results": [_row(r) for r in results]}


def _row(result: SceneResult) -> dict[str, Any]:
    return {
        "scene": str(result.scene), "status": result.status,
        "fields": str(result.fields) if result.fields else None, "error": result.error,
    }  # fmt: skip


def _markdown(config: IncomingConfig, results: list[SceneResult], counts: dict[str, int]) -> str:
    lines = [
        f"## New imagery in `{config.incoming}`",
        "",
        f"mapped {counts['mapped']}, already done {counts['skipped']}, failed {counts['failed']}"
        f" (ledger `{config.ledger_path}`)",
        "",
        "| scene | status | fields | error |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.scene.name} | {r.status} | {r.fields or ''} | {r.error or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    config_file = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    infer_new_imagery(build_config(IncomingConfig, "incoming", config_file, {}))
