"""The processing ledger: exactly-once claims across runs, retries, restarts and new models."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from rs_seg.errors import RsSegError
from rs_seg.ledger import Ledger, content_fingerprint


def test_a_scene_is_claimed_once_and_stays_done_across_restarts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.claim("abc", "m1", Path("a.tif"))
    assert not ledger.claim("abc", "m1", Path("a.tif")), "a running claim is not taken twice"
    ledger.complete("abc", "m1", Path("out/a.gpkg"))
    reopened = Ledger(tmp_path / "ledger.sqlite")
    assert not reopened.claim("abc", "m1", Path("a.tif")), "done survives a restart"
    assert reopened.claim("abc", "m2", Path("a.tif")), "a new model maps the scene again"
    [first, second] = reopened.entries()
    assert (first.status, first.output) == ("done", "out/a.gpkg")
    assert second.status == "running"


def test_a_failed_scene_is_retried_by_the_next_run(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.claim("abc", "m1", Path("a.tif"))
    ledger.fail("abc", "m1", "not a raster")
    assert ledger.entries()[0].error == "not a raster"
    assert ledger.claim("abc", "m1", Path("a.tif"))
    entry = ledger.entries()[0]
    assert (entry.status, entry.attempts, entry.error) == ("running", 2, None)


def test_a_claim_of_a_dead_run_is_taken_over_after_it_goes_stale(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", stale_after=0.2)
    assert ledger.claim("abc", "m1", Path("a.tif"), owner="crashed")
    assert not ledger.claim("abc", "m1", Path("a.tif"))
    time.sleep(0.3)
    assert ledger.claim("abc", "m1", Path("a.tif"), owner="next")
    assert ledger.entries()[0].owner == "next"


def _claim_all(path: str, keys: list[str], queue: multiprocessing.Queue) -> None:
    ledger = Ledger(Path(path))
    queue.put([key for key in keys if ledger.claim(key, "m1", Path(f"{key}.tif"))])


def test_overlapping_runs_never_claim_the_same_scene(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    Ledger(Path(path))
    keys = [f"scene{i:03d}" for i in range(60)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    runs = [multiprocessing.Process(target=_claim_all, args=(path, keys, queue)) for _ in range(4)]
    for run in runs:
        run.start()
    claimed = [queue.get(timeout=60) for _ in runs]
    for run in runs:
        run.join(timeout=60)
    flat = [key for part in claimed for key in part]
    assert sorted(flat) == keys, "every scene claimed exactly once over all runs"


def test_fingerprints_follow_content_not_names(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"same bytes")
    (tmp_path / "b.tif").write_bytes(b"same bytes")
    (tmp_path / "c.tif").write_bytes(b"other bytes")
    a, b, c = (content_fingerprint(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif"))
    assert a == b != c
    with pytest.raises(RsSegError, match=r"missing.tif: cannot read the scene"):
        content_fingerprint(tmp_path / "missing.tif")


def test_an_unusable_ledger_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RsSegError, match="cannot open the ledger database"):
        Ledger(tmp_path / "file" / "ledger.sqlite")


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch) -> None:
    import os

    import rs_seg.ledger as ledger_module

    ledger = Ledger(tmp_path / "ledger.sqlite")
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"first upload")
    reads: list[Path] = []
    real = ledger_module.content_fingerprint
    monkeypatch.setattr(ledger_module, "content_fingerprint",
                        lambda p: reads.append(p) or real(p))  # fmt: skip
    first = ledger.fingerprint(scene)
    assert Ledger(tmp_path / "ledger.sqlite").fingerprint(scene) == first, "survives restarts"
    assert reads == [scene], "the second scan reads no bytes"
    scene.write_bytes(b"the upload completed")  # new size: read again
    assert ledger.fingerprint(scene) not in (first, None) and len(reads) == 2
    stat = scene.stat()
    scene.write_bytes(b"THE UPLOAD COMPLETED")  # same size, new mtime: read again
    os.utime(scene, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ledger.fingerprint(scene) == real(scene) and len(reads) == 3
    with pytest.raises(RsSegError, match=r"missing.tif: cannot read the scene"):
        ledger.fingerprint(tmp_path / "missing.tif")
