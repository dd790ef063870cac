"""Output safety: rs_seg replaces only what it wrote, and publishes only complete results.

Three rules, each enforced here so every command gets them from one place:

* **Ownership.** An existing output is replaced only with ``--overwrite`` and only when rs_seg
  recognizes it as its own: a folder must hold the marker file of the command that writes it and
  nothing but the names that command writes (:class:`FolderKind`); a file must carry rs_seg's
  metadata (the ``owned`` recognizers). An output may never be, or contain, an input of the same
  command (:func:`check_not_inputs`), and a folder output may not be the working folder or one
  above it.
* **Build beside, publish at once.** Work goes into a hidden staging sibling
  (``.<stem>.partial-<owner>-<pid>-<start>-<random><suffix>``, same folder so the final rename
  stays on one file system). A file is published with one :func:`os.replace`; a folder with one
  atomic exchange of the two directory entries (Linux ``renameat2(RENAME_EXCHANGE)``), so a
  reader sees the old folder or the new one, never neither. Several files that belong together
  (fields and their probability raster) are published under a journal that the next run
  completes if the process dies half-way, and under a folder lock, so two runs never publish a
  mix (:mod:`rs_seg.journal`).
* **Leftovers are cleaned up.** The staging name records host, PID namespace and process (and
  when it started), so the next run on the same output removes what a killed run (SIGKILL, power
  loss) left behind, and never touches the staging of a run that is still alive, of another
  container, or of another user (:func:`remove_leftovers`, :mod:`rs_seg.staging_names`).

A failure inside the ``with`` block removes the staging copy; a full disk (or any failed write)
becomes one line naming the final output. ``RS_SEG_KILL_AT=<step>`` makes the process SIGKILL
itself at a named publication step: the fault-injection tests use it to prove the rules above.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rs_seg.errors import RsSegError, Terminated
from rs_seg.journal import complete_interrupted_publications as complete_interrupted_publications
from rs_seg.journal import folder_lock, write_journals
from rs_seg.output_sets import FIELD_COLUMNS as FIELD_COLUMNS
from rs_seg.output_sets import STYLE_MARKER as STYLE_MARKER
from rs_seg.output_sets import Owned as Owned
from rs_seg.output_sets import fields_written_by_rs_seg as fields_written_by_rs_seg
from rs_seg.output_sets import raster_written_by_rs_seg as raster_written_by_rs_seg
from rs_seg.output_sets import style_written_by_rs_seg as style_written_by_rs_seg
from rs_seg.staging_names import OWNER_ID as OWNER_ID
from rs_seg.staging_names import is_rs_seg_name, parse_staging, public_text, staging_name
from rs_seg.staging_names import process_alive as process_alive

log = logging.getLogger(__name__)

KILL_AT_ENV = "RS_SEG_KILL_AT"
_DISK_FULL_TEXT = ("no space left", "disk is full", "disk quota", "free disk space")
_LOW_SPACE_BYTES = 1 << 20  # after a failed write, less than this free means the disk filled up
# GDAL's and libtiff's words for a write that failed (the errno stays in C); a file cut short by
# one fails to read back, which counts when the error names a staging file (_failed_write)
_WRITE_FAILED_TEXT = ("write error", "write failed", "failed to write", "cannot write",
                      "error writing", "fillemptytiles", "tiffappendtostrip",
                      "tiffwritedirectory", "short write")  # fmt: skip
_IO_LIBRARIES = ("rasterio", "pyogrio", "pyarrow", "sqlite3")


def fault_point(step: str) -> None:
    """Test hook: signal this process when ``RS_SEG_KILL_AT`` names ``step``.

    ``RS_SEG_KILL_AT=step[#n][:SIGNAL]`` sends SIGNAL (default SIGKILL; SIGINT and SIGTERM test
    the clean-up path) the n-th time (default first) the step is reached. Steps: ``staged`` (work
    complete, nothing published), ``journal`` (a file set's journal written), ``replaced-<k>``
    (k files of a set published), ``swapped`` (a folder exchanged, the old one not yet removed),
    ``published``.
    """
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    target, _, name = wanted.partition(":")
    target, _, nth = target.partition("#")
    if target != step:
        return
    _FAULT_COUNTS[step] = _FAULT_COUNTS.get(step, 0) + 1
    if _FAULT_COUNTS[step] != int(nth or 1):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signum = getattr(signal, name or "SIGKILL")
    os.kill(os.getpid(), signum)
    if signum not in (signal.SIGINT, signal.SIGTERM):
        return  # SIGKILL ends the process, SIGSTOP pauses it right here
    # A caught signal's Python handler runs at the interpreter's next check, which need not be
    # before the next step: wait here so the interrupt is raised at this step, not after it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)


_FAULT_COUNTS: dict[str, int] = {}


# --- interrupts ----------------------------------------------------------------------------------
_INTERRUPTS: list[int] = []  # SIGINT / SIGTERM received since the command started


def raise_interrupt(signum: int, frame: object) -> None:
    """Handler for SIGINT and SIGTERM: raise the interrupt, and remember it.

    Code outside rs_seg (a bare ``except:`` in a library) can swallow the KeyboardInterrupt; the
    record lets :func:`check_not_interrupted` raise it again before anything is published.
    """
    _INTERRUPTS.append(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def forget_interrupts() -> None:
    """A new command starts with no interrupt on record."""
    _INTERRUPTS.clear()


def check_not_interrupted() -> None:
    """Raise again an interrupt this process received: no output is published after Ctrl-C."""
    if _INTERRUPTS:
        raise Terminated if signal.SIGTERM in _INTERRUPTS else KeyboardInterrupt


# --- names of staging copies and their leftovers -------------------------------------------------


def staging_path(final: Path, tag: str = "partial") -> Path:
    """A hidden sibling that keeps the suffix (GDAL picks drivers by extension) and its owner."""
    final = Path(final)
    return final.with_name(staging_name(final.name, tag))


def scratch_path(staging: Path, label: str) -> Path:
    """A helper file of one staging copy (e.g. tiles before the COG copy); same leftover rules."""
    stem = staging.stem if staging.name.startswith(".") else f".{staging.stem}"
    return staging.with_name(f"{stem}.{label}{staging.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _users(entry: Path) -> bool:
    """Whether the entry (not what a link points to) belongs to the user running rs_seg."""
    try:
        return entry.lstat().st_uid == os.geteuid()
    except OSError:
        return False


def remove_leftovers(final: Path) -> int:
    """Remove staging copies of ``final`` left by dead runs of this host; returns how many.

    First completes any file-set publication a dead run left half-done in the folder (its staged
    files are complete and listed in a journal). Only names this host's rs_seg makes are removed,
    and only when the process that made them (in this PID namespace) has ended and the entry is
    this user's: a live run's staging, another container's or another user's is left alone, and so
    is anything named otherwise. The old output a fallback publication had moved aside
    (``.replaced-``) is put back when the new one never arrived.
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return 0
    removed = 0
    with folder_lock([parent], final):
        complete_interrupted_publications(parent)
        for entry in parent.iterdir():
            name = parse_staging(entry.name, final.stem)
            if name is None or not name.of_dead_run() or not _users(entry):
                continue
            original = parent / name.original
            if name.tag == "replaced" and not os.path.lexists(original):
                entry.rename(original)
                log.warning("%s: restored the previous output a killed run had moved aside", final)
                continue
            _remove(entry)
            removed += 1
    if removed:
        log.info("%s: removed %d leftover staging copies of interrupted runs", final, removed)
    return removed


# --- ownership -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderKind:
    """What one command writes into its output folder, so ``--overwrite`` knows its own folders.

    Attributes:
        command: How the user calls the command, for messages (``rs-seg prepare``).
        marker: A file only this command writes into the folder (``summary.json``).
        names: ``fnmatch`` patterns of every top-level entry the command writes.
    """

    command: str
    marker: str
    names: tuple[str, ...]

    def owns(self, name: str) -> bool:
        """Whether a top-level entry is one this command writes (or a staging copy of one)."""
        if is_rs_seg_name(name):
            return True  # rs_seg's own staging names, e.g. a run.json write a kill cut short
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)


def refuse_working_folder(path: Path) -> None:
    """A folder output is replaced as a whole: never the working folder or one of its parents."""
    resolved = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RsSegError(
            "is the working folder or one above it; an output folder is replaced as a whole, so "
            "name a new subfolder (e.g. ./out)",
            path,
        )


def check_folder_output(path: Path, overwrite: bool, kind: FolderKind) -> None:
    """Refuse before any work: an existing folder without ``--overwrite``, or one not ours.

    An empty folder is used as if it did not exist. With ``--overwrite`` every entry must be a
    name ``kind`` writes and its marker must be there; the first foreign entry is named.
    """
    path = Path(path)
    refuse_working_folder(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise RsSegError(f"exists and is not a folder; {kind.command} writes a folder here", path)
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries:
        return
    if not overwrite:
        raise RsSegError("output already exists; pass --overwrite to replace it", path)
    foreign = next((name for name in entries if not kind.owns(name)), None)
    if foreign is not None:
        raise RsSegError(
            f"holds {foreign!r}, which {kind.command} did not write; --overwrite replaces only a "
            f"folder {kind.command} wrote, so choose a new or empty folder",
            path,
        )
    if kind.marker not in entries:
        raise RsSegError(
            f"has no {kind.marker}, so it is not a folder {kind.command} wrote; choose a new or "
            "empty folder",
            path,
        )


def check_file_output(path: Path, overwrite: bool, owned: Owned | None = None) -> None:
    """Refuse before any work: an existing file without ``--overwrite``, or one not rs_seg's.

    ``owned`` recognizes rs_seg's own files by their content (metadata); None means the caller
    writes the path inside a folder it owns.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise RsSegError("is a folder; give a file name for this output", path)
    if not overwrite:
        raise RsSegError("output already exists; pass --overwrite to replace it", path)
    if owned is not None and not owned(path):
        raise RsSegError(
            "was not written by rs-seg; --overwrite replaces only rs-seg's own outputs, so "
            "choose another name",
            path,
        )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_inputs(outputs: Sequence[Path | None], inputs: Sequence[Path | None]) -> None:
    """Refuse (with or without ``--overwrite``) an output that is, or holds, an input."""
    for output in (Path(o) for o in outputs if o is not None):
        resolved = output.resolve()
        for source in (Path(i) for i in inputs if i is not None):
            same = _inside(source.resolve(), resolved)
            with contextlib.suppress(OSError):
                same = same or (output.is_file() and output.samefile(source))
            if same:
                raise RsSegError(
                    f"is (or holds) the input {source}; an output never replaces an input, so "
                    "choose another path",
                    output,
                )


def check_distinct(paths: Sequence[Path]) -> None:
    """Refuse two outputs of one command on the same path."""
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise RsSegError("two outputs share one path; choose different output names")


# --- staging and publication ---------------------------------------------------------------------


def _make_parents(final: Path) -> list[Path]:
    """Create the missing parent folders of ``final``; returns those created, deepest first."""
    created = []
    folder = final.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsSegError(
            f"cannot create the output folder ({exc.strerror})", final.parent
        ) from None
    if not os.access(final.parent, os.W_OK):
        raise RsSegError("output folder is not writable", final.parent)
    return created


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during (rasterio chains GDAL's errors)."""
    chain = [exc]
    while len(chain) < 16 and (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(nxt)
    return chain


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` means the device holding ``folder`` is full (errno, message, free space).

    Interrupts and rs_seg's own errors never are: they already say what happened.
    """
    if not isinstance(exc, Exception) or isinstance(exc, RsSegError):
        return False
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(link).lower() for text in _DISK_FULL_TEXT):
            return True
    try:
        return shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
    except OSError:
        return False


def _failed_write(exc: BaseException, staging: Sequence[Path]) -> str | None:
    """Why writing the output failed, when ``exc`` says a write failed; else None.

    A full disk is not always reported as one: GDAL and libtiff print the errno and raise
    "Write failed" or a failed read of the file cut short, and scratch files removed on the way
    out have freed space again by the time the staging sees the error. Any failure that names a
    staging file is about writing this output too. The reason names final outputs only.
    """
    if not isinstance(exc, Exception):
        return None
    names = [path.name for path in staging] + [path.stem for path in staging]
    for link in _chain(exc):
        text = str(link)
        about_staging = any(name in text for name in names) and _io_error(link)
        if isinstance(link, RsSegError) and not about_staging:
            return None  # rs_seg's own error about something else: it says what happened
        if about_staging or any(word in text.lower() for word in _WRITE_FAILED_TEXT):
            return public_text(text)[:300]
    return None


def _io_error(exc: BaseException) -> bool:
    """An error of a file: the OS's, rs_seg's one-line kind, or one of the I/O libraries'."""
    library = type(exc).__module__.partition(".")[0]
    return isinstance(exc, OSError | RsSegError) or library in _IO_LIBRARIES


@contextlib.contextmanager
def _cleaned_up_on_failure(
    staging: Sequence[Path], final: Path, created: list[Path]
) -> Iterator[None]:
    """Remove staging copies (and parents this run created) when the block fails.

    A full disk, or a write that failed, is reported as one line naming the final output, never
    the hidden staging name.
    """
    try:
        yield
    except BaseException as exc:
        full = is_disk_full(exc, final.parent)
        failed = None if full else _failed_write(exc, staging)
        for path in staging:
            _remove(path)
            _remove(scratch_path(path, "tiles"))
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if full:
            raise RsSegError(
                "no space left on the device while writing this output; nothing was written or "
                "replaced: free some space or choose another folder",
                final,
            ) from None
        if failed is not None:
            raise RsSegError(
                f"writing this output failed ({failed}), most often because the device is full "
                f"({_free_space(final.parent)} free now); nothing was written or replaced: free "
                "some space or choose another folder",
                final,
            ) from None
        raise


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB"
    except OSError:
        return "unknown space"


def _check_free(final: Path, overwrite: bool) -> None:
    if os.path.lexists(final) and not overwrite:
        raise RsSegError("output already exists; pass --overwrite to replace it", final)


@contextlib.contextmanager
def staged_dir(
    final: Path, overwrite: bool = False, kind: FolderKind | None = None
) -> Iterator[Path]:
    """An empty staging folder that replaces ``final`` in one step when the block completes.

    ``kind`` says what may be replaced (:func:`check_folder_output`), checked before the work and
    again just before publication (a file the user added meanwhile is not deleted). Without a
    kind the caller vouches that ``final`` lies inside a folder it owns.
    """
    final = Path(final)
    _check_folder(final, overwrite, kind)
    created = _make_parents(final)
    remove_leftovers(final)
    staging = staging_path(final)
    staging.mkdir()
    with _cleaned_up_on_failure([staging], final, created):
        yield staging
        fault_point("staged")
        with folder_lock([final.parent], final):
            _check_folder(final, overwrite, kind)
            publish_dir(staging, final)
        fault_point("published")


def _check_folder(final: Path, overwrite: bool, kind: FolderKind | None) -> None:
    if kind is not None:
        check_folder_output(final, overwrite, kind)
    else:
        _check_free(final, overwrite)


@contextlib.contextmanager
def staged_file(final: Path, overwrite: bool = False, owned: Owned | None = None) -> Iterator[Path]:
    """A staging path (same folder and suffix) that replaces ``final`` with one os.replace."""
    with staged_files([final], overwrite, [owned]) as (staging,):
        yield staging


@contextlib.contextmanager
def staged_files(
    finals: Sequence[Path], overwrite: bool = False, owned: Sequence[Owned | None] | None = None
) -> Iterator[list[Path]]:
    """Staging paths for files that belong together, published together when the block completes.

    Each file appears with one os.replace, the last one (the primary output, e.g. the fields)
    last. For two or more files a journal in each of their folders lists that folder's staged
    files first, so that a run killed between two replacements is completed by the next run on
    these outputs (:func:`rs_seg.journal.complete_interrupted_publications`) instead of leaving
    old and new mixed. Ownership is checked again and the files are published while holding the
    lock of their folders: a second run on the same outputs publishes before or after, never in
    between.
    """
    finals = [Path(f) for f in finals]
    owned = list(owned) if owned is not None else [None] * len(finals)
    check_distinct(finals)
    for final, recognizer in zip(finals, owned, strict=True):
        check_file_output(final, overwrite, recognizer)
    created = [folder for final in finals for folder in _make_parents(final)]
    for final in finals:
        remove_leftovers(final)
    stagings = [staging_path(final) for final in finals]
    with _cleaned_up_on_failure(stagings, finals[-1], created):
        yield stagings
        for staging in stagings:
            if not staging.exists():
                raise RuntimeError(f"{staging}: nothing was written")
        fault_point("staged")
        with folder_lock({final.parent for final in finals}, finals[-1]):
            for final, recognizer in zip(finals, owned, strict=True):
                check_file_output(final, overwrite, recognizer)
            _publish_files(list(zip(stagings, finals, strict=True)))
        fault_point("published")


def _publish_files(pairs: list[tuple[Path, Path]]) -> None:
    check_not_interrupted()
    journals: list[Path] = []
    if len(pairs) > 1:
        journals = write_journals(pairs)
        fault_point("journal")
    for number, (staging, final) in enumerate(pairs, start=1):
        staging.replace(final)
        if len(pairs) > 1:
            fault_point(f"replaced-{number}")
    for journal in journals:
        journal.unlink(missing_ok=True)


def _libc_exchange() -> Callable[[Path, Path], bool] | None:
    """``renameat2(RENAME_EXCHANGE)`` on Linux (glibc 2.28+); None where it does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return None
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: Path, b: Path) -> bool:
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False  # the file system cannot exchange: fall back to two renames
        raise OSError(code, os.strerror(code), str(b))

    return exchange


_EXCHANGE = _libc_exchange()


def publish_dir(staging: Path, final: Path) -> None:
    """Put a finished staging folder at ``final``, replacing an old one in one atomic step.

    Where the file system cannot exchange two entries, the old folder is renamed aside first; a
    kill between the two renames is repaired by the next run (:func:`remove_leftovers` puts the
    old folder back).
    """
    check_not_interrupted()
    if not os.path.lexists(final):
        staging.rename(final)
        return
    if _EXCHANGE is not None and _EXCHANGE(staging, final):
        fault_point("swapped")
        _remove(staging)  # now the old output
        return
    aside = staging_path(final, "replaced")
    final.rename(aside)
    fault_point("swapped")
    staging.rename(final)
    _remove(aside)


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a staging sibling, then os.replace: readers never see half a file."""
    path = Path(path)
    temporary = staging_path(path)
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
