"""Fault injection on the ``infer-new-imagery`` flow: a SIGKILLed run never leaves a half-written
scene folder, the next run maps what is left exactly once, and the user's files stay as they are."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyogrio
import pytest
import rasterio

from rs_seg.ops.ledger import Ledger
from tests.helpers import (
    ROOT,
    digest,
    ephemeral_prefect_env,
    hidden_leftovers,
    make_bundle,
    truncated_copy,
    write_scene,
)

SCENES = ["s0", "s1", "s2"]


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    for seed, name in enumerate(SCENES):
        write_scene(tmp_path / "inbox" / f"{name}.tif", 192, 192, seed=seed)
    make_bundle(tmp_path / "model-bundle.pt", chip=64)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README-mine.txt").write_text("the user's own notes")
    (tmp_path / "incoming.yaml").write_text(
        "incoming:\n"
        f"  incoming: {tmp_path / 'inbox'}\n"
        f"  out_dir: {tmp_path / 'out'}\n"
        f"  merged: {tmp_path / 'out' / 'all.gpkg'}\n"
        "  settle_seconds: 0\n"
        "  infer:\n"
        f"    model: {tmp_path / 'model-bundle.pt'}\n"
        "    device: cpu\n    min_area: 0\n    batch_size: 4\n"
    )
    return tmp_path


def flow_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "flows.infer_new_imagery", str(root / "incoming.yaml")]


def scene_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "out").glob("*/*") if p.is_dir() and p.name[0] != ".")


def assert_complete(folder: Path) -> None:
    """A published scene folder holds both outputs, whole and of one run."""
    assert sorted(p.name for p in folder.iterdir()) == [
        "fields.gpkg", "fields_prob.qml", "fields_prob.tif",
    ]  # fmt: skip
    with rasterio.open(folder / "fields_prob.tif") as src:
        src.read(1)
        prob_run = src.tags()["run_id"]
    meta = pyogrio.read_info(folder / "fields.gpkg", layer="fields")["layer_metadata"]
    assert meta["run_id"] == prob_run


@pytest.mark.slow
def test_a_killed_flow_run_is_finished_by_the_next_one(inbox: Path) -> None:
    """SIGKILL right after the first scene's folder is published, before the flow records it."""
    env = ephemeral_prefect_env(inbox) | {"RS_SEG_KILL_AT": "published#2"}
    notes = digest(inbox / "out" / "README-mine.txt")
    child = subprocess.Popen(
        flow_command(inbox), cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not scene_folders(inbox) and child.poll() is None:
        assert time.monotonic() < deadline, "no scene was mapped"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # the flow, its Prefect server, all it started
        os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()[-3000:]
    env.pop("RS_SEG_KILL_AT", None)
    first = scene_folders(inbox)
    for folder in first:
        assert_complete(folder)
    done = [e for e in Ledger(inbox / "out" / "ledger.sqlite").entries() if e.status == "done"]

    truncated_copy(inbox / "inbox" / "s0.tif", inbox / "inbox" / "s3.tif")  # a copy in progress
    again = subprocess.run(flow_command(inbox), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    counts = json.loads(again.stdout[again.stdout.index("{") :])
    # Scenes recorded done are skipped; the killed run's claims are taken over at once. A scene
    # published but not yet recorded when the kill came is mapped again (its folder replaced
    # whole), so every scene ends mapped, none twice in the ledger.
    assert counts["skipped"] == len(done) and counts["failed"] == 0
    assert counts["mapped"] == len(SCENES) - len(done)
    assert counts["waiting"] == 1, "the half-copied scene waits; it is not mapped or failed"
    folders = scene_folders(inbox)
    assert [f.parent.name for f in folders] == SCENES, "every complete scene mapped exactly once"
    for folder in folders:
        assert_complete(folder)
    merged = pyogrio.read_info(inbox / "out" / "all.gpkg", layer="fields")["features"]
    assert merged == sum(
        pyogrio.read_info(f / "fields.gpkg", layer="fields")["features"] for f in folders
    )
    assert digest(inbox / "out" / "README-mine.txt") == notes
    for folder in [inbox / "out", *(inbox / "out").iterdir()]:
        if folder.is_dir():
            assert hidden_leftovers(folder) == [], folder


def test_a_full_disk_fails_the_scene_in_one_line_and_writes_nothing(inbox: Path) -> None:
    from rs_seg.config import IncomingConfig
    from rs_seg.ops.incoming import map_scenes, plan
    from tests.helpers import small_disk

    with small_disk(inbox / "disk", "64k") as disk:
        cfg = IncomingConfig(
            incoming=str(inbox / "inbox"), out_dir=disk / "out", ledger=inbox / "ledger.sqlite",
            settle_seconds=0,
            infer={"model": inbox / "model-bundle.pt", "device": "cpu", "min_area": 0},
        )  # fmt: skip
        [result] = map_scenes(cfg, plan(cfg)[:1])
        assert result.status == "failed"
        assert "no space left on the device" in result.error and "\n" not in result.error
        assert list(disk.iterdir()) == [], "no scene folder, no staging copy"
        entry = Ledger(cfg.ledger_path).entries()[0]
        assert entry.status == "failed", "recorded, so the next run retries it"


def test_a_ledger_cannot_merge_files_outside_the_scene_folders(tmp_path: Path, caplog) -> None:
    """Outputs a planted or edited ledger names outside ``out_dir`` are never read into a merge."""
    from rs_seg.config import IncomingConfig
    from rs_seg.ops.incoming import SceneJob, mapped_outputs

    out_dir = tmp_path / "out"
    cfg = IncomingConfig(
        incoming=str(tmp_path / "inbox"), out_dir=out_dir, infer={"model": tmp_path / "m.pt"}
    )
    own = out_dir / "s0" / "m1" / "fields.gpkg"
    private = tmp_path / "private" / "fields.gpkg"
    for path in (own, private):
        path.parent.mkdir(parents=True)
        path.write_text("a layer")
    (out_dir / "s1" / "m1").mkdir(parents=True)
    (out_dir / "s1" / "m1" / "fields.gpkg").symlink_to(private)
    before = digest(tmp_path / "private")
    named = {
        "own": own, "absolute": private, "dotdot": out_dir / "s2" / ".." / ".." / "private" /
        "fields.gpkg", "link": out_dir / "s1" / "m1" / "fields.gpkg", "shallow": out_dir / "x.gpkg",
    }  # fmt: skip
    ledger = Ledger(cfg.ledger_path)
    for fingerprint, output in named.items():
        assert ledger.claim(fingerprint, "m1", f"{fingerprint}.tif")
        ledger.complete(fingerprint, "m1", output)
    job = SceneJob(tmp_path / "s.tif", "f", tmp_path / "m.pt", "m1", "m1")
    assert mapped_outputs(cfg, [job]) == [own]
    assert caplog.text.count("it is not merged") == 4
    assert digest(tmp_path / "private") == before


def test_a_scene_whose_name_is_not_utf8_waits_and_the_others_are_mapped(tmp_path: Path) -> None:
    from rs_seg.config import IncomingConfig
    from rs_seg.ops.incoming import scan

    inbox = tmp_path / "inbox"
    write_scene(inbox / "good.tif", 64, 64)
    write_scene(inbox / "bad.tif", 64, 64)
    (inbox / "bad.tif").rename(inbox / os.fsdecode(b"bad\xff.tif"))  # GDAL cannot write it
    cfg = IncomingConfig(incoming=str(inbox), out_dir=tmp_path / "out", settle_seconds=0,
                         infer={"model": make_bundle(tmp_path / "m.pt")})  # fmt: skip
    found = scan(cfg)
    assert [job.scene.name for job in found.jobs] == ["good.tif"]
    (waiting,) = found.waiting
    assert waiting.reason is not None and "not valid UTF-8" in waiting.reason
    assert waiting.label == "bad\\xff.tif", "reports print it in any locale, as JSON too"
