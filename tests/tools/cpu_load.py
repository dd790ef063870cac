"""Run a command while other processes keep the CPU cores busy (a loaded CI machine on demand).

    python tests/tools/cpu_load.py [--burners N] [--] COMMAND [ARGS...]

Starts ``N`` pure-Python busy loops (default: one per core, ``os.cpu_count()``), runs ``COMMAND``
in the foreground, then stops the loops again, also when the command fails or is interrupted
(Ctrl-C, SIGTERM). The exit code is the command's. No extra dependency: each burner is
``python -c "while True: pass"`` at normal priority, so it competes for the cores as an unrelated
job would. ``make test-loaded`` runs ``make test`` this way (issue 10: the suite has to pass on a
fresh clone while two other processes keep both cores of the CI machine busy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

BURN = "while True: pass"
GRACE_S = 30.0  # after a SIGTERM or Ctrl-C, how long the command may take to stop before a kill


def start_burners(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` busy-loop processes, each in its own session so a terminal Ctrl-C spares them
    (they are stopped here, after the command)."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", BURN],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # On Linux the kernel stops a burner if this wrapper dies without cleaning up.
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        for _ in range(count)
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop(burners: list[subprocess.Popen[bytes]]) -> None:
    """Kill every burner (by its own pid) and reap it."""
    for burner in burners:
        with contextlib.suppress(ProcessLookupError):
            burner.kill()
    for burner in burners:
        burner.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cpu_load.py", description="run COMMAND while N busy loops keep the cores busy"
    )
    parser.add_argument(
        "--burners", type=int, default=os.cpu_count() or 2,
        help="busy-loop processes to run beside the command [one per core]",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if args.burners < 0:
        parser.error("--burners must be 0 or more")

    burners = start_burners(args.burners)
    pids = " ".join(str(b.pid) for b in burners)
    print(f"cpu_load: {args.burners} busy loop(s) running (pids {pids})", file=sys.stderr)
    started = time.monotonic()
    child: subprocess.Popen[bytes] | None = None
    received: list[tuple[int, float]] = []

    def forward(signum: int, _frame: object) -> None:
        """SIGTERM (a CI cancel) or SIGINT: the command gets it and :data:`GRACE_S` to finish."""
        received.append((signum, time.monotonic()))
        if child is not None and child.poll() is None and signum != signal.SIGINT:
            child.send_signal(signum)  # a terminal's Ctrl-C reaches the command by itself

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        child = subprocess.Popen(command)
        while child.poll() is None:
            if received and time.monotonic() - received[0][1] > GRACE_S:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.5)
        code = child.returncode
        if code < 0:  # ended by a signal: the shell's convention, 128 + the signal number
            return 128 - code
        return 128 + received[0][0] if received and code == 0 else code
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        stop(burners)
        print(
            f"cpu_load: busy loops stopped after {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
