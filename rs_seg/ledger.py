"""A processing ledger in SQLite: which scene was mapped with which model, exactly once.

Scheduled runs over an incoming folder must neither skip nor double-process a scene, even when two
runs overlap or one crashes. Each scene is keyed by a fingerprint of its content (so a renamed copy
is not mapped twice and a changed file is mapped again) and by the model id (so a new model maps
everything again, unless that is switched off). A run *claims* a key inside an ``IMMEDIATE``
transaction before working on it; SQLite's lock makes the claim atomic across processes and
machines sharing the file. A claim older than ``stale_after`` seconds belongs to a run that died
and may be taken over; a failed scene is retried by the next run without blocking the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rs_seg.errors import RsSegError

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


def run_owner() -> str:
    """Who holds a claim: host and process, shown when a scene is busy or stuck."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


class Ledger:
    """The SQLite ledger file (created on first use); safe to share between processes."""

    def __init__(self, path: Path, stale_after: float = 6 * 3600) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(_SCHEMA)
                db.execute(_FINGERPRINTS)
        except (sqlite3.Error, OSError) as exc:
            raise RsSegError(f"cannot open the ledger database ({exc})", self.path) from None

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=60000")
        return contextlib.closing(db)

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
            return row[0]
        fingerprint = content_fingerprint(path)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO fingerprints (path, size, mtime_ns, fingerprint)"
                " VALUES (?, ?, ?, ?)",
                (key, stat.st_size, stat.st_mtime_ns, fingerprint),
            )
        return fingerprint

    def claim(self, fingerprint: str, model_id: str, path: Path, owner: str | None = None) -> bool:
        """Take a scene for processing; False when it is done or another live run holds it."""
        now = time.time()
        owner = owner or run_owner()
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, claimed_at FROM scenes WHERE fingerprint = ? AND model_id = ?",
                (fingerprint, model_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO scenes (fingerprint, model_id, path, status, owner, claimed_at)"
                    " VALUES (?, ?, ?, 'running', ?, ?)",
                    (fingerprint, model_id, str(path), owner, now),
                )
                return True
            status, claimed_at = row
            if status == "done" or (status == "running" and now - claimed_at < self.stale_after):
                return False
            db.execute(
                "UPDATE scenes SET status = 'running', attempts = attempts + 1, owner = ?,"
                " claimed_at = ?, path = ?, error = NULL"
                " WHERE fingerprint = ? AND model_id = ?",
                (owner, now, str(path), fingerprint, model_id),
            )
            return True

    def _finish(self, fingerprint: str, model_id: str, status: str, **values: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE scenes SET status = ?, finished_at = ?, output = ?, error = ?"
                " WHERE fingerprint = ? AND model_id = ?",
                (status, time.time(), values.get("output"), values.get("error"), fingerprint,
                 model_id),
            )  # fmt: skip

    def complete(self, fingerprint: str, model_id: str, output: Path) -> None:
        """Record a scene as mapped, with where its outputs are."""
        self._finish(fingerprint, model_id, "done", output=str(output))

    def fail(self, fingerprint: str, model_id: str, error: str) -> None:
        """Record a failure; the next run claims the scene again."""
        self._finish(fingerprint, model_id, "failed", error=error[:1000])

    def entries(self) -> list[Entry]:
        """Every row, oldest claim first (for reports and tests)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT fingerprint, model_id, path, status, attempts, owner, claimed_at,"
                " finished_at, output, error FROM scenes ORDER BY claimed_at"
            ).fetchall()
        return [Entry(*row) for row in rows]
