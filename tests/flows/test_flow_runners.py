"""Task runners come from the shared config; a wrong Dask address fails fast in one line."""

from __future__ import annotations

import socket
import time

import pytest
from pydantic import ValidationError

from flows.runners import describe, task_runner
from rs_seg.config import IncomingConfig, RunnerConfig
from rs_seg.errors import RsSegError


def test_threads_by_default_one_scene_at_a_time() -> None:
    runner = task_runner(IncomingConfig(incoming="inbox").runner)
    assert type(runner).__name__ == "ThreadPoolTaskRunner" and runner._max_workers == 1
    assert task_runner(RunnerConfig(workers=3))._max_workers == 3


def test_a_local_dask_cluster_is_described_not_started() -> None:
    runner = task_runner(RunnerConfig(kind="dask", workers=2))
    assert type(runner).__name__ == "DaskTaskRunner"
    assert runner.cluster_kwargs == {
        "processes": True, "threads_per_worker": 1, "n_workers": 2, "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:8787", "worker_dashboard_address": None,
    }  # fmt: skip
    assert describe(RunnerConfig(kind="dask", workers=2)) == (
        "local Dask cluster (2 worker processes on 127.0.0.1, dashboard on 127.0.0.1:8787)"
    )


def test_the_local_cluster_listens_where_configured() -> None:
    exposed = RunnerConfig(kind="dask", host="0.0.0.0", dashboard="0.0.0.0:8790")
    kwargs = task_runner(exposed).cluster_kwargs
    assert (kwargs["host"], kwargs["dashboard_address"]) == ("0.0.0.0", "0.0.0.0:8790")
    quiet = task_runner(RunnerConfig(kind="dask", dashboard=None)).cluster_kwargs
    assert quiet["dashboard_address"] is None and quiet["host"] == "127.0.0.1"
    assert describe(RunnerConfig(kind="dask", dashboard=None)).endswith("on 127.0.0.1)")


def listening(pids: set[int]) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket the processes listen on."""
    import psutil

    found = set()
    for pid in pids:
        for connection in psutil.Process(pid).net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                found.add((pid, connection.laddr.ip, connection.laddr.port))
    return found


@pytest.mark.slow
def test_a_local_cluster_listens_on_loopback_only() -> None:
    """Scheduler, dashboard, nannies and workers: nothing on 0.0.0.0 with the defaults."""
    import os

    import psutil

    config = RunnerConfig(kind="dask", workers=2)
    me = os.getpid()
    before = {p.pid for p in psutil.Process(me).children(recursive=True)}
    with task_runner(config) as runner:
        client = runner.client  # starts the cluster
        info = client.scheduler_info()
        workers = {p.pid for p in psutil.Process(me).children(recursive=True)} - before
        sockets = listening({me} | workers)
        dashboard = client.dashboard_link
        http_port = client.cluster.scheduler.http_server.port
    assert len(info["workers"]) == 2 and len(workers) >= 2
    assert {address for _, address, _ in sockets} == {"127.0.0.1"}, sockets
    assert (me, "127.0.0.1", http_port) in sockets, "the dashboard, on loopback"
    assert dashboard.startswith(f"http://127.0.0.1:{http_port}/")
    assert info["address"].startswith("tcp://127.0.0.1:")
    for address, worker in info["workers"].items():
        assert address.startswith("tcp://127.0.0.1:") and worker["host"] == "127.0.0.1"
        assert worker["nanny"].startswith("tcp://127.0.0.1:")
    worker_ports = {port for pid, _, port in sockets if pid in workers}
    assert len(worker_ports) >= 2, "each worker process listens, on loopback"


def test_an_address_needs_the_dask_kind() -> None:
    with pytest.raises(ValidationError, match=r"runner\.kind to dask"):
        RunnerConfig(address="tcp://scheduler:8786")


def test_an_unreachable_scheduler_fails_within_the_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import distributed  # noqa: F401 - imported before the clock starts: seconds under load

    started = time.perf_counter()
    with pytest.raises(RsSegError, match=rf"no Dask scheduler answers at tcp://127.0.0.1:{port}"):
        task_runner(RunnerConfig(kind="dask", address=f"tcp://127.0.0.1:{port}", connect_timeout=1))
    assert time.perf_counter() - started < 20, "the 1 s timeout holds, not distributed's 30 s"


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError(5, "Input/output error"), True),
        (TimeoutError("read timed out"), True),  # an OSError subclass
        (RsSegError("not a raster", "scene.tif"), False),
        (ValueError("bad value"), False),
    ],
)
def test_only_io_errors_are_retried(error, retried) -> None:
    from prefect.states import Failed

    from flows.runners import retry_io_errors

    assert retry_io_errors(None, None, Failed(data=error)) is retried
