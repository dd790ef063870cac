"""The ledger records the STAC item of a scene; ledgers written before the column still work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rs_seg.ops.ledger import Ledger

# The scenes table as ledgers before item ids had it, with one finished and one failed scene.
OLD_SCHEMA = """
CREATE TABLE scenes (
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
);
INSERT INTO scenes VALUES ('f1', 'm1', 'inbox/a.tif', 'done', 1, 'h:1', 1.0, 2.0, 'out/a', NULL);
INSERT INTO scenes VALUES ('f2', 'm1', 'inbox/b.tif', 'failed', 1, 'h:1', 3.0, 4.0, NULL, 'bad');
"""


def old_ledger(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.commit()
    db.close()
    return path


def test_an_old_ledger_keeps_its_rows_and_gains_item_ids(tmp_path: Path) -> None:
    ledger = Ledger(old_ledger(tmp_path / "ledger.sqlite"))
    done, failed = ledger.entries()
    assert (done.path, done.status, done.output, done.item_id) == ("inbox/a.tif", "done",
                                                                   "out/a", None)  # fmt: skip
    assert (failed.status, failed.error) == ("failed", "bad")
    assert not ledger.claim("f1", "m1", Path("inbox/a.tif")), "done stays done"
    assert ledger.claim("f2", "m1", Path("inbox/b.tif")), "a failure is retried as before"
    assert ledger.claim("f3", "m1", "https://h.example/c.tif", item_id="item-c")
    ledger.complete("f3", "m1", Path("out/item-c"), "https://h.example/c.tif", "item-c")
    [new] = [e for e in Ledger(tmp_path / "ledger.sqlite").entries() if e.fingerprint == "f3"]
    assert (new.path, new.item_id, new.status) == ("https://h.example/c.tif", "item-c", "done")


def test_the_item_id_is_written_again_with_a_replaced_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.claim("f", "m", "https://h.example/s.tif", item_id="s-1")
    (tmp_path / "ledger.sqlite").unlink()
    assert ledger.fail("f", "m", "HTTP 503", "https://h.example/s.tif", "s-1")
    [entry] = ledger.entries()
    assert (entry.status, entry.item_id, entry.path) == ("failed", "s-1", "https://h.example/s.tif")


def test_an_upgraded_ledger_opened_again_is_left_as_it_is(tmp_path: Path) -> None:
    path = old_ledger(tmp_path / "ledger.sqlite")
    first, second = Ledger(path), Ledger(path)
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(scenes)")]
    db.close()
    assert columns.count("item_id") == 1
    assert len(first.entries()) == len(second.entries()) == 2
