"""Prefect flow ``infer-new-imagery``: map every new scene of an incoming folder once.

The flow to schedule. It lists an incoming folder or glob, leaves scenes that are still being
copied *waiting* for a later run (size or mtime changed within ``settle_seconds``, or not readable
to the end), and each complete scene becomes a task that claims the scene in the SQLite ledger
(content fingerprint x model id), maps it with the current model and records the outcome, so
overlapping or repeated runs map every scene exactly once and failures are retried by the next run
without blocking the others (:mod:`rs_seg.ops.incoming`). Scene tasks run on the flow's task
runner: threads by default, a Dask cluster for many machines.

With ``stac:`` instead of ``incoming:`` the scenes are the items of a STAC catalog or item
collection that pass its collection, bbox and datetime filters (the others are reported as
*excluded*), each read where its asset is (:mod:`rs_seg.ops.stac`), recorded with its item id.

Run locally:  python -m flows.infer_new_imagery configs/my-incoming.yaml
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed

import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
from flows.runners import check_scheduler, describe, retry_io_errors, task_runner
from flows.server import run_command
from rs_seg.config import IncomingConfig
from rs_seg.config_files import build_config
from rs_seg.errors import printable
from rs_seg.ops.incoming import (
    SceneJob,
    SceneResult,
    map_scene,
    map_scenes,
    mapped_outputs,
    scan,
    write_merged,
)
from rs_seg.ops.ledger import check_writable
from rs_seg.remote import display

STATUSES = ("mapped", "skipped", "failed", "waiting", "excluded")


@task(
    name="map-scene",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_io_errors,
)
def map_scene_task(config: IncomingConfig, job: SceneJob) -> SceneResult:
    """Map one scene the flow has claimed (retried on I/O errors; bad input fails at once)."""
    return map_scene(config, job)


def map_scenes_on(config: IncomingConfig, jobs: list[SceneJob], runner: Any) -> list[SceneResult]:
    """:func:`rs_seg.ops.incoming.map_scenes` with each scene a task on the flow's task runner."""

    def submit(job: SceneJob) -> PrefectFuture[SceneResult]:
        future = runner.submit(map_scene_task, {"config": config, "job": job})
        return cast("PrefectFuture[SceneResult]", future)

    def completed(
        futures: list[PrefectFuture[SceneResult]],
    ) -> Iterator[tuple[PrefectFuture[SceneResult], SceneResult | BaseException]]:
        for future in as_completed(futures):
            outcome: object = future.result(raise_on_failure=False)  # a failed task's exception
            if not isinstance(outcome, SceneResult | BaseException):
                outcome = RuntimeError(f"unexpected task result {outcome!r}")
            yield future, outcome

    return map_scenes(config, jobs, submit, completed)


@flow(name="infer-new-imagery", log_prints=True)
def infer_new_imagery(config: IncomingConfig) -> dict[str, Any]:
    """Map every new or changed scene of the incoming folder (or STAC source) once.

    Scenes still being copied are reported as waiting (with the reason) and left alone: no claim,
    no output, not a failure; a later run maps them once they are complete. STAC items outside
    the source's filters are reported as excluded (with the filter).
    """
    logger = get_run_logger()
    runner = task_runner(config.runner)  # an unreachable Dask scheduler fails before any claim
    found = scan(config)
    jobs = found.jobs
    model = jobs[0].model_id if jobs else "-"
    logger.info("%d complete scenes, %d waiting, %d excluded in %s; model %s; %s", len(jobs),
                len(found.waiting), len(found.excluded), config.source, model,
                describe(config.runner))  # fmt: skip
    results = [*found.waiting, *found.excluded]
    if jobs:
        with runner:
            results += map_scenes_on(config, jobs, runner)
    results.sort(key=lambda r: r.scene)
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    merged = None
    if config.merged is not None and (counts["mapped"] or not config.merged.exists()):
        outputs = mapped_outputs(config, jobs)
        fields = write_merged(outputs, config.merged, config.merged_crs)
        merged = {"path": str(config.merged), "scenes": len(outputs), "fields": fields}
        logger.info("merged layer %s: %d fields from %d scenes", config.merged, fields,
                    len(outputs))  # fmt: skip
    for result in results:
        _log_result(logger, result)
    create_markdown_artifact(
        key="infer-new-imagery",
        markdown=_markdown(config, results, counts, merged),
        description="Scenes mapped, skipped (already done), failed (retried next run), "
        "waiting (still being copied) and excluded (outside the STAC filters)",
    )
    return {**counts, "merged": merged, "results": [_row(r) for r in results]}


def _log_result(logger: Any, result: SceneResult) -> None:
    """One log line for a scene that needs attention (failed, waiting, excluded, warnings)."""
    scene = result.item_id or printable(display(result.scene))
    if result.status == "failed":
        logger.warning("%s failed (retried next run): %s", scene, result.error)
    elif result.status == "waiting":
        logger.info("%s waiting (mapped by a later run once complete): %s", scene, result.reason)
    elif result.status == "excluded":
        logger.info("%s excluded by the STAC filters: %s", scene, result.reason)
    for warning in result.warnings:
        logger.warning("%s: %s", result.label, warning)


def _row(result: SceneResult) -> dict[str, Any]:
    return {
        "scene": printable(display(result.scene)), "item_id": result.item_id,
        "status": result.status,
        "fields": str(result.fields) if result.fields else None, "polygons": result.polygons,
        "error": result.error, "warnings": list(result.warnings), "reason": result.reason,
    }  # fmt: skip


def _markdown(
    config: IncomingConfig,
    results: list[SceneResult],
    counts: dict[str, int],
    merged: dict[str, Any] | None,
) -> str:
    lines = [
        f"## New imagery in `{config.source}`",
        "",
        f"mapped {counts['mapped']}, already done {counts['skipped']}, failed {counts['failed']},"
        f" waiting {counts['waiting']}"
        + (f", excluded {counts['excluded']}" if config.stac else "")
        + f" (ledger `{config.ledger_path}`)",
        "",
    ]
    if merged:
        lines += [
            f"merged layer `{merged['path']}`: {merged['fields']} fields from "
            f"{merged['scenes']} scenes",
            "",
        ]
    lines += [
        "| scene | status | fields | polygons | error, reason or warnings |",
        "|---|---|---|---:|---|",
    ]
    for r in results:
        notes = "; ".join(n for n in (r.error, r.reason, *r.warnings) if n)
        polygons = r.polygons if r.status == "mapped" else ""
        lines.append(f"| {r.label} | {r.status} | {r.fields or ''} | {polygons} | {notes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.infer_new_imagery [CONFIG]``: one run of the flow; its counts as JSON.

    Exit code 1 when a scene failed (the next run retries it), 2 for bad input (also a ledger
    that cannot be written); scenes still waiting are not a failure.
    """
    args = sys.argv[1:] if argv is None else argv

    def run() -> int:
        config = build_config(IncomingConfig, "incoming", Path(args[0]) if args else None, {})
        # fail in one line before a flow run (and its log) starts
        check_writable(config.ledger_path, before_run=True)
        if config.runner.address:
            check_scheduler(config.runner.address, config.runner.connect_timeout)
        result = infer_new_imagery(config)
        print(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=2))
        return 1 if result["failed"] else 0

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
