"""Task runners from the shared config (threads or a Dask cluster), and the flows' retry rule.

Prefect picks a flow's task runner when the flow is defined, but a deployment's runner should
follow its parameters. The flows therefore run their per-scene tasks in a small subflow started
``with_options(task_runner=task_runner(config))``. An unreachable Dask scheduler is reported
before any scene is claimed, in one line, instead of a 30-second connection traceback.
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from prefect.task_runners import ThreadPoolTaskRunner

from rs_seg.config import RunnerConfig
from rs_seg.errors import RsSegError


def retry_io_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry failed reads and writes, never bad input.

    An OSError may be a dropped network share or a busy disk; an RsSegError (bad input) fails the
    same way every time, so retrying it only delays the message.
    """
    error = state.result(raise_on_failure=False)
    return isinstance(error, OSError) and not isinstance(error, RsSegError)


def task_runner(config: RunnerConfig) -> Any:
    """The Prefect task runner ``config`` describes (checked to be reachable)."""
    if config.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=config.workers or 1)
    # optional engine: prefect-dask (and dask) load only for runner.kind: dask
    from prefect_dask.task_runners import DaskTaskRunner

    if config.address:
        check_scheduler(config.address, config.connect_timeout)
        return DaskTaskRunner(address=config.address)
    cluster: dict[str, Any] = {"processes": True, "threads_per_worker": 1, **listen_kwargs(config)}
    if config.workers:
        cluster["n_workers"] = config.workers
    api_url = _ephemeral_api_url()
    if api_url:  # workers report to the flow's temporary server instead of starting their own
        cluster["env"] = {"PREFECT_API_URL": api_url}
    return DaskTaskRunner(cluster_kwargs=cluster)


def listen_kwargs(config: RunnerConfig) -> dict[str, Any]:
    """Where a local cluster listens: loopback unless configured (``runner.host``/``dashboard``).

    ``distributed.LocalCluster`` puts its scheduler and workers on 127.0.0.1 but its dashboard on
    every interface (``:8787``), so both are given explicitly; worker dashboards stay off. With
    ``dashboard: null`` the scheduler still answers health checks on ``host``, without the pages.
    """
    return {
        "host": config.host,
        "dashboard_address": config.dashboard,
        "worker_dashboard_address": None,
    }


def _ephemeral_api_url() -> str | None:
    """The temporary server of a flow running without PREFECT_API_URL (None otherwise).

    Without it each local Dask worker would start a Prefect server of its own on its first task,
    which costs every worker seconds and memory.
    """
    context = FlowRunContext.get()
    if get_current_settings().api.url or context is None or context.client is None:
        return None
    return str(context.client.api_url)


def describe(config: RunnerConfig) -> str:
    """One line for logs and artifacts."""
    if config.kind == "threads":
        return f"{config.workers or 1} thread(s) in the flow's process"
    if config.address:
        return f"Dask cluster at {config.address}"
    workers = config.workers or "one per core"
    dashboard = f", dashboard on {config.dashboard}" if config.dashboard else ""
    return f"local Dask cluster ({workers} worker processes on {config.host}{dashboard})"


def check_scheduler(address: str, timeout: float) -> None:
    """Connect to a Dask scheduler once, so a wrong address fails fast and says what to do."""
    # dask's client loads only when a scheduler address is given
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)  # type: ignore[no-untyped-call]  # unannotated
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RsSegError(
            f"no Dask scheduler answers at {address} within {timeout:g} s ({reason}); start one "
            "(`dask scheduler`, then `dask worker ADDRESS` on each machine) or set runner.kind: "
            "threads. Nothing was claimed or written"
        ) from None
    client.close()  # type: ignore[no-untyped-call]  # distributed leaves Client.close unannotated
