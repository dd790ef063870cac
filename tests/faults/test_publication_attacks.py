"""Publication trusts nothing it finds in a folder: planted journals, look-alike staging names,
another run publishing the same outputs, another container's staging, another set's files.

Attack files are built in ``tmp_path``; every test checks that no file outside the output folder
changed and that the user's files inside it are byte-identical.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rs_seg import journal as journals
from rs_seg.config import InferConfig
from rs_seg.errors import RsSegError
from rs_seg.infer.run import check_infer_outputs
from rs_seg.staging import (
    KILL_AT_ENV,
    OWNER_ID,
    complete_interrupted_publications,
    remove_leftovers,
    staged_file,
    staged_files,
)
from tests.helpers import (
    ROOT,
    assert_one_line_error,
    digest,
    json_values,
    make_bundle,
    rs_seg,
    small_disk,
    write_scene,
    write_streamed_cog,
)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below ``root``: its bytes (or link target, or folder) and modification time."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            what = f"link:{path.readlink()}"
        elif path.is_dir():
            what = "folder"
        else:
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(root))] = (what, info.st_mtime_ns)
    return found


def identity(path: Path) -> list[int]:
    info = path.lstat()
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def journal(pid: int, start: int = 0, owner: str = OWNER_ID, primary: str = "f.gpkg") -> str:
    return f".{primary}.publish-{owner}-{pid}-{start}.json"


def staging(final: str, pid: int, start: int = 0, owner: str = OWNER_ID) -> str:
    path = Path(final)
    return f".{path.stem}.partial-{owner}-{pid}-{start}-abcdef{path.suffix}"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """An output folder with a user's file and an earlier output, and a folder beside it."""
    outside, out = tmp_path / "outside", tmp_path / "out"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("precious")
    (outside / "sub" / "victim.gpkg").write_text("another project's layer")
    out.mkdir()
    (out / "notes.txt").write_text("the user's notes")
    (out / "f.gpkg").write_text("old")
    return outside, out


# --- journals ------------------------------------------------------------------------------------


def test_a_planted_journal_cannot_replace_any_file(folders, caplog) -> None:
    """The issue's attack: a journal of a "dead" run naming paths anywhere."""
    outside, out = folders
    pid = dead_pid()
    attacker = out / staging("f.gpkg", pid)
    attacker.write_text("attacker's content")
    secret = outside / "secret.txt"
    targets = {
        journal(pid): str(secret),
        journal(pid, 1): "../outside/secret.txt",
        journal(pid, 2): "notes.txt",  # a user's file in the folder itself
        journal(pid, 3): "f.gpkg",  # right name, but not the file that run checked
    }
    for name, target in targets.items():
        document = {"rs_seg_publish": 1, "owner": OWNER_ID, "pid": pid,
                    "start": int(name.split("-")[-1].split(".")[0]),
                    "files": [{"staging": attacker.name, "final": target,
                               "staged": identity(attacker), "old": [1, 2, 3, 4]}]}  # fmt: skip
        (out / name).write_text(json.dumps(document))
    before_outside, notes = snapshot(outside), digest(out / "notes.txt")
    with caplog.at_level(logging.WARNING, logger="rs_seg"):
        assert complete_interrupted_publications(out) == 0
        with staged_file(out / "f.gpkg", overwrite=True) as staged:  # a real publication there
            staged.write_text("new")
    assert snapshot(outside) == before_outside and digest(out / "notes.txt") == notes
    assert (out / "f.gpkg").read_text() == "new"
    assert all((out / name).exists() for name in targets), "not ours: left as it is"
    warned = [r.getMessage() for r in caplog.records if "can prove it wrote" in r.getMessage()]
    assert len(warned) == len(targets), warned  # one warning each, for all the runs above


_KILLED_SET = """
import sys
from pathlib import Path
from rs_seg.staging import staged_files
root = Path(sys.argv[1])
with staged_files([root / "f_prob.tif", root / "f.gpkg"], overwrite=True) as staged:
    for path in staged:
        path.write_text(sys.argv[2])
"""


def killed_set(root: Path, step: str, run: str = "new") -> None:
    """Publish ``f_prob.tif`` and ``f.gpkg`` in ``root`` from a child SIGKILLed at ``step``."""
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_SET), str(root), run],
                            env={**os.environ, KILL_AT_ENV: step}, capture_output=True,
                            text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr


@pytest.mark.parametrize("change", ["final", "staged", "symlink"])
def test_a_real_journal_is_completed_only_while_its_files_are_untouched(
    folders, change: str
) -> None:
    """The next run completes a killed run's set, unless a file it names changed since."""
    outside, out = folders
    (out / "f_prob.tif").write_text("old")
    killed_set(out, "journal")
    [name] = [p.name for p in out.iterdir() if ".publish-" in p.name]
    pending = sorted(p for p in out.iterdir() if ".partial-" in p.name and "f_prob" in p.name)
    if change == "final":
        (out / "f_prob.tif").write_text("the user's edit")  # the user changed it meanwhile
    elif change == "staged":
        pending[0].write_text("something else")
    else:
        pending[0].unlink()
        pending[0].symlink_to(outside / "secret.txt")
    before = snapshot(outside)
    expected = (out / "f_prob.tif").read_text()
    remove_leftovers(out / "f.gpkg")
    assert (out / "f_prob.tif").read_text() == expected, "no half-proven journal is run"
    assert (out / "f.gpkg").read_text() == "old" and (out / name).exists()
    assert snapshot(outside) == before


def test_a_journal_only_names_files_in_its_own_folder(tmp_path: Path) -> None:
    """A set spread over two folders has a journal in each, each naming only its own files."""
    (tmp_path / "p").mkdir()
    script = _KILLED_SET.replace('root / "f_prob.tif"', 'root / "p" / "f_prob.tif"')
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path), "new"],
                            env={**os.environ, KILL_AT_ENV: "journal"}, capture_output=True,
                            text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for folder in (tmp_path, tmp_path / "p"):
        [name] = [p.name for p in folder.iterdir() if ".publish-" in p.name]
        document = json.loads((folder / name).read_text())
        names = [n for f in document["files"] for n in (f["staging"], f["final"])]
        assert all("/" not in n and (folder / n).parent == folder for n in names), names
        assert all((folder / f["staging"]).exists() for f in document["files"])
    remove_leftovers(tmp_path / "p" / "f_prob.tif")
    remove_leftovers(tmp_path / "f.gpkg")
    assert (tmp_path / "p" / "f_prob.tif").read_text() == (tmp_path / "f.gpkg").read_text()


# --- two runs, other namespaces, names that only look like staging ----------------------------


_PAUSED_SET = """
import logging, sys
from pathlib import Path
from rs_seg.staging import staged_files
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
root = Path(sys.argv[1])
with staged_files([root / "f_prob.tif", root / "f.gpkg"], overwrite=True) as staged:
    for path in staged:
        path.write_text(sys.argv[2])
"""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _wait(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_runs_on_the_same_outputs_publish_one_after_the_other(tmp_path: Path) -> None:
    """One run paused between its renames: the other waits, and the set is one run's."""
    for name in ("f_prob.tif", "f.gpkg"):
        (tmp_path / name).write_text("old")
    script = [sys.executable, "-c", textwrap.dedent(_PAUSED_SET), str(tmp_path)]
    first = subprocess.Popen([*script, "first"], env={**os.environ,
                             KILL_AT_ENV: "replaced-1:SIGSTOP"})  # fmt: skip
    second_log = tmp_path.parent / "second.log"
    try:
        _wait(lambda: _state(first.pid) == "T", "the first run to pause")
        assert (tmp_path / "f_prob.tif").read_text() == "first"
        with second_log.open("w") as log:
            second = subprocess.Popen([*script, "second"], stderr=log)
        _wait(lambda: "waiting for another rs-seg run" in second_log.read_text()
              or second.poll() is not None, "the second run to wait or end")  # fmt: skip
        assert second.poll() is None, second_log.read_text()
        assert (tmp_path / "f.gpkg").read_text() == "old", "nothing published in between"
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=180) == 0 and second.wait(timeout=180) == 0
    assert (tmp_path / "f_prob.tif").read_text() == (tmp_path / "f.gpkg").read_text() == "second"


def test_a_run_waits_a_bounded_time_then_refuses_in_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(journals, "LOCK_WAIT_S", 0.2)
    holder = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # held through another descriptor, as by another run
        refused = pytest.raises(RsSegError, match=r"f\.gpkg: another rs-seg run has been publish")
        with refused, staged_file(tmp_path / "f.gpkg") as staged:
            staged.write_text("new")
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_user_files_that_look_like_old_staging_names_are_kept(folders) -> None:
    """Earlier releases removed ``.<stem>.partial-<8 characters>...`` once an hour old."""
    out = folders[1]
    names = [".f.partial-20240101.gpkg", ".f.partial-deadbeef.gpkg", ".f.partial-20240101"]
    for name in names[:2]:
        (out / name).write_text("the user's backup")
    (out / names[2]).mkdir()
    (out / names[2] / "kept.txt").write_text("a folder of the user's")
    hours_ago = time.time() - 7200
    for name in names:
        os.utime(out / name, (hours_ago, hours_ago))
    before = snapshot(out)
    with staged_file(out / "f.gpkg", overwrite=True) as staged:
        staged.write_text("new")
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "f.gpkg"} == {
        k: v for k, v in before.items() if k != "f.gpkg"
    }


def test_a_live_run_in_another_pid_namespace_keeps_its_staging(tmp_path: Path) -> None:
    """Containers on one host: another namespace's pid says nothing about processes here."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a new PID namespace")
    final = tmp_path / "f.gpkg"
    code = ("import os, sys, time; from pathlib import Path; from rs_seg.staging import "
            "staging_path; p = staging_path(Path(sys.argv[1])); p.write_text('live'); "
            "print(p.name, flush=True); sys.stdin.read()")  # fmt: skip
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, str(final)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        if not name:
            pytest.skip(f"cannot start a PID namespace here: {child.stderr.read()[-300:]}")
        assert f"-{OWNER_ID}-" not in name, "another namespace, another owner id"
        assert remove_leftovers(final) == 0
        assert (tmp_path / name).read_text() == "live"
    finally:
        child.communicate(timeout=60)


# --- output sets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``rs-seg infer scene.tif -o f.gpkg --mask-out m.tif`` once; tests work on copies."""
    root = tmp_path_factory.mktemp("mapped")
    write_scene(root / "scene.tif", 64, 64)
    make_bundle(root / "model.pt", chip=64)
    done = rs_seg("infer", "scene.tif", "-o", "f.gpkg", "--mask-out", "m.tif", "--model",
                  "model.pt", "--min-area", "0", cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def mapped_copy(tmp_path: Path, mapped: Path) -> Path:
    return Path(shutil.copytree(mapped, tmp_path / "work"))


def test_overwrite_never_replaces_another_sets_probability_raster(mapped_copy: Path) -> None:
    before = digest(mapped_copy)
    refused = rs_seg("infer", "scene.tif", "-o", "f.parquet", "--model", "model.pt",
                     "--overwrite", cwd=mapped_copy)  # fmt: skip
    assert_one_line_error(refused, "f_prob.tif: is one of the outputs of f.gpkg", "--prob-out")
    assert digest(mapped_copy) == before


def cfg(root: Path, **given: object) -> InferConfig:
    return InferConfig.model_validate({"scene": root / "scene.tif", "model": root / "model.pt",
                                       "overwrite": True, **given})  # fmt: skip


def test_a_companion_is_replaced_only_with_its_own_set(mapped_copy: Path) -> None:
    root = mapped_copy
    check_infer_outputs(cfg(root, out=root / "f.gpkg", mask_out=root / "m.tif"))  # its own set
    with pytest.raises(RsSegError, match=r"m\.tif: is one of another run's outputs.*--mask-out"):
        check_infer_outputs(cfg(root, out=root / "g.gpkg", prob_out=root / "g_prob.tif",
                                mask_out=root / "m.tif"))  # fmt: skip
    with pytest.raises(RsSegError, match=r"f_prob\.qml: is one of another run's outputs"):
        (root / "f_prob.tif").rename(root / "kept.tif")  # the style alone, its raster moved
        check_infer_outputs(cfg(root, out=root / "g.gpkg", prob_out=root / "f_prob.tif"))


def test_an_earlier_releases_raster_belongs_to_the_layer_with_its_run_id(mapped_copy: Path) -> None:
    """Rasters from before the field-layer tag: the run id shared with the layer decides."""
    root = mapped_copy
    with rasterio.open(root / "f_prob.tif") as src:
        profile, pixels, tags = src.profile, src.read(), src.tags()
    del tags["fields_layer"]
    with rasterio.open(root / "f_prob.tif", "w", **profile) as dst:
        dst.write(pixels)
        dst.update_tags(**tags)
    check_infer_outputs(cfg(root, out=root / "f.gpkg"))
    with pytest.raises(RsSegError, match=r"f_prob\.tif: is one of another run's outputs"):
        check_infer_outputs(cfg(root, out=root / "f.parquet"))


# --- a full disk ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1500k", "2500k"])
def test_a_disk_that_fills_with_megabytes_left_is_one_line(tmp_path: Path, size: str) -> None:
    """The raster's scratch files are removed on the way out, freeing space again: about 1.1 to
    2.5 MB are free when the staging sees the error, more than the free-space test looked for."""
    image = np.random.default_rng(0).integers(0, 250, (1, 1200, 1200), dtype="uint8")
    with small_disk(tmp_path / "disk", size) as disk:
        (disk / "keep.txt").write_text("already on the disk")
        full = pytest.raises(RsSegError, match=r"f_prob\.tif: writing this output failed")
        with full as failed, staged_file(disk / "f_prob.tif") as staged:
            write_streamed_cog(staged, image, 256, run_id="x")
        assert ".partial-" not in str(failed.value) and "nothing was written" in str(failed.value)
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]


# --- any journal at all --------------------------------------------------------------------------
# Placeholders, filled in per example (:func:`_planted`): DEAD (a dead pid), SELF (this process),
# OUTSIDE (a file outside the output folder), LINK (a staging-like link to it), MATCHING (a file
# planted under the staging name that the journal's process would have used for the record's
# final), ID_x (the identity of x: an attacker knows those of the files it planted, and of the
# output rs_seg wrote, not of the user's files, which it could as well overwrite directly).

_FINALS = st.sampled_from(["f.gpkg", "f_prob.tif", "notes.txt", "absent.gpkg", "absent.gpkg",
                           "../outside/secret.txt", ".", "..", "", "a/b", "sub", "/etc/passwd",
                           "OUTSIDE", "LINK", ".f.gpkg.publish-x-1-0.json"])  # fmt: skip
_STAGINGS = st.sampled_from(["MATCHING", "MATCHING", "MATCHING", "LINK", "OUTSIDE", "notes.txt",
                             "../x", "f.gpkg", ".f.partial-ffffffff-1-0-abcdef.gpkg"])  # fmt: skip
_IDENTITIES = st.one_of(
    st.sampled_from(["ID_MATCHING", "ID_MATCHING", "ID_OUTPUT", "ID_LINK", None]),
    st.lists(st.integers(-(2**63), 2**63), max_size=5),
    st.text(max_size=5),
)
_JSON = json_values(text_size=20, max_leaves=12)


_PLAUSIBLE = st.fixed_dictionaries({
    "staging": st.sampled_from(["MATCHING", "MATCHING", "LINK"]),
    "final": st.sampled_from(["f.gpkg", "f_prob.tif", "notes.txt", "absent.gpkg", "sub", "LINK"]),
    "staged": st.sampled_from(["ID_MATCHING", "ID_MATCHING", "ID_LINK", [1, 2, 3, 4]]),
    "old": st.sampled_from([None, "ID_OUTPUT", "ID_MATCHING", [1, 2, 3, 4]]),
})  # fmt: skip


@st.composite
def _journals(draw: st.DrawFn) -> tuple[str, object]:
    if draw(st.booleans()):  # close to a real one: a dead run of this host, names that fit
        files = draw(st.lists(_PLAUSIBLE, min_size=1, max_size=3))
        return f".f.gpkg.publish-{OWNER_ID}-DEAD-0.json", {
            "rs_seg_publish": 1, "owner": OWNER_ID, "pid": "DEAD", "start": 0, "files": files,
        }  # fmt: skip
    owner = draw(st.sampled_from([OWNER_ID, OWNER_ID, "00000000"]))
    pid = draw(st.sampled_from(["DEAD", "DEAD", "SELF", 1, 2**31]))
    start = draw(st.sampled_from([0, 0, 1, 123456]))
    name = f".f.gpkg.publish-{owner}-{pid}-{start}.json"
    files = draw(st.lists(st.fixed_dictionaries({
        "staging": _STAGINGS, "final": _FINALS, "staged": _IDENTITIES, "old": _IDENTITIES,
    }), max_size=3))  # fmt: skip
    if draw(st.integers(0, 2)) == 0:
        return name, draw(_JSON)
    if not draw(st.booleans()):  # the content names another process than the name
        owner, pid, start = draw(st.sampled_from([OWNER_ID, "00000000"])), "DEAD", 1
    return name, {"rs_seg_publish": 1, "owner": owner, "pid": pid, "start": start,
                  "files": files}  # fmt: skip


def _planted(value: object, out: Path, outside: Path, pid: int, final: str = "") -> object:
    """``value`` with the placeholders filled in; MATCHING files are planted as they come."""
    if isinstance(value, list):
        return [_planted(v, out, outside, pid, final) for v in value]
    if isinstance(value, dict):
        final = str(value.get("final", final))
        final = _planted(final, out, outside, pid) if final in ("LINK", "OUTSIDE") else final
        return {k: _planted(v, out, outside, pid, str(final)) for k, v in value.items()}
    if value in ("DEAD", "SELF"):
        return pid if value == "DEAD" else os.getpid()
    if not isinstance(value, str):
        return value
    matching = out / staging(final, pid) if "/" not in final and final else out / "none"
    if value == "MATCHING" and matching.parent == out and not matching.exists():
        matching.write_text("planted")
    places = {"LINK": out / ".f.partial-link", "OUTSIDE": outside / "secret.txt",
              "MATCHING": matching, "OUTPUT": out / "f.gpkg"}  # fmt: skip
    if value.startswith("ID_") and value[3:] in places:
        path = places[value[3:]]
        return identity(path) if os.path.lexists(path) else [0, 0, 0, 0]
    if value in places:
        path = places[value]
        return path.name if path.parent == out else str(path)
    return value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted=st.lists(_journals(), min_size=1, max_size=3))
def test_no_journal_changes_a_file_rs_seg_does_not_own(planted) -> None:
    """Whatever journals lie in the output folder, recovery, cleanup and a real publication there
    change nothing outside it and none of the user's files in it."""
    pid = dead_pid_once()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside, out = root / "outside", root / "out"
        (outside / "sub").mkdir(parents=True)
        (outside / "secret.txt").write_text("precious")
        out.mkdir()
        (out / "notes.txt").write_text("the user's notes")
        (out / "f.gpkg").write_text("old")
        (out / ".f.partial-link").symlink_to(outside / "secret.txt")
        (out / "sub").symlink_to(outside / "sub")
        for name, document in planted:
            name = name.replace("DEAD", str(pid)).replace("SELF", str(os.getpid()))
            (out / name).write_text(json.dumps(_planted(document, out, outside, pid)))
        before, notes = snapshot(outside), digest(out / "notes.txt")
        complete_interrupted_publications(out)
        remove_leftovers(out / "f.gpkg")
        with staged_files([out / "f_prob.tif", out / "f.gpkg"], overwrite=True) as files:
            for path in files:
                path.write_text("new")
        assert snapshot(outside) == before
        assert digest(out / "notes.txt") == notes
        assert (out / "f.gpkg").read_text() == (out / "f_prob.tif").read_text() == "new"


_DEAD: list[int] = []


def dead_pid_once() -> int:
    """One dead pid for every example (a child process each would cost 100 ms a time)."""
    if not _DEAD:
        _DEAD.append(dead_pid())
    return _DEAD[0]
