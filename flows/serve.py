"""Serve every rs_seg deployment from one process: ``make serve`` (or ``python -m flows.serve``).

Without ``PREFECT_API_URL`` this starts a local Prefect server (``prefect server start`` on
``127.0.0.1:--port``, UI at ``http://127.0.0.1:4200`` by default), waits until it answers, serves
the four deployments against it and stops it again on Ctrl-C. With ``PREFECT_API_URL`` it checks
that server answers and serves against it.

Deployments are named after their flows, so ``prefect deployment run train-cropland/train-cropland``
(``<flow>/<deployment>``, with ``-p key=value`` overrides) runs one. ``train-cropland`` gets its
default parameters (``train``, ``prepare``, ``synth``) from ``--train-config``
(``configs/demo.yaml``: synthetic scenes, so it runs on a machine without data);
``infer-new-imagery`` gets its ``config`` from ``--incoming-config`` (``configs/incoming.yaml``, or
``RS_SEG_INCOMING_CONFIG``) and a schedule: every ``--interval`` seconds
(``RS_SEG_INCOMING_INTERVAL``, 600 by default), a ``--cron`` expression in UTC
(``RS_SEG_INCOMING_CRON``), or ``--no-schedule``. Relative paths in the parameters resolve against
the directory ``make serve`` runs in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flows.server import (
    DEFAULT_PORT,
    PrefectServer,
    check_port,
    configured_api_url,
    prefect_api,
    require_api,
)
from rs_seg.config import IncomingConfig
from rs_seg.config_files import build_config, load_training_configs
from rs_seg.errors import RsSegError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

TRAIN_CONFIG = Path("configs/demo.yaml")
INCOMING_CONFIG = Path("configs/incoming.yaml")
DEFAULT_INTERVAL_S = 600
FLOWS = ("prepare-chips", "train-cropland", "infer-scene", "infer-new-imagery")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the schedule options default to the ``RS_SEG_INCOMING_*`` variables."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description="Serve the rs_seg deployments (prepare-chips, train-cropland, infer-scene, "
        "infer-new-imagery); without PREFECT_API_URL, start a local Prefect server for them.",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        default=DEFAULT_PORT,
        help=f"port of the local Prefect server (ignored with PREFECT_API_URL) [{DEFAULT_PORT}]",
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        default=None,
        help=f"YAML with train:/prepare:/synth: sections: train-cropland defaults [{TRAIN_CONFIG}]",
    )
    parser.add_argument(
        "--incoming-config",
        type=Path,
        metavar="FILE",
        default=None,
        help="YAML with an incoming: section: infer-new-imagery defaults "
        f"[$RS_SEG_INCOMING_CONFIG or {INCOMING_CONFIG}]",
    )
    parser.add_argument(
        "--pool",
        metavar="NAME",
        help="instead of serving: register the deployments on this Prefect work pool (created "
        "as a process pool when missing) and exit; then run `prefect worker start --pool NAME` "
        "on each machine. Needs PREFECT_API_URL",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--interval",
        type=int,
        metavar="SECONDS",
        help="run infer-new-imagery every SECONDS "
        f"[$RS_SEG_INCOMING_INTERVAL or {DEFAULT_INTERVAL_S}]",
    )
    when.add_argument(
        "--cron", metavar="EXPR", help="run infer-new-imagery on a cron schedule, in UTC"
    )
    when.add_argument(
        "--no-schedule", action="store_true", help="infer-new-imagery runs only when triggered"
    )
    return parser.parse_args(argv)


def schedule(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The schedule keywords of infer-new-imagery: ``{"interval": s}``, ``{"cron": e}`` or ``{}``.

    Options win over ``RS_SEG_INCOMING_CRON``, which wins over ``RS_SEG_INCOMING_INTERVAL``.
    """
    args = args or parse_args([])
    if args.no_schedule:
        return {}
    if args.cron:
        return {"cron": _checked_cron(args.cron, "--cron")}
    if args.interval is not None:
        return {"interval": _checked_interval(args.interval, "--interval")}
    cron = os.environ.get("RS_SEG_INCOMING_CRON", "").strip()
    if cron:
        return {"cron": _checked_cron(cron, "RS_SEG_INCOMING_CRON")}
    raw = os.environ.get("RS_SEG_INCOMING_INTERVAL", "").strip() or str(DEFAULT_INTERVAL_S)
    try:
        seconds = int(raw)
    except ValueError:
        raise RsSegError(f"RS_SEG_INCOMING_INTERVAL must be whole seconds, got {raw!r}") from None
    return {"interval": _checked_interval(seconds, "RS_SEG_INCOMING_INTERVAL")}


def _checked_interval(seconds: int, source: str) -> int:
    if seconds < 1:
        raise RsSegError(f"{source} must be at least 1 second (use --no-schedule for none)")
    return seconds


def _checked_cron(expr: str, source: str) -> str:
    # Prefect is slow to import: serve reports a taken port or dead server first
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr)
    except ValueError:
        raise RsSegError(f"{source}: {expr!r} is not a valid cron expression") from None
    return expr


def _config_file(given: Path | None, env: str | None, default: Path) -> Path | None:
    """A config named by option or variable must exist; the default may be absent (no defaults)."""
    if given is None and env and os.environ.get(env):
        given = Path(os.environ[env])
    if given is not None:
        if not given.is_file():
            raise RsSegError("config file not found", given)
        return given
    return default if default.is_file() else None


def train_parameters(config_file: Path | None) -> dict[str, Any]:
    """Default ``train``/``prepare``/``synth`` parameters of train-cropland, from a YAML file."""
    if config_file is None:
        return {}
    train, prepare, synth = load_training_configs(config_file)
    parameters: dict[str, Any] = {"train": train.model_dump(mode="json")}
    if prepare is not None:
        parameters["prepare"] = prepare.model_dump(mode="json")
    if synth is not None:
        parameters["synth"] = synth.model_dump(mode="json")
    return parameters


def incoming_parameters(config_file: Path | None) -> dict[str, Any]:
    """Default ``config`` parameter of infer-new-imagery, from a YAML file's ``incoming:``."""
    if config_file is None:
        return {}
    config = build_config(IncomingConfig, "incoming", config_file, {})
    return {"config": config.model_dump(mode="json")}


def deployments(
    train_config: Path | None = None,
    incoming_config: Path | None = None,
    when: dict[str, Any] | None = None,
) -> list[Any]:
    """One deployment per flow, each named like its flow; see the module docstring for defaults."""
    # the flows bring torch, smp and Prefect (seconds): loaded once serving starts
    import rs_seg  # noqa: F401 - arms the torchvision shim before torch libraries are imported
    from flows.infer_new_imagery import infer_new_imagery
    from flows.infer_scene import infer_scene
    from flows.prepare_chips import prepare_chips
    from flows.train_cropland import train_cropland

    train_file = _config_file(train_config, None, TRAIN_CONFIG)
    incoming_file = _config_file(incoming_config, "RS_SEG_INCOMING_CONFIG", INCOMING_CONFIG)
    return [
        prepare_chips.to_deployment(name="prepare-chips"),
        train_cropland.to_deployment(
            name="train-cropland", parameters=train_parameters(train_file)
        ),
        infer_scene.to_deployment(name="infer-scene"),
        infer_new_imagery.to_deployment(
            name="infer-new-imagery",
            parameters=incoming_parameters(incoming_file),
            **(schedule() if when is None else when),
        ),
    ]


def _prefect_cli() -> str:
    """How to call the ``prefect`` command of this environment from the current directory."""
    cli = Path(sys.executable).parent / "prefect"
    found = shutil.which("prefect")
    if found and Path(found).resolve() == cli.resolve():
        return "prefect"
    try:
        return str(cli.relative_to(Path.cwd()))
    except ValueError:
        return str(cli)


def guide(server: PrefectServer, served: list[Any]) -> str:
    """What to run, and where the outputs go, printed once the deployments are registered."""
    # Prefect is slow to import: serve reports a taken port or dead server first
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY

    by_name = {d.name: d for d in served}
    prefect = _prefect_cli()
    run = f"{prefect} deployment run"
    train = by_name["train-cropland"].parameters
    incoming = by_name["infer-new-imagery"].parameters.get("config")
    stops = "serving and the server" if server.started else "serving"
    lines = [
        "",
        f"Prefect UI:  {server.ui_url}   (API {server.api_url})",
        f"Serving {len(served)} deployments from {Path.cwd()}; a triggered run starts within "
        f"{PREFECT_RUNNER_POLL_FREQUENCY.value()} s. Ctrl-C stops {stops}.",
        "",
        "Run them from another terminal:",
        f"  export PREFECT_API_URL={server.api_url}",
    ]
    if train:
        source = "synthetic scenes" if "synth" in train else "the configured data"
        lines += [
            f"  {run} train-cropland/train-cropland --watch   # {source} -> model",
            f"  {run} train-cropland/train-cropland -p promote=always   # -p overrides",
        ]
    else:
        lines.append(
            f"  {run} train-cropland/train-cropland -p train='{{...}}' -p prepare='{{...}}'"
        )
    inbox = '{"incoming": "data/incoming"}'
    scene = '{"scene": "scene.tif", "out": "fields.gpkg"}'
    chips = '{"scenes": ["scenes/*.tif"], "labels": "fields.gpkg"}'
    if incoming:
        every = _describe(by_name["infer-new-imagery"])
        lines.append(f"  {run} infer-new-imagery/infer-new-imagery   # {every}")
    else:
        lines.append(f"  {run} infer-new-imagery/infer-new-imagery -p config='{inbox}'")
    lines += [
        f"  {run} infer-scene/infer-scene -p config='{scene}'",
        f"  {run} prepare-chips/prepare-chips -p config='{chips}'",
        f"  {prefect} flow-run ls   # runs and their states; logs and artifacts are in the UI",
        "",
        "Outputs (relative paths are under the serving directory):",
    ]
    if train:
        made = [f"{train['synth']['out']} (scenes)"] if "synth" in train else []
        if "prepare" in train:
            made.append(f"{train['prepare']['out']} (chips)")
        made.append(f"{train['train']['out']}[-<UTC time>] (run folder)")
        lines.append("  train-cropland:    " + ", ".join(made))
        lines.append("                     models/<model id>/, models/latest.json")
    if incoming:
        ledger = incoming["ledger"] or f"{incoming['out_dir']}/ledger.sqlite"
        lines.append(
            f"  infer-new-imagery: {incoming['incoming']} -> "
            f"{incoming['out_dir']}/<scene>/<model id>/fields.gpkg, ledger {ledger}"
        )
    return "\n".join(lines) + "\n"


def _describe(deployment: Any) -> str:
    if not deployment.schedules:
        return "not scheduled"
    spec = deployment.schedules[0].schedule
    if getattr(spec, "cron", None):
        return f"also runs on cron '{spec.cron}' (UTC)"
    return f"also runs every {int(spec.interval.total_seconds())} s"


def serve_all(served: list[Any], server: PrefectServer) -> None:
    """Register the deployments, print the guide and poll for runs until interrupted."""
    # Prefect is slow to import: serve reports a taken port or dead server first
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True)
    for deployment in served:
        runner.add_deployment(deployment)
    print(guide(server, served), flush=True)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINTS = {
    "prepare-chips": "flows/prepare_chips.py:prepare_chips",
    "train-cropland": "flows/train_cropland.py:train_cropland",
    "infer-scene": "flows/infer_scene.py:infer_scene",
    "infer-new-imagery": "flows/infer_new_imagery.py:infer_new_imagery",
}


def register_on_pool(pool: str, served: list[Any], when: dict[str, Any]) -> str:
    """Register the same deployments on a work pool; workers run them from this checkout's path.

    Each deployment loads its flow from ``ROOT`` (Prefect's local source storage), so every
    machine with a worker needs the checkout at the same path (or on a shared disk).
    """
    # Prefect is slow to import: serve reports a taken port or dead server first
    from prefect import deploy, flow

    kind = _ensure_pool(pool)
    # Called from sync code, where Prefect's async_dispatch methods return their results; their
    # annotations also allow the coroutines they return in async code.
    pooled = [
        cast(
            "RunnerDeployment",
            cast(
                "Flow[..., Any]",
                flow.from_source(source=str(ROOT), entrypoint=ENTRYPOINTS[d.name]),
            ).to_deployment(
                name=d.name,
                parameters=d.parameters,
                **(when if d.name == "infer-new-imagery" else {}),
            ),
        )
        for d in served
    ]
    deploy(*pooled, work_pool_name=pool, build=False, push=False,
           print_next_steps_message=False, ignore_warnings=True)  # fmt: skip
    return (
        f"registered {len(pooled)} deployments on work pool {pool!r} ({kind}). On each machine, "
        f"from a checkout at {ROOT} with the same environment and PREFECT_API_URL:\n"
        f"  {_prefect_cli()} worker start --pool {pool}\n"
        f"then run deployments as before, e.g. "
        f"{_prefect_cli()} deployment run train-cropland/train-cropland"
    )


def _ensure_pool(pool: str) -> str:
    """The pool's type; a missing pool is created as a ``process`` pool."""
    # Prefect is slow to import: serve reports a taken port or dead server first
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return "process, just created"


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Check or start the server, serve until Ctrl-C; exit code 2 for a problem the user can fix."""
    args = parse_args(argv)
    # Ctrl-C works even when started as a background job (which inherits an ignored SIGINT), and a
    # SIGTERM before the runner installs its own handler unwinds, so the server gets stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Prefect's SIGTERM handler calls the runner's async stop() without awaiting it (harmless).
    warnings.filterwarnings("ignore", "coroutine 'Runner.astop' was never awaited", RuntimeWarning)
    try:
        # Before the slow imports: a dead server or a taken port is reported at once.
        if args.pool and not configured_api_url():
            raise RsSegError(
                "--pool needs the server the workers poll: set PREFECT_API_URL (for example "
                "http://prefect-host:4200/api)"
            )
        if configured_api_url():
            require_api()
        else:
            check_port(args.port)
        when = schedule(args)
        served = deployments(args.train_config, args.incoming_config, when)
        if args.pool:
            print(register_on_pool(args.pool, served, when), flush=True)
            return 0
        with prefect_api(args.port) as server:
            serve_all(served, server)
    except RsSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
