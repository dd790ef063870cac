"""How every ``rs-seg`` command runs: plain logs, one-line errors, interrupts that unwind.

Kept apart from the commands (:mod:`rs_seg.cli`) so the command module holds the mapping of flags
to configs, and this the behaviour every command shares.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from rs_seg.errors import RsSegError, Terminated, printable
from rs_seg.remote import redact_text
from rs_seg.staging import forget_interrupts, raise_interrupt
from rs_seg.staging_names import public_text

log = logging.getLogger("rs_seg")
F = TypeVar("F", bound=Callable[..., Any])


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # whoever logged it: no URL's secrets, no hidden staging name (its output's name instead)
        message = public_text(redact_text(super().format(record)))
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


def setup_logging(verbose: bool = False) -> None:
    """Plain, readable logs on stderr; third-party chatter stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for chatty in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not hasattr(warnings.showwarning, "rs_seg"):  # once, however often commands run
        warnings.showwarning = _logged_warning(warnings.showwarning)


_GDAL_BINDINGS = tuple(f"{os.sep}{name}{os.sep}" for name in ("pyogrio", "rasterio", "fiona"))


def _logged_warning(default: Callable[..., None]) -> Callable[..., None]:
    """GDAL's warnings, which pyogrio raises as Python warnings, as one ``warning:`` line each.

    Python printed them with the library's file and line, twice or more (once per call that read
    the file) and naming hidden staging copies; logged, each message reads ``warning: GDAL: ...``
    once, through the formatter that shows staging names as their outputs. Other warnings keep
    Python's form.
    """
    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, *rest: Any) -> None:
        if not any(binding in filename for binding in _GDAL_BINDINGS):
            default(message, category, filename, *rest)
        elif str(message) not in shown:
            shown.add(str(message))
            log.warning("GDAL: %s", message)

    show.rs_seg = True  # type: ignore[attr-defined]
    return show


def reports_errors(command: F) -> F:
    """Turn :class:`RsSegError` into one ``error:`` line and exit status 2.

    Ctrl-C (130) and SIGTERM (143) unwind like an error, so no partial output is kept; a disk
    that fills up outside any staged output is reported in one line too.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _interrupts_raised():
            return _reported(command, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _interrupts_raised() -> Iterator[None]:
    """SIGINT and SIGTERM raise (and are remembered, :func:`staging.raise_interrupt`) meanwhile.

    A SIGINT the shell ignores (a background job) stays ignored; the earlier handlers come back
    afterwards, so a command run inside another program leaves its signals as they were.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    forget_interrupts()
    earlier = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, raise_interrupt)
    if earlier[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_interrupt)
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)


def _reported(command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a command; its errors and interrupts become one line and an exit status."""
    try:
        return command(*args, **kwargs)
    except RsSegError as exc:
        typer.echo(f"error: {public_text(str(exc))}", err=True)
        raise typer.Exit(2) from None
    except UnicodeEncodeError as exc:
        if "surrogates" not in exc.reason:
            raise
        # the last net for a name that is not UTF-8 (the configs refuse them before any work)
        named = printable(exc.object)[:300] if isinstance(exc.object, str) else "a name"
        typer.echo(f"error: {named}: a name that is not valid UTF-8; rename it", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        typer.echo(f"error: {exc.filename or ''}: no space left on the device", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        typer.echo(
            f"{'terminated' if terminated else 'interrupted'}: no partial output was kept",
            err=True,
        )
        raise typer.Exit(143 if terminated else 130) from None
