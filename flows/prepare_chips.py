"""Prefect flow ``prepare-chips``: the same stage functions as ``rs-seg prepare``, as tasks.

One task per scene, so the task runner named by the ``runner`` parameter (threads by default, a
Dask cluster for many machines; :mod:`flows.runners`) spreads scenes over workers; the split and
the index are computed once all scenes are chipped. The output folder is staged exactly as on the
command line, so a failed run leaves nothing behind.
It runs without a Prefect server (ephemeral mode) or against one set by ``PREFECT_API_URL``.

Run locally:  python -m flows.prepare_chips configs/demo-prepare.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runners import describe, retry_io_errors, task_runner
from flows.server import run_command
from rs_seg.config import PrepareConfig, RunnerConfig
from rs_seg.config_files import build_config
from rs_seg.prepare.chips import SceneChips, SceneInput
from rs_seg.prepare.run import CHIP_FOLDER, PreparePlan, chip_scene, finish, plan_prepare
from rs_seg.staging import staged_dir


@task(
    name="chip-scene",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_io_errors,
)
def chip_scene_task(plan: PreparePlan, scene: SceneInput, out_dir: Path) -> SceneChips:
    """Cut one scene into chips (retried once: reads from network storage can fail transiently)."""
    return chip_scene(plan, scene, out_dir)


@flow(name="prepare-chips", log_prints=True)
def prepare_chips(config: PrepareConfig, runner: RunnerConfig | None = None) -> dict[str, Any]:
    """Cut scenes into chips, split them spatially 8:1:1 and write the chip index.

    ``runner`` spreads scenes over threads or a Dask cluster (workers must see the output folder).
    """
    runner = runner or RunnerConfig()
    executor = task_runner(runner)
    plan = plan_prepare(config)
    print(f"{len(plan.scenes)} scenes on {describe(runner)}")
    with staged_dir(config.out, config.overwrite, CHIP_FOLDER) as staging:
        with executor:
            futures = executor.map(
                chip_scene_task,
                {"plan": unmapped(plan), "scene": plan.scenes, "out_dir": unmapped(staging)},
            )
            results = [future.result() for future in futures]
        summary = finish(plan, results, staging)
    summary = summary.moved_to(config.out)
    print(summary.report())
    create_markdown_artifact(
        key="prepare-chips-summary",
        markdown=_markdown(summary),
        description="Chip counts and cropland fraction per split",
    )
    return summary.to_dict()


def _markdown(summary: Any) -> str:
    rows = ["| split | chips | blocks | cropland fraction |", "|---|---:|---:|---:|"]
    for split, row in summary.splits.items():
        rows.append(f"| {split} | {row['chips']} | {row['blocks']} | {row['cropland_fraction']} |")
    notes = "".join(f"\n- {note}" for note in summary.notes)
    return f"## Chips: {summary.out}\n\nIndex: `{summary.index}`\n\n" + "\n".join(rows) + notes


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.prepare_chips [CONFIG]``: one prepare-chips run."""
    args = sys.argv[1:] if argv is None else argv

    def run() -> None:
        config_file = Path(args[0]) if args else None
        prepare_chips(build_config(PrepareConfig, "prepare", config_file, {}))

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
