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
    assert runner.cluster_kwargs == {"processes": True, "threads_per_worker": 1, "n_workers": 2}
    assert describe(RunnerConfig(kind="dask", workers=2)) == (
        "local Dask cluster (2 worker processes)"
    )


def test_an_address_needs_the_dask_kind() -> None:
    with pytest.raises(ValidationError, match=r"runner\.kind to dask"):
        RunnerConfig(address="tcp://scheduler:8786")


def test_an_unreachable_scheduler_fails_within_the_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(RsSegError, match=rf"no Dask scheduler answers at tcp://127.0.0.1:{port}"):
        task_runner(RunnerConfig(kind="dask", address=f"tcp://127.0.0.1:{port}", connect_timeout=1))
    assert time.perf_counter() - started < 10


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
