"""The processing ledger: exactly-once claims across runs, retries, restarts and new models."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from rs_seg.errors import RsSegError
from rs_seg.ops.ledger import Ledger, content_fingerprint


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
    ledger = Ledger(tmp_path / "ledger.sqlite", stale_after=3.0)  # room for a loaded machine
    assert ledger.claim("abc", "m1", Path("a.tif"), owner="crashed")
    assert not ledger.claim("abc", "m1", Path("a.tif"))
    time.sleep(3.2)
    assert ledger.claim("abc", "m1", Path("a.tif"), owner="next")
    assert ledger.entries()[0].owner == "next"


def test_a_claim_whose_process_on_this_host_ended_is_taken_over_at_once(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    host = socket.gethostname()
    ledger = Ledger(tmp_path / "ledger.sqlite")  # claims stay valid for the default 6 hours
    assert ledger.claim("abc", "m1", Path("a.tif"), owner=f"{host}:{int(ended.stdout)}")
    assert ledger.claim("abc", "m1", Path("a.tif")), "a SIGKILLed run's claim is free at once"
    assert ledger.claim("live", "m1", Path("b.tif"), owner=f"{host}:{os.getppid()}")
    assert not ledger.claim("live", "m1", Path("b.tif")), "a live process keeps its claim"
    assert ledger.claim("far", "m1", Path("c.tif"), owner="other-host:1")
    assert not ledger.claim("far", "m1", Path("c.tif")), "another host's claim waits to go stale"


def _claim_all(path: str, keys: list[str], queue: multiprocessing.Queue, done) -> None:
    ledger = Ledger(Path(path))
    queue.put([key for key in keys if ledger.claim(key, "m1", Path(f"{key}.tif"))])
    done.wait(60)  # a run keeps its claims while it lives (a dead run's claims are free)


def test_overlapping_runs_never_claim_the_same_scene(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    Ledger(Path(path))
    keys = [f"scene{i:03d}" for i in range(60)]
    queue: multiprocessing.Queue = multiprocessing.Queue()
    done = multiprocessing.Event()
    runs = [multiprocessing.Process(target=_claim_all, args=(path, keys, queue, done))
            for _ in range(4)]  # fmt: skip
    for run in runs:
        run.start()
    claimed = [queue.get(timeout=60) for _ in runs]
    done.set()
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

    import rs_seg.ops.ledger as ledger_module

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


def test_sightings_tell_a_settled_file_from_one_still_being_written(tmp_path: Path) -> None:
    import os

    ledger = Ledger(tmp_path / "ledger.sqlite")
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"part")
    t0 = time.time()
    os.utime(scene, (t0 - 100, t0 - 100))
    first = ledger.sight(scene, now=t0)
    assert first.stable_since == t0 - 100, "first seen: unchanged since its mtime"
    assert not first.readable
    ledger.mark_readable(first)
    again = Ledger(tmp_path / "ledger.sqlite").sight(scene, now=t0 + 5)
    assert (again.stable_since, again.readable) == (t0 - 100, True), "kept across restarts"
    scene.write_bytes(b"part and more")
    os.utime(scene, (t0 - 100, t0 - 100))  # a copier that restores the source's old mtime
    changed = ledger.sight(scene, now=t0 + 10)
    assert (changed.stable_for(t0 + 10), changed.readable) == (0, False), "changed since last scan"
    assert ledger.sight(scene, now=t0 + 40).stable_for(t0 + 40) == 30
    future = tmp_path / "future.tif"
    future.write_bytes(b"x")
    os.utime(future, (t0 + 3600, t0 + 3600))  # a file server whose clock runs ahead
    assert ledger.sight(future, now=t0).stable_since == t0
    with pytest.raises(RsSegError, match=r"missing.tif: cannot read the scene"):
        ledger.sight(tmp_path / "missing.tif")
    with ledger.scanning() as held:  # a scan's one connection: its writes are seen by others
        scene.write_bytes(b"complete now")
        seen = held.sight(scene, now=t0 + 50)
        assert Ledger(tmp_path / "ledger.sqlite").sight(scene, now=t0 + 60) == seen
    assert ledger._held is None


def test_a_ledger_deleted_during_a_run_keeps_the_outcome(tmp_path: Path, caplog) -> None:
    from rs_seg.config import IncomingConfig
    from rs_seg.ops.incoming import SceneJob, SceneResult, claim, record

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    assert ledger.claim("abc", "m1", Path("a.tif"))
    for leftover in tmp_path.glob("ledger.sqlite*"):
        leftover.unlink()  # deleted between claim and complete (or replaced by a fresh copy)
    with caplog.at_level("WARNING", logger="rs_seg.ops.ledger"):
        assert ledger.complete("abc", "m1", Path("out/a.gpkg"), Path("a.tif")) is True
    assert "the ledger was replaced during the run" in caplog.text
    [entry] = Ledger(path).entries()
    assert (entry.status, entry.output, entry.path) == ("done", "out/a.gpkg", "a.tif")
    assert not ledger.claim("abc", "m1", Path("a.tif")), "done, not mapped again"
    assert ledger.claim("abc", "m2", Path("a.tif"))
    assert ledger.complete("abc", "m2", Path("out/b.gpkg")) is False, "an ordinary completion"

    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path, ledger=path)
    jobs = [SceneJob(Path(f"{n}.tif"), n * 4, Path("m.pt"), "m3", "m3") for n in ("b", "c")]
    assert all(claim(cfg, job) for job in jobs)
    path.unlink()
    mapped = record(cfg, jobs[0], SceneResult(jobs[0].scene, "mapped", Path("out/b.gpkg")))
    failed = record(cfg, jobs[1], OSError("disk gone"))
    assert all("ledger was replaced during the run" in r.warnings[-1] for r in (mapped, failed))
    statuses = {e.path: e.status for e in Ledger(path).entries()}
    assert statuses == {"b.tif": "done", "c.tif": "failed"}, "both outcomes kept"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_ledger_file_or_folder_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "db" / "ledger.sqlite"
    Ledger(path)
    path.chmod(0o444)
    try:
        with pytest.raises(RsSegError, match=r"ledger.sqlite: ledger is read-only \(the file is"):
            Ledger(path)
    finally:
        path.chmod(0o644)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(RsSegError, match=r"ledger is read-only \(its folder is not writable"):
            Ledger(path)
    finally:
        path.parent.chmod(0o755)


def test_read_only_checks_name_the_file_or_the_folder(tmp_path: Path, monkeypatch) -> None:
    """What an unprivileged user sees (os.access stands in for permissions root ignores)."""
    from rs_seg.ops import ledger as ledger_module

    path = tmp_path / "db" / "ledger.sqlite"
    Ledger(path)
    denied: set[Path] = set()
    monkeypatch.setattr(ledger_module.os, "access", lambda p, mode: Path(p) not in denied)
    denied.add(path)
    with pytest.raises(RsSegError, match=r"ledger.sqlite: ledger is read-only \(the file is not"):
        Ledger(path)
    denied.clear()
    denied.add(path.parent)
    with pytest.raises(RsSegError, match=r"read-only \(its folder is not writable, and SQLite"):
        Ledger(path)
    with pytest.raises(RsSegError, match=r"cannot create the ledger \(.*db is not writable\)"):
        Ledger(path.parent / "new" / "ledger.sqlite")
    with pytest.raises(RsSegError, match=r"Nothing was claimed or written$"):
        ledger_module.check_writable(path, before_run=True)


READ_ONLY_MOUNT = """
set -e
mount --bind "$1" "$1"
mount -o remount,ro,bind "$1"
shift
exec "$@"
"""


@pytest.mark.slow
def test_a_ledger_on_a_read_only_mount_stops_the_flow_in_one_line(tmp_path: Path) -> None:
    """A read-only mount stops root too: simulated with a private mount namespace (unshare)."""
    import shutil
    import subprocess
    import sys

    from tests.helpers import ROOT, ephemeral_prefect_env, write_scene

    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rm", "sh", "-c", READ_ONLY_MOUNT, "sh",
                            str(tmp_path), "true"], capture_output=True)  # fmt: skip
    if unshare is None or probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.decode().strip()})")
    mapped = tmp_path / "mapped"
    Ledger(mapped / "ledger.sqlite")
    write_scene(tmp_path / "inbox" / "a.tif", 32, 32)
    config = tmp_path / "incoming.yaml"
    config.write_text(f"incoming: {{incoming: {tmp_path / 'inbox'}, out_dir: {mapped}}}\n")
    before = sorted(mapped.rglob("*"))
    done = subprocess.run(
        [unshare, "-rm", "sh", "-c", READ_ONLY_MOUNT, "sh", str(mapped),
         sys.executable, "-m", "flows.infer_new_imagery", str(config)],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"error: {mapped / 'ledger.sqlite'}: ledger is read-only ({mapped} is on a read-only "
        "file system); make it writable, or set incoming.ledger to a file in a writable folder. "
        "Nothing was claimed or written"
    ]
    assert sorted(mapped.rglob("*")) == before

    midway = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", MADE_READ_ONLY_MIDWAY, str(mapped)],
        env=ephemeral_prefect_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert midway.returncode == 0, midway.stderr[-2000:]
    assert midway.stdout.strip() == (
        f"{mapped / 'ledger.sqlite'}: ledger is read-only ({mapped} is on a read-only file "
        "system); make it writable, or set incoming.ledger to a file in a writable folder"
    )


# Inside a private mount namespace: claim, then the folder turns read-only before the completion.
MADE_READ_ONLY_MIDWAY = """
import subprocess, sys
from pathlib import Path
from rs_seg.errors import RsSegError
from rs_seg.ops.ledger import Ledger
folder = sys.argv[1]
ledger = Ledger(Path(folder) / "ledger.sqlite")
ledger.claim("abc", "m1", Path("a.tif"))
subprocess.run(["mount", "--bind", folder, folder], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", folder], check=True)
try:
    ledger.complete("abc", "m1", Path("a.gpkg"))
except RsSegError as exc:
    print(exc)
"""
