"""Fault injection on ``rs-seg prepare``: kills, signals, a full disk, broken inputs, wrong outputs.

Every case runs the real command in a child process and checks the three promises: the earlier
output is byte-identical or the new one is complete, no file the command did not write changed,
and the next run leaves no staging copy behind.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from rs_seg.prepare.index import read_index
from tests.helpers import (
    assert_one_line_error,
    digest,
    hidden_leftovers,
    pixel_box,
    rs_seg,
    signal_when_ready,
    small_disk,
    truncated_copy,
    write_labels,
    write_scene,
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Two scenes with labels, a chip folder from an earlier run, and a user's file beside it."""
    for seed, name in enumerate(["a", "b"]):
        write_scene(tmp_path / "scenes" / f"{name}.tif", 96, 96, seed=seed)
    write_labels(tmp_path / "labels.gpkg", [pixel_box(0, 0, 40, 40), pixel_box(50, 50, 90, 90)])
    (tmp_path / "notes.txt").write_text("the user's own file")
    done = prepare(tmp_path, "--chip-size", "32")
    assert done.returncode == 0, done.stderr
    return tmp_path


def prepare(root: Path, *extra: str, env: dict[str, str] | None = None, out: str = "chips"):
    return rs_seg("prepare", "--scenes", "scenes/*.tif", "--labels", "labels.gpkg", "--out", out,
                  *extra, cwd=root, env=env)  # fmt: skip


def assert_complete_chip_set(folder: Path, chips: int) -> None:
    index = read_index(folder)
    assert len(index) == chips
    assert all(Path(p).is_file() for p in [*index["image_path"], *index["mask_path"]])
    assert json.loads((folder / "summary.json").read_text())["chips"] == chips


def untouched_inputs(root: Path) -> dict[str, str]:
    return {**digest(root / "scenes"), **digest(root / "labels.gpkg"), **digest(root / "notes.txt")}


@pytest.mark.parametrize("step", ["staged", "swapped", "published"])
def test_sigkill_at_each_publication_step(work: Path, step: str) -> None:
    old, inputs = digest(work / "chips"), untouched_inputs(work)
    killed = prepare(work, "--chip-size", "48", "--overwrite", env={"RS_SEG_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    if step == "staged":
        assert digest(work / "chips") == old, "nothing published: the earlier chips, byte for byte"
    else:
        assert_complete_chip_set(work / "chips", 8)  # 2 scenes x (96 px / 48 px)^2
    assert untouched_inputs(work) == inputs
    again = prepare(work, "--chip-size", "48", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert hidden_leftovers(work) == [], "the next run removed what the killed one left"


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_before_publication_keeps_the_earlier_output(work: Path, name: str) -> None:
    old, inputs = digest(work / "chips"), untouched_inputs(work)
    stopped = prepare(work, "--chip-size", "48", "--overwrite",
                      env={"RS_SEG_KILL_AT": f"staged:{name}"})  # fmt: skip
    assert stopped.returncode == (130 if name == "SIGINT" else 143), stopped.stderr
    assert "no partial output was kept" in stopped.stderr
    assert digest(work / "chips") == old and untouched_inputs(work) == inputs
    assert hidden_leftovers(work) == [], "the process cleaned up after itself"


def test_ctrl_c_while_chips_are_being_written(work: Path) -> None:
    write_scene(work / "scenes" / "big.tif", 1024, 1024, seed=7)
    old, inputs = digest(work / "chips"), untouched_inputs(work)
    args = ["prepare", "--scenes", "scenes/*.tif", "--labels", "labels.gpkg", "--out", "chips",
            "--chip-size", "16", "--overwrite"]  # fmt: skip
    staging = lambda: any(".chips.partial-" in p.name for p in work.iterdir())  # noqa: E731
    stopped = signal_when_ready(args, work, staging, signal.SIGINT, settle=0.5)
    if stopped is None or stopped.returncode == 0:
        pytest.skip("chipping finished before the signal arrived")
    assert stopped.returncode == 130, stopped.stderr
    assert digest(work / "chips") == old and untouched_inputs(work) == inputs
    assert hidden_leftovers(work) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(work: Path) -> None:
    with small_disk(work / "disk", "48k") as disk:
        (disk / "keep.txt").write_text("already on the disk")
        full = prepare(work, "--chip-size", "16", out="disk/chips")
        assert_one_line_error(full, "no space left on the device", "disk/chips")
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]
        assert (disk / "keep.txt").read_text() == "already on the disk"


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_a_truncated_scene_is_one_line_naming_it(work: Path, fraction: float) -> None:
    truncated_copy(work / "scenes" / "b.tif", work / "scenes" / "c.tif", fraction)
    old = digest(work / "chips")
    failed = prepare(work, "--overwrite")
    assert_one_line_error(failed, "c.tif")
    assert digest(work / "chips") == old and hidden_leftovers(work) == []


def test_foreign_files_in_the_output_folder_are_never_deleted(work: Path) -> None:
    (work / "chips" / "thesis.docx").write_text("years of work")
    old = digest(work / "chips")
    refused = prepare(work, "--overwrite")
    assert_one_line_error(refused, "'thesis.docx', which rs-seg prepare did not write")
    assert digest(work / "chips") == old


@pytest.mark.parametrize("out", ["scenes", ".", ".."])
def test_an_output_over_the_inputs_or_the_working_folder_is_refused(work: Path, out: str) -> None:
    inputs = untouched_inputs(work)
    refused = prepare(work, "--overwrite", out=out)
    assert_one_line_error(refused)
    assert untouched_inputs(work) == inputs and (work / "chips").is_dir()


def test_synth_replaces_only_its_own_folder(tmp_path: Path) -> None:
    made = rs_seg("synth", "--out", "synth", "--size", "64", "--scenes", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    again = rs_seg("synth", "--out", "synth", "--size", "64", "--scenes", "1", "--seed", "2",
                   "--overwrite", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "thesis.docx").write_text("years of work")
    before = digest(home)
    refused = rs_seg("synth", "--out", "home", "--size", "64", "--overwrite", cwd=tmp_path)
    assert_one_line_error(refused, "which rs-seg synth did not write")
    assert_one_line_error(rs_seg("synth", "--out", ".", "--overwrite", cwd=home), "working folder")
    assert digest(home) == before and hidden_leftovers(tmp_path) == []
