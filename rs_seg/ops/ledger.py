"""A processing ledger in SQLite: which scene was mapped with which model, exactly once.

Scheduled runs over an incoming folder must neither skip nor double-process a scene, even when two
runs overlap or one crashes. Each scene is keyed by a fingerprint of its content (so a renamed copy
is not mapped twice and a changed file is mapped again) and by the model id (so a new model maps
everything again, unless that is switched off). A run *claims* a key inside an ``IMMEDIATE``
transaction before working on it; SQLite's lock makes the claim atomic across processes and
machines sharing the file. A claim older than ``stale_after`` seconds belongs to a run that died
and may be taken over, and so may at once a claim whose process on this host has ended; a failed
scene is retried by the next run without blocking the others.

The ledger also remembers how each file looked when a scan last saw it (size, mtime, since when it
has not changed), so a file that is still being copied can be told from a complete one without
sleeping in the scan (:meth:`Ledger.sight`). A ledger file deleted or replaced during a run loses
that run's claims; recording an outcome then writes the row again instead of losing it silently.

A scene from a STAC catalog is keyed by a fingerprint of its item instead of its bytes (a remote
COG is never downloaded whole, :mod:`rs_seg.ops.stac`) and its row records the item id.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from rs_seg.errors import RsSegError
from rs_seg.staging import process_alive

log = logging.getLogger(__name__)
ANY_MODEL = "*"
_CHUNK = 8 * 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    fingerprint TEXT NOT NULL,
    model_id    TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 1,
    owner       TEXT,
    claimed_at  REAL NOT NULL,
    finished_at REAL,
    output      TEXT,
    error       TEXT,
    item_id     TEXT,
    PRIMARY KEY (fingerprint, model_id)
)
"""
# Fingerprints of files as last seen (path, size, mtime): a schedule that scans a large archive
# every few minutes re-reads only the files that changed, not every byte of every scene.
_FINGERPRINTS = """
CREATE TABLE IF NOT EXISTS fingerprints (
    path        TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
)
"""
# How each file looked at the last scan, and since when it has looked like that: a file whose size
# and mtime have not changed for the settle interval is no longer being written. ``readable``: it
# passed the completeness read at this size and mtime (not repeated on every scan).
_SIGHTINGS = """
CREATE TABLE IF NOT EXISTS sightings (
    path         TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    stable_since REAL NOT NULL,
    readable     INTEGER NOT NULL DEFAULT 0
)
"""
_READ_ONLY_HINT = "make it writable, or set incoming.ledger to a file in a writable folder"
_NOTHING_DONE = ". Nothing was claimed or written"


def content_fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes (streamed), shortened to 20 hex digits."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise RsSegError(f"cannot read the scene ({exc.strerror})", path) from None
    return digest.hexdigest()[:20]


def check_writable(path: Path, before_run: bool = False) -> None:
    """Raise a one-line :class:`RsSegError` when the ledger cannot be written; creates nothing.

    SQLite in WAL mode writes the file and creates ``-wal`` and ``-shm`` files beside it, so the
    folder must be writable too. ``os.access`` also reports a read-only mount to root, for whom
    file permissions do not apply. ``before_run``: checked before a run touches anything, so the
    message can say that nothing was claimed or written.
    """
    hint = _READ_ONLY_HINT + (_NOTHING_DONE if before_run else "")
    path = Path(path)
    if not path.exists():
        folder = next(p for p in path.parents if p.exists())
        if os.access(folder, os.W_OK):
            return
        why = _read_only_mount(folder) or f"{folder} is not writable"
        raise RsSegError(f"cannot create the ledger ({why}); {hint}", path)
    if not os.access(path, os.W_OK):
        why = "the file is not writable"
    elif not os.access(path.parent, os.W_OK):
        why = "its folder is not writable, and SQLite writes -wal and -shm files beside it"
    else:
        return
    why = _read_only_mount(path.parent) or why
    raise RsSegError(f"ledger is read-only ({why}); {hint}", path)


def _read_only_mount(folder: Path) -> str | None:
    """Why writes fail when ``folder`` is on a read-only mount (None otherwise)."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return f"{folder} is on a read-only file system" if read_only else None


def run_owner() -> str:
    """Who holds a claim: host and process, shown when a scene is busy or stuck."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Sighting:
    """A file as this scan saw it, and since when it has looked the same."""

    path: Path
    size: int
    mtime_ns: int
    stable_since: float  # epoch seconds; the file has not changed since then, as far as we know
    readable: bool  # passed the completeness read at this size and mtime

    def stable_for(self, now: float | None = None) -> float:
        """Seconds the file has been unchanged."""
        return max(0.0, (time.time() if now is None else now) - self.stable_since)


def owner_is_gone(owner: str | None) -> bool:
    """A claim's process ran on this host and has ended (SIGKILL, power cut): take it over now.

    Claims of other hosts cannot be checked from here; they wait for ``stale_after``.
    """
    host, _, pid = (owner or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


@dataclass(frozen=True)
class Entry:
    """One row of the ledger."""

    fingerprint: str
    model_id: str
    path: str
    status: str
    attempts: int
    owner: str | None
    claimed_at: float
    finished_at: float | None
    output: str | None
    error: str | None
    item_id: str | None = None  # the STAC item of the scene; None for inbox scenes


class Ledger:
    """The SQLite ledger file (created on first use); safe to share between processes."""

    def __init__(self, path: Path, stale_after: float = 6 * 3600) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self._held: sqlite3.Connection | None = None  # the connection of a scan (scanning())
        check_writable(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RsSegError(f"cannot open the ledger database ({exc})", self.path) from None
        with self._connect():  # creates the file and the tables
            pass

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection, with the tables in place; SQLite errors become one-line RsSegErrors.

        Creating the tables on every connection (a no-op when they exist) means a ledger file
        deleted during a run is made again instead of failing with "no such table". Inside
        :meth:`scanning`, the scan's one connection.
        """
        with self._errors():
            if self._held is not None:
                yield self._held
                return
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA busy_timeout=60000")
                for schema in (_SCHEMA, _FINGERPRINTS, _SIGHTINGS):
                    db.execute(schema)
                yield db
            finally:
                db.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # a bug in a statement, not the user's file
        except sqlite3.DatabaseError as exc:  # locked, read-only, not a database, disk I/O
            check_writable(self.path)  # made read-only since it was opened: say so
            if "readonly" in str(exc):
                raise RsSegError(f"ledger is read-only ({exc}); {_READ_ONLY_HINT}",
                                 self.path) from None  # fmt: skip
            raise RsSegError(f"cannot use the ledger database ({exc})", self.path) from None

    @contextlib.contextmanager
    def scanning(self) -> Iterator[Ledger]:
        """One connection for a scan's many cache reads and writes (:meth:`sight`, fingerprints).

        Otherwise every call opens the file, and the last connection to close checkpoints the
        WAL with an fsync (three calls per new file), slow on a busy disk. A scan
        writes only those caches, so its commits need not reach the disk one by one
        (``synchronous=NORMAL``: a power cut may lose the last ones, which the next scan
        recomputes, and never corrupts the file). Claims and outcomes never run in here.
        """
        if self._held is not None:
            yield self
            return
        with self._connect() as db:
            db.execute("PRAGMA synchronous=NORMAL")
            self._held = db
            try:
                yield self
            finally:
                self._held = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE``: the write lock is taken before the read, so claims cannot race."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def fingerprint(self, path: Path) -> str:
        """:func:`content_fingerprint`, reused while the file's size and mtime are unchanged."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise RsSegError(f"cannot read the scene ({exc.strerror})", path) from None
        key = str(path.resolve())
        with self._connect() as db:
            row = db.execute(
                "SELECT fingerprint FROM fingerprints WHERE path = ? AND size = ? AND mtime_ns = ?",
                (key, stat.st_size, stat.st_mtime_ns),
            ).fetchone()
        if row is not None:
            return cast(str, row[0])  # the fingerprint column holds content_fingerprint's str
        fingerprint = content_fingerprint(path)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO fingerprints (path, size, mtime_ns, fingerprint)"
                " VALUES (?, ?, ?, ?)",
                (key, stat.st_size, stat.st_mtime_ns, fingerprint),
            )
        return fingerprint

    def sight(self, path: Path, now: float | None = None) -> Sighting:
        """Record the file's size and mtime; since when it has looked like this.

        A file seen for the first time counts as unchanged since its mtime (an archive that was
        there before the first scan is complete at once); a file whose size or mtime differ from
        the previous scan changed just now, whatever its mtime says (a copy that preserves
        timestamps, a clock that lags). Reads only, when nothing changed.
        """
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise RsSegError(f"cannot read the scene ({exc.strerror})", path) from None
        now = time.time() if now is None else now
        key = str(path.resolve())
        query = "SELECT size, mtime_ns, stable_since, readable FROM sightings WHERE path = ?"
        with self._connect() as db:
            row = db.execute(query, (key,)).fetchone()
        if row is not None and (row[0], row[1]) == (stat.st_size, stat.st_mtime_ns):
            return Sighting(path, stat.st_size, stat.st_mtime_ns, row[2], bool(row[3]))
        stable_since = now if row is not None else min(now, stat.st_mtime)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sightings (path, size, mtime_ns, stable_since) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
                " mtime_ns = excluded.mtime_ns, stable_since = excluded.stable_since, readable = 0"
                " WHERE size != excluded.size OR mtime_ns != excluded.mtime_ns",
                (key, stat.st_size, stat.st_mtime_ns, stable_since),
            )  # an overlapping run that saw the same file first keeps its stable_since
            row = db.execute(query, (key,)).fetchone()
        return Sighting(path, row[0], row[1], row[2], bool(row[3]))

    def mark_readable(self, sighting: Sighting) -> None:
        """The file passed the completeness read at this size and mtime: skip it next scan."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sightings SET readable = 1 WHERE path = ? AND size = ? AND mtime_ns = ?",
                (str(sighting.path.resolve()), sighting.size, sighting.mtime_ns),
            )

    def claim(
        self, fingerprint: str, model_id: str, path: Path | str, owner: str | None = None,
        item_id: str | None = None,
    ) -> bool:  # fmt: skip
        """Take a scene for processing; False when it is done or another live run holds it.

        ``path``: where the scene is read (a file, or a URL); ``item_id``: the STAC item it
        came from, recorded with it.
        """
        now = time.time()
        owner = owner or run_owner()
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, claimed_at, owner FROM scenes"
                " WHERE fingerprint = ? AND model_id = ?",
                (fingerprint, model_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO scenes (fingerprint, model_id, path, status, owner, claimed_at,"
                    " item_id) VALUES (?, ?, ?, 'running', ?, ?, ?)",
                    (fingerprint, model_id, str(path), owner, now, item_id),
                )
                return True
            status, claimed_at, holder = row
            held = status == "running" and now - claimed_at < self.stale_after
            if status == "done" or (held and not owner_is_gone(holder)):
                return False
            db.execute(
                "UPDATE scenes SET status = 'running', attempts = attempts + 1, owner = ?,"
                " claimed_at = ?, path = ?, error = NULL, item_id = ?"
                " WHERE fingerprint = ? AND model_id = ?",
                (owner, now, str(path), item_id, fingerprint, model_id),
            )
            return True

    def _finish(
        self, fingerprint: str, model_id: str, status: str, path: Path | str | None,
        output: str | None = None, error: str | None = None, item_id: str | None = None,
    ) -> bool:  # fmt: skip
        """Write the outcome; True when the claim was gone and the row was written again."""
        now = time.time()
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE scenes SET status = ?, finished_at = ?, output = ?, error = ?"
                " WHERE fingerprint = ? AND model_id = ?",
                (status, now, output, error, fingerprint, model_id),
            ).rowcount
            if not updated:  # the ledger was deleted or replaced since the claim
                db.execute(
                    "INSERT INTO scenes (fingerprint, model_id, path, status, owner, claimed_at,"
                    " finished_at, output, error, item_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fingerprint, model_id, str(path or output or ""), status, run_owner(), now,
                     now, output, error, item_id),
                )  # fmt: skip
        if not updated:
            log.warning(
                "%s: the ledger was replaced during the run (the claim of %s is gone); its "
                "outcome (%s) was recorded again", self.path, path or fingerprint, status,
            )  # fmt: skip
        return not updated

    def complete(
        self, fingerprint: str, model_id: str, output: Path, path: Path | str | None = None,
        item_id: str | None = None,
    ) -> bool:  # fmt: skip
        """Record a scene (at ``path``) as mapped, with where its outputs are.

        True when the ledger was replaced since the claim and the row was written again.
        """
        return self._finish(fingerprint, model_id, "done", path, output=str(output),
                            item_id=item_id)  # fmt: skip

    def fail(
        self, fingerprint: str, model_id: str, error: str, path: Path | str | None = None,
        item_id: str | None = None,
    ) -> bool:  # fmt: skip
        """Record a failure; the next run claims the scene again. True as for :meth:`complete`."""
        return self._finish(fingerprint, model_id, "failed", path, error=error[:1000],
                            item_id=item_id)  # fmt: skip

    def entries(self) -> list[Entry]:
        """Every row, oldest claim first (for reports and tests)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT fingerprint, model_id, path, status, attempts, owner, claimed_at,"
                " finished_at, output, error, item_id FROM scenes ORDER BY claimed_at"
            ).fetchall()
        return [Entry(*row) for row in rows]
