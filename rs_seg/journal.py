"""Publication journals and the folder lock: a file set is published whole, by one run at a time.

Files that belong together (a probability raster, its style, the fields) are published with one
rename each. Before the first rename a journal in each folder of the set lists that folder's
renames; a run killed between two renames is completed by the next run in the folder
(:func:`complete_interrupted_publications`).

A journal is a file anyone could have put there (copied in with a folder, unpacked from an
archive), so recovery runs only one it can prove this host's rs_seg wrote and a dead run left:

* its name and content name a process of this host and PID namespace that has ended, and the
  file is a regular file of this user;
* every file it names is a plain name in the journal's own folder (no separator, no ``..``),
  reached through that folder's descriptor without following links, and every staging name is
  the one that process made for the final name;
* each staged file is the very file the run wrote (device, inode, size and modification time
  recorded when its writing ended, one link, this user's), and each final is absent or still the
  file the run checked as its own before publishing (same identity).

Anything else is left as it is, with one warning naming the journal. Recovery never reads,
renames or removes a file outside the journal's folder.

An advisory lock (``flock`` on the folder's own descriptor: no lock file in the user's folder)
serializes publication and recovery in a folder, so two runs on the same outputs publish one
after the other instead of a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rs_seg.errors import RsSegError
from rs_seg.staging_names import (
    JournalName,
    is_rs_seg_name,
    journal_name,
    owner_token,
    parse_journal,
    parse_staging,
    staging_name,
)

log = logging.getLogger(__name__)

LOCK_WAIT_S = 600.0  # publication only renames: another run holds a folder for milliseconds
_VERSION = 1
_MAX_BYTES = 1 << 20
_MAX_FILES = 64
_WARNED: set[Path] = set()  # journals this process has already warned about

Identity = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


# --- the folder lock -----------------------------------------------------------------------------


class _Held(threading.local):
    """Folders (device, inode) this thread holds the lock of, with how many times it took each."""

    def __init__(self) -> None:
        self.depth: dict[tuple[int, int], int] = {}


_HELD = _Held()


@contextlib.contextmanager
def folder_lock(folders: Iterable[Path], output: Path) -> Iterator[None]:
    """Hold the publication lock of each folder (in one order, so two runs never deadlock).

    The same thread may take a lock it holds again. A folder that cannot be opened or a file
    system without ``flock`` goes unlocked rather than failing. After
    :data:`LOCK_WAIT_S` the wait ends in one line naming ``output``.
    """
    with contextlib.ExitStack() as stack:
        for folder in sorted({Path(f).absolute() for f in folders}, key=str):
            stack.enter_context(_locked(folder, output))
        yield


@contextlib.contextmanager
def _locked(folder: Path, output: Path) -> Iterator[None]:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield  # no lock where the folder cannot be opened for reading
        return
    try:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key not in _HELD.depth:
            _wait_for_lock(fd, output)
        _HELD.depth[key] = _HELD.depth.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD.depth[key] -= 1
            if not _HELD.depth[key]:
                del _HELD.depth[key]
    finally:
        os.close(fd)  # releases the flock when this descriptor holds it


def _wait_for_lock(fd: int, output: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError:
            return  # a file system without flock (some network shares): unlocked
        if not waiting:
            log.info("%s: waiting for another rs-seg run that is publishing there", output)
            waiting = True
        if time.monotonic() > deadline:
            raise RsSegError(
                f"another rs-seg run has been publishing into this folder for {LOCK_WAIT_S:.0f} "
                "s (stopped?); nothing was replaced: try again once it has ended",
                output,
            )
        time.sleep(0.05)


# --- writing journals ----------------------------------------------------------------------------


def identity(info: os.stat_result) -> Identity:
    """What tells one file from another and from its own later versions."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def write_journals(pairs: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Write, durably, one journal per folder of the set; returns them (remove them when done).

    Each staged file is flushed to disk first, so a power cut after a rename cannot leave a
    final without its content, and a journal never names a file that is not complete.
    """
    folders: dict[Path, list[tuple[Path, Path]]] = {}
    for staging, final in pairs:
        if staging.parent != final.parent:
            raise ValueError(f"{staging} is not beside {final}")
        folders.setdefault(final.parent, []).append((staging, final))
    owner, pid, start = owner_token().split("-")
    name = journal_name(pairs[-1][1].name)
    journals = []
    for folder, members in folders.items():
        files = []
        for staging, final in members:
            _fsync(staging)
            old = _entry(None, final)
            files.append({
                "staging": staging.name,
                "final": final.name,
                "staged": identity(os.lstat(staging)),
                "old": None if old is None else identity(old),
            })  # fmt: skip
        document = {"rs_seg_publish": _VERSION, "owner": owner, "pid": int(pid),
                    "start": int(start), "set": pairs[-1][1].name, "files": files}  # fmt: skip
        temporary = folder / f"{staging_name(members[0][1].name)}.publish.json"
        _write_durably(folder / name, temporary, json.dumps(document, indent=1).encode())
        journals.append(folder / name)
    return journals


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, temporary: Path, data: bytes) -> None:
    """``data`` on disk under ``path``: written and flushed under a staging name, then renamed."""
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on file systems that sync folders
        _fsync(path.parent)


# --- completing a publication a killed run left half-done ---------------------------------------


class UnprovenJournalError(Exception):
    """A journal recovery cannot prove this host's rs_seg wrote; the text says why."""


@dataclass(frozen=True)
class _Rename:
    staging: str
    final: str
    staged: Identity
    old: Identity | None


def complete_interrupted_publications(folder: Path) -> int:
    """Finish file-set publications that dead runs left half-done in ``folder``; returns how many.

    Only journals provably written by a dead run of this host are completed (module doc), each
    rolled forward: its staged files were complete when it was written, so the result is the
    whole new set. Any other journal is left, with one warning naming it.
    """
    folder = Path(folder)
    done = 0
    with folder_lock([folder], folder), contextlib.ExitStack() as stack:
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 0
        stack.callback(os.close, dir_fd)
        with os.scandir(dir_fd) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            journal = parse_journal(name)
            if journal is None or not journal.of_dead_run():
                continue
            try:
                renames = proven_renames(dir_fd, name, journal)
            except UnprovenJournalError as exc:
                _warn_once(folder / name, str(exc))
                continue
            for rename in renames:
                os.replace(rename.staging, rename.final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.unlink(name, dir_fd=dir_fd)
            finals = ", ".join(str(folder / rename.final) for rename in renames) or "its files"
            log.warning("completed the publication of %s that a killed run left half-done", finals)
            done += 1
    return done


def _warn_once(path: Path, reason: str) -> None:
    if path not in _WARNED:
        _WARNED.add(path)
        log.warning("%s: left as it is: not a publication journal rs-seg can prove it wrote (%s)",
                    path, reason)  # fmt: skip


def proven_renames(dir_fd: int, name: str, journal: JournalName) -> list[_Rename]:
    """The renames still to do for the journal ``name`` in the folder ``dir_fd``, once proven.

    Raises UnprovenJournalError for anything the module doc does not allow.
    """
    renames = _renames(_read(dir_fd, name), journal)
    pending = []
    for rename in renames:
        staged, final = _entry(dir_fd, rename.staging), _entry(dir_fd, rename.final)
        if staged is None:
            if final is None or identity(final) != rename.staged:
                raise UnprovenJournalError(
                    f"{rename.final} is neither staged nor published by that run"
                )
            continue  # renamed before the run was killed
        if not _own_file(staged) or identity(staged) != rename.staged or staged.st_nlink != 1:
            raise UnprovenJournalError(f"{rename.staging} is not the file that run staged")
        if final is not None and (not stat.S_ISREG(final.st_mode) or identity(final) != rename.old):
            raise UnprovenJournalError(f"{rename.final} is not the file that run was replacing")
        pending.append(rename)
    return pending


def _read(dir_fd: int, name: str) -> object:
    info = os.lstat(name, dir_fd=dir_fd)
    if not _own_file(info):
        raise UnprovenJournalError("not a file of this user")
    if info.st_size > _MAX_BYTES:
        raise UnprovenJournalError("too large")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise UnprovenJournalError("not JSON") from None


def _own_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _entry(dir_fd: int | None, name: str | Path) -> os.stat_result | None:
    """The entry ``name`` itself (links not followed), None when there is none."""
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _renames(document: object, journal: JournalName) -> list[_Rename]:
    """The journal's renames, each checked to be one that the journal's process would make."""
    if not isinstance(document, dict) or document.get("rs_seg_publish") != _VERSION:
        raise UnprovenJournalError("not a journal of this rs-seg release")
    writer = [document.get(key) for key in ("owner", "pid", "start")]
    if writer != [journal.owner, journal.pid, journal.start] or any(
        isinstance(value, bool) for value in writer
    ):
        raise UnprovenJournalError("its content names another process than its name")
    files = document.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= _MAX_FILES:
        raise UnprovenJournalError("no list of files")
    renames = [_rename(item, journal) for item in files]
    names = [r.staging for r in renames] + [r.final for r in renames]
    if len(set(names)) != len(names):
        raise UnprovenJournalError("a file is named twice")
    return renames


def _rename(item: object, journal: JournalName) -> _Rename:
    if not isinstance(item, dict):
        raise UnprovenJournalError("a file entry is not an object")
    staging, final = item.get("staging"), item.get("final")
    if not isinstance(staging, str) or not isinstance(final, str):
        raise UnprovenJournalError("a file entry without names")
    if not (_plain(staging) and _plain(final)) or is_rs_seg_name(final):
        raise UnprovenJournalError(f"{final!r} or {staging!r} is not a plain name in its folder")
    parsed = parse_staging(staging, Path(final).stem)
    if (
        parsed is None
        or parsed.tag != "partial"
        or not parsed.made_by(journal.owner, journal.pid, journal.start)
        or parsed.tail != Path(final).suffix
    ):
        raise UnprovenJournalError(f"{staging!r} is not a staging name that run made for {final!r}")
    old = item.get("old")
    return _Rename(staging, final, _identity(item.get("staged")),
                   None if old is None else _identity(old))  # fmt: skip


def _plain(name: str) -> bool:
    """A name of an entry in the folder itself: no separator, not ``.`` or ``..``."""
    return 0 < len(name) <= 255 and "/" not in name and "\0" not in name and name not in (".", "..")


def _identity(value: object) -> Identity:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UnprovenJournalError("a file entry without the identity of its file")
    return value[0], value[1], value[2], value[3]
