"""The Prefect server the flows talk to: reachability checks and a local server for ``make serve``.

* :func:`require_api` - call it at a flow entry point before anything contacts Prefect: when
  ``PREFECT_API_URL`` names a server that does not answer, it raises one :class:`RsSegError` line
  (instead of Prefect's retries and traceback). Without ``PREFECT_API_URL`` it does nothing, since
  flows then start Prefect's temporary (ephemeral) server themselves.
* :func:`local_server` - ``prefect server start`` on ``127.0.0.1:PORT`` (its default SQLite
  database under ``PREFECT_HOME``), wait until ``/api/health`` answers, and stop it again on exit,
  Ctrl-C included. The server runs in its own session (a Ctrl-C in the terminal reaches only the
  serving process, which then stops the server after the runner has shut down) and, on Linux, is
  terminated by the kernel if the serving process dies without cleaning up.
* :func:`prefect_api` - the server ``make serve`` uses: the one in ``PREFECT_API_URL`` (checked),
  else a local one; inside the block ``PREFECT_API_URL`` points to it for Prefect and for children.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from rs_seg.errors import RsSegError

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
# `prefect server start` on a fresh SQLite database takes a while until /api/health answers, much
# longer on a small machine busy with other work; the limit leaves room for more load than that.
START_TIMEOUT_S = 120.0
# One health probe: a starting or busy server may need seconds to answer (probes are retried).
HEALTH_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PrefectServer:
    """Where the serving process finds Prefect, and whether it started that server itself."""

    api_url: str
    started: bool = False
    log: Path | None = None

    @property
    def ui_url(self) -> str:
        """The UI address (the API URL without its ``/api`` suffix)."""
        return self.api_url.removesuffix("/").removesuffix("/api")


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` from the environment or the active Prefect profile (None when unset)."""
    # Prefect is slow to import; serve checks ports and servers before it
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def api_problem(api_url: str, timeout: float = 5.0) -> str | None:
    """Why ``<api_url>/health`` does not answer as a Prefect API, or None when it does."""
    # Prefect is slow to import; serve checks ports and servers before it
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    headers = {}
    if api.key:
        headers["Authorization"] = f"Bearer {api.key.get_secret_value()}"
    elif api.auth_string:
        token = base64.b64encode(api.auth_string.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    url = api_url.rstrip("/") + "/health"
    try:
        response = httpx.get(
            url, headers=headers, timeout=timeout, verify=not api.tls_insecure_skip_verify
        )
    except httpx.ConnectError as exc:
        text = str(exc)
        if "refused" in text.lower():
            return "connection refused"
        if "name or service not known" in text.lower() or "nodename" in text.lower():
            return "host not found"
        return text or type(exc).__name__
    except httpx.TimeoutException:
        return f"no answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return str(exc) or type(exc).__name__
    if response.status_code in (401, 403):
        return f"HTTP {response.status_code}: check PREFECT_API_KEY or PREFECT_API_AUTH_STRING"
    if response.status_code != 200:
        return f"HTTP {response.status_code} from {url}; a Prefect API URL ends in /api"
    return None


def unreachable_message(api_url: str, reason: str) -> str:
    """The one-line explanation for a configured server that does not answer."""
    unset = (
        "unset PREFECT_API_URL"
        if os.environ.get("PREFECT_API_URL")
        else "run `prefect config unset PREFECT_API_URL`"
    )
    return (
        f"no Prefect server answers at {api_url} ({reason}): start one with `make serve` or "
        f"`prefect server start`, or {unset} to run flows without a server"
    )


def require_api(api_url: str | None = None) -> None:
    """Raise :class:`RsSegError` (one line) when the configured Prefect API does not answer.

    ``api_url`` defaults to ``PREFECT_API_URL`` (environment or profile); without one this is a
    no-op, because flows then run on Prefect's ephemeral server.
    """
    api_url = api_url or configured_api_url()
    if not api_url:
        return
    reason = api_problem(api_url)
    if reason is not None:
        raise RsSegError(unreachable_message(api_url, reason))


def run_command(action: Callable[[], int | None]) -> int:
    """Run a flow entry point after checking the configured server; the exit code.

    An RsSegError becomes one ``error:`` line and exit code 2 (no traceback); otherwise the code is
    the action's (0 for None).
    """
    try:
        require_api()
        return action() or 0
    except RsSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails (the test ``prefect server start`` itself makes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_port(port: int, host: str = HOST) -> bool:
    """False when ``host:port`` is free, True when a Prefect server already answers there.

    Raises :class:`RsSegError` when another program holds the port.
    """
    if not port_in_use(host, port):
        return False
    if api_problem(f"http://{host}:{port}/api", timeout=HEALTH_TIMEOUT_S) is None:
        return True
    raise RsSegError(
        f"port {port} on {host} is in use by another program that is not a Prefect server: "
        "pick a free one with --port (make serve SERVE_ARGS='--port 4300') or stop that program"
    )


def server_log_path(port: int) -> Path:
    """Where the local server's output goes: ``$PREFECT_HOME/server-<port>.log``."""
    # Prefect is slow to import; serve checks ports and servers before it
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser() / f"server-{port}.log"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server when the serving process dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        tail = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    tail = [line for line in tail if line][-lines:]
    return " | ".join(tail)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it after :data:`STOP_TIMEOUT_S`."""
    if process.poll() is not None:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(STOP_TIMEOUT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_healthy(
    process: subprocess.Popen[bytes], api_url: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _log_tail(log)
            raise RsSegError(
                f"the Prefect server exited during start-up (exit code {process.returncode})"
                f"{': ' + tail if tail else ''}; full log: {log}"
            )
        if api_problem(api_url, timeout=HEALTH_TIMEOUT_S) is None:
            return
        time.sleep(0.25)
    raise RsSegError(
        f"the Prefect server did not answer at {api_url} within {timeout:g} s; log: {log}"
    )


@contextlib.contextmanager
def local_server(
    port: int = DEFAULT_PORT, host: str = HOST, timeout: float = START_TIMEOUT_S
) -> Iterator[PrefectServer]:
    """Run ``prefect server start`` on ``host:port`` for the duration of the block.

    A Prefect server that already answers on that port is used as it is (and left running); any
    other program on the port is an :class:`RsSegError`. The server's output goes to
    :func:`server_log_path`.
    """
    api_url = f"http://{host}:{port}/api"
    if check_port(port, host):
        print(f"a Prefect server already answers at {api_url}; using it (it keeps running)")
        yield PrefectServer(api_url)
        return
    log = server_log_path(port)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", host, "--port", str(port)]
    print(f"starting a Prefect server on {host}:{port} (log: {log}) ...", flush=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal Ctrl-C reaches the serving process only
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    try:
        started = time.monotonic()
        _wait_healthy(process, api_url, log, timeout)
        print(f"Prefect server ready in {time.monotonic() - started:.0f} s", flush=True)
        yield PrefectServer(api_url, started=True, log=log)
    finally:
        if process.poll() is None:
            print("stopping the Prefect server ...", flush=True)
            _stop(process)
            print("Prefect server stopped", flush=True)


@contextlib.contextmanager
def prefect_api(port: int = DEFAULT_PORT) -> Iterator[PrefectServer]:
    """The configured server (checked with :func:`require_api`), else a :func:`local_server`.

    Inside the block Prefect's ``PREFECT_API_URL`` setting and the environment (inherited by flow
    run processes) point to the server.
    """
    configured = configured_api_url()
    if configured:
        require_api(configured)
        yield PrefectServer(configured)
        return
    # Prefect is slow to import; serve checks ports and servers before it
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with local_server(port) as server:
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = server.api_url
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield server
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
