"""Outputs appear whole or not at all, replace only rs_seg's own outputs, and never an input."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rs_seg import staging as io
from rs_seg.errors import RsSegError, Terminated
from rs_seg.staging import (
    FolderKind,
    check_folder_output,
    check_not_inputs,
    remove_leftovers,
    staged_dir,
    staged_file,
    staged_files,
)
from rs_seg.staging_names import process_start

KIND = FolderKind("rs-seg thing", "summary.json", ("summary.json", "data", "index.*"))


def _own_folder(path: Path, text: str = "old") -> Path:
    (path / "data").mkdir(parents=True)
    (path / "data" / "a.txt").write_text(text)
    (path / "summary.json").write_text("{}")
    return path


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): p.read_text() if p.is_file() else "/"
        for p in sorted(path.rglob("*"))
    }


def test_staged_dir_appears_only_on_success(tmp_path) -> None:
    final = tmp_path / "out"
    with staged_dir(final) as staging:
        (staging / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path) -> None:
    final = _own_folder(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt), staged_dir(final, True, KIND) as staging:
        (staging / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "data" / "a.txt").read_text() == "old"


def test_replacing_a_folder_swaps_it_whole(tmp_path) -> None:
    final = _own_folder(tmp_path / "out")
    inode = final.stat().st_ino
    with staged_dir(final, True, KIND) as staging:
        _own_folder(staging, "new")
        assert (final / "data" / "a.txt").read_text() == "old"  # untouched while building
    assert _tree(final) == {"data": "/", "data/a.txt": "new", "summary.json": "{}"}
    assert final.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_refuses_a_folder_with_anything_else_in_it(tmp_path) -> None:
    home = _own_folder(tmp_path / "home")
    (home / "thesis.docx").write_text("years of work")
    (home / "Documents").mkdir()
    before = _tree(home)
    refused = pytest.raises(RsSegError, match="'Documents', which rs-seg thing did not write")
    with refused, staged_dir(home, True, KIND) as staging:
        (staging / "summary.json").write_text("{}")
    assert _tree(home) == before


def test_overwrite_refuses_a_folder_without_the_marker(tmp_path) -> None:
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    with pytest.raises(RsSegError, match=r"has no summary\.json"):
        check_folder_output(folder, True, KIND)


def test_an_empty_folder_is_used_without_overwrite(tmp_path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    check_folder_output(folder, False, KIND)
    with pytest.raises(RsSegError, match="pass --overwrite"):
        check_folder_output(_own_folder(tmp_path / "full"), False, KIND)


def test_a_file_added_during_the_run_stops_the_replacement(tmp_path) -> None:
    final = _own_folder(tmp_path / "out")
    with pytest.raises(RsSegError, match=r"notes\.txt"), staged_dir(final, True, KIND) as staging:
        _own_folder(staging, "new")
        (final / "notes.txt").write_text("written while rs-seg ran")
    assert (final / "notes.txt").read_text() == "written while rs-seg ran"
    assert (final / "data" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", [".", "..", "../.."])
def test_the_working_folder_and_its_parents_are_refused(tmp_path, monkeypatch, where) -> None:
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(RsSegError, match="working folder or one above it"):
        check_folder_output(Path(where), True, KIND)


def test_an_output_may_not_be_or_hold_an_input(tmp_path) -> None:
    scene = tmp_path / "scenes" / "s.tif"
    scene.parent.mkdir()
    scene.write_text("pixels")
    with pytest.raises(RsSegError, match=r"is \(or holds\) the input"):
        check_not_inputs([tmp_path / "scenes"], [scene])
    with pytest.raises(RsSegError, match=r"is \(or holds\) the input"):
        check_not_inputs([scene], [scene])
    link = tmp_path / "link.tif"
    os.link(scene, link)
    with pytest.raises(RsSegError, match=r"is \(or holds\) the input"):
        check_not_inputs([link], [scene])
    check_not_inputs([tmp_path / "scenes" / "chips"], [scene])  # beside an input is fine


def test_existing_file_is_refused_without_overwrite_or_when_not_ours(tmp_path) -> None:
    final = tmp_path / "fields.gpkg"
    final.write_text("mine")
    with pytest.raises(RsSegError, match="--overwrite"), staged_file(final):
        pass
    refused = pytest.raises(RsSegError, match="not written by rs-seg")
    with refused, staged_file(final, True, owned=lambda path: False):
        pass
    assert final.read_text() == "mine"
    with staged_file(final, overwrite=True, owned=lambda path: True) as staging:
        assert staging.suffix == ".gpkg" and staging.parent == tmp_path
        staging.write_text("new")
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["fields.gpkg"]


def test_staged_file_that_was_never_written_is_an_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="nothing was written"), staged_file(tmp_path / "x.tif"):
        pass


def test_parents_created_for_a_failed_output_are_removed(tmp_path) -> None:
    final = tmp_path / "new" / "deeper" / "fields.gpkg"
    with pytest.raises(ValueError), staged_file(final):
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(dead.stdout)


def test_leftovers_of_dead_runs_go_and_live_ones_stay(tmp_path) -> None:
    final = tmp_path / "fields.gpkg"
    dead, live = f"{_dead_pid()}-0", f"{os.getppid()}-{process_start(os.getppid())}"
    reused = f"{os.getppid()}-{(process_start(os.getppid()) or 0) + 1}"  # same pid, another process
    names = {
        "dead": f".fields.partial-{io.OWNER_ID}-{dead}-abcdef.gpkg",
        "dead_tiles": f".fields.partial-{io.OWNER_ID}-{dead}-abcdef.tiles.gpkg",
        "dead_dir": f".fields.partial-{io.OWNER_ID}-{dead}-fedcba",
        "reused_pid": f".fields.partial-{io.OWNER_ID}-{reused}-abcdef.gpkg",
        "live": f".fields.partial-{io.OWNER_ID}-{live}-abcdef.gpkg",
        "other_host_or_namespace": f".fields.partial-00000000-{dead}-abcdef.gpkg",
        "other_output": f".roads.partial-{io.OWNER_ID}-{dead}-abcdef.gpkg",
        "user": ".fields.gpkg.backup",
    }
    for key, name in names.items():
        (tmp_path / name).mkdir() if key == "dead_dir" else (tmp_path / name).write_text(key)
    assert remove_leftovers(final) == 4
    left = {p.name for p in tmp_path.iterdir()}
    kept = ("live", "other_host_or_namespace", "other_output", "user")
    assert left == {names[k] for k in kept}


def test_a_file_set_appears_together(tmp_path) -> None:
    prob, fields = tmp_path / "f_prob.tif", tmp_path / "f.gpkg"
    with staged_files([prob, fields]) as (staged_prob, staged_fields):
        staged_prob.write_text("prob")
        staged_fields.write_text("fields")
        assert not prob.exists() and not fields.exists()
    assert (prob.read_text(), fields.read_text()) == ("prob", "fields")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gpkg", "f_prob.tif"]


_KILLED_SET = """
import sys
from pathlib import Path
from rs_seg.staging import staged_files
root = Path(sys.argv[1])
with staged_files([root / "p" / "f_prob.tif", root / "f.gpkg"], overwrite=True) as staged:
    for path in staged:
        path.write_text("new")
"""


@pytest.mark.parametrize("step", ["staged", "journal", "replaced-1", "replaced-2", "published"])
def test_a_set_killed_at_any_step_is_old_or_completed_by_the_next_run(tmp_path, step) -> None:
    (tmp_path / "p").mkdir()
    prob, fields = tmp_path / "p" / "f_prob.tif", tmp_path / "f.gpkg"
    prob.write_text("old")
    fields.write_text("old")
    env = {**os.environ, io.KILL_AT_ENV: step}
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_SET), str(tmp_path)],
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    if step == "staged":  # nothing published: the old set, plus leftovers the next run removes
        assert (prob.read_text(), fields.read_text()) == ("old", "old")
    remove_leftovers(prob)  # what the next run on either output does first
    remove_leftovers(fields)
    expected = ("old", "old") if step == "staged" else ("new", "new")
    assert (prob.read_text(), fields.read_text()) == expected
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["f_prob.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gpkg", "p"]


_KILLED_DIR = """
import sys
from pathlib import Path
from rs_seg.staging import FolderKind, staged_dir
kind = FolderKind("rs-seg thing", "summary.json", ("summary.json", "data", "index.*"))
with staged_dir(Path(sys.argv[1]) / "out", True, kind) as staging:
    (staging / "data").mkdir()
    (staging / "data" / "a.txt").write_text("new")
    (staging / "summary.json").write_text("{}")
"""


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("step", ["staged", "swapped", "published"])
def test_a_folder_killed_at_any_step_is_old_or_new(tmp_path, step, exchange) -> None:
    final = _own_folder(tmp_path / "out")
    env = {**os.environ, io.KILL_AT_ENV: step}
    script = (
        _KILLED_DIR
        if exchange
        else "import rs_seg.staging; rs_seg.staging._EXCHANGE = None\n" + (_KILLED_DIR)
    )
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    remove_leftovers(final)
    new = step == "published" or (step == "swapped" and exchange)  # two renames: old put back
    assert (final / "data" / "a.txt").read_text() == ("new" if new else "old")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_full_disk_is_one_line_naming_the_output(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-capped tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "keep.txt").write_text("user data")
        full = pytest.raises(RsSegError, match=r"out\.bin: no space left on the device")
        with full, staged_file(disk / "out.bin") as staging:
            staging.write_bytes(b"x" * (1 << 20))
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_that_library_code_swallowed_still_stops_publication(
    tmp_path: Path, signum: int
) -> None:
    """A bare ``except:`` in a library must not turn Ctrl-C into a published result."""
    (tmp_path / "folder").mkdir()
    try:
        with contextlib.suppress(KeyboardInterrupt):  # what the library's except did
            io.raise_interrupt(signum, None)
        expected = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        with pytest.raises(expected), io.staged_file(tmp_path / "fields.gpkg") as staged:
            staged.write_text("complete, but the user pressed Ctrl-C")
        with pytest.raises(expected), io.staged_dir(tmp_path / "run", False) as staged:
            (staged / "a.txt").write_text("a")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "nothing published"
    finally:
        io.forget_interrupts()
    with io.staged_file(tmp_path / "fields.gpkg") as staged:  # the next command publishes
        staged.write_text("x")
    assert (tmp_path / "fields.gpkg").read_text() == "x"
