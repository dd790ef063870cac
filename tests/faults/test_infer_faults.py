"""Fault injection on ``rs-seg infer`` and ``rs-seg vectorize``: the fields, probability raster and
mask of one run appear together or not at all, and never over an input or a user's file."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
import rasterio
import shapely

from rs_seg.staging import complete_interrupted_publications
from tests.helpers import (
    UTM,
    assert_one_line_error,
    digest,
    hidden_leftovers,
    make_bundle,
    rs_seg,
    signal_when_ready,
    small_disk,
    truncated_copy,
    write_scene,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "model-bundle.pt", chip=64)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Path:
    """A scene, the outputs of an earlier run, and a user's file beside them (made once)."""
    root = tmp_path_factory.mktemp("earlier")
    write_scene(root / "scene.tif", 160, 160)
    (root / "notes.txt").write_text("the user's own file")
    done = infer(root, bundle)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def work(tmp_path: Path, earlier: Path) -> Path:
    """A fresh copy of ``earlier`` for one test."""
    return Path(shutil.copytree(earlier, tmp_path / "work"))


def infer(root: Path, bundle: Path, *extra: str, env: dict[str, str] | None = None):
    return rs_seg("infer", "scene.tif", "-o", "f.gpkg", "--model", bundle, "--min-area", "0",
                  *extra, cwd=root, env=env)  # fmt: skip


def run_ids(root: Path) -> tuple[str, str]:
    """The run id stamped in the probability raster and in the fields layer."""
    with rasterio.open(root / "f_prob.tif") as src:
        prob = src.tags()["run_id"]
    fields = pyogrio.read_info(root / "f.gpkg", layer="fields")["layer_metadata"]["run_id"]
    return prob, fields


def inputs(root: Path) -> dict[str, str]:
    return {**digest(root / "scene.tif"), **digest(root / "notes.txt")}


STEPS = {  # kill point -> which files hold the new run right after the kill
    "staged": (False, False),
    "journal": (False, False),
    "replaced-1": (True, False),
    "replaced-2": (True, False),  # the probability raster's style is published second
    "replaced-3": (True, True),
    "published": (True, True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_sigkill_at_each_publication_step(work: Path, bundle: Path, step: str) -> None:
    old_prob, old_fields = run_ids(work)
    before = inputs(work)
    killed = infer(work, bundle, "--overwrite", env={"RS_SEG_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    prob, fields = run_ids(work)  # both files open: each one is whole, old or new
    assert ((prob != old_prob), (fields != old_fields)) == STEPS[step]
    complete_interrupted_publications(work)  # what the next rs-seg run on these outputs does first
    prob, fields = run_ids(work)
    assert prob == fields, "after recovery the set is one run's"
    assert (prob == old_prob) == (step == "staged")
    assert inputs(work) == before


def test_the_next_run_completes_a_half_published_set_and_cleans_up(work: Path, bundle) -> None:
    killed = infer(work, bundle, "--overwrite", env={"RS_SEG_KILL_AT": "replaced-1"})
    assert killed.returncode == -signal.SIGKILL and hidden_leftovers(work)
    again = infer(work, bundle, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "completed the publication" in again.stderr
    prob, fields = run_ids(work)
    assert prob == fields and hidden_leftovers(work) == []


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_before_publication_keeps_the_earlier_outputs(work: Path, bundle, name) -> None:
    old = {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")}
    stopped = infer(work, bundle, "--overwrite", "--mask-out", "m.tif",
                    env={"RS_SEG_KILL_AT": f"staged:{name}"})  # fmt: skip
    assert stopped.returncode == (130 if name == "SIGINT" else 143), stopped.stderr
    assert {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")} == old
    assert not (work / "m.tif").exists() and hidden_leftovers(work) == []


def test_ctrl_c_in_the_middle_of_a_scene(work: Path, bundle: Path) -> None:
    write_scene(work / "big.tif", 1536, 1536, seed=3)
    old = {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")}
    args = ["infer", "big.tif", "-o", "f.gpkg", "--prob-out", "f_prob.tif", "--model",
            str(bundle), "--overwrite", "--batch-size", "4"]  # fmt: skip
    predicting = lambda: any(".tiles." in p.name for p in work.iterdir())  # noqa: E731
    stopped = signal_when_ready(args, work, predicting, signal.SIGINT, settle=1.0)
    if stopped is None or stopped.returncode == 0:
        pytest.skip("inference finished before the signal arrived")
    assert stopped.returncode == 130, stopped.stderr
    assert {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")} == old
    assert hidden_leftovers(work) == []


def test_a_full_disk_is_one_line_naming_the_output(work: Path, bundle: Path) -> None:
    with small_disk(work / "disk", "32k") as disk:
        (disk / "keep.txt").write_text("already on the disk")
        full = rs_seg("infer", "scene.tif", "-o", "disk/f.gpkg", "--model", bundle,
                      cwd=work)  # fmt: skip
        assert_one_line_error(full, "disk/f.gpkg: no space left on the device")
        assert sorted(p.name for p in disk.iterdir()) == ["keep.txt"]


def test_a_truncated_scene_is_one_line_naming_it(work: Path, bundle: Path) -> None:
    truncated_copy(work / "scene.tif", work / "cut.tif", 0.9)  # prepare's suite cuts at 0.5 too
    old = {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")}
    failed = rs_seg("infer", "cut.tif", "-o", "f.gpkg", "--prob-out", "f_prob.tif", "--model",
                    bundle, "--overwrite", cwd=work)  # fmt: skip
    assert_one_line_error(failed, "cut.tif")
    assert {**digest(work / "f.gpkg"), **digest(work / "f_prob.tif")} == old
    assert hidden_leftovers(work) == []


def test_an_output_over_the_input_scene_is_refused(work: Path, bundle: Path) -> None:
    before = inputs(work)  # --mask-out goes through the same check (tests/test_staging.py)
    refused = infer(work, bundle, "--mask-out", "scene.tif", "--overwrite")
    assert_one_line_error(refused, "is (or holds) the input")
    assert inputs(work) == before


def test_a_users_own_files_at_the_output_paths_are_never_replaced(work: Path, bundle) -> None:
    roads = gpd.GeoDataFrame({"name": ["A1"]}, geometry=[shapely.box(0, 0, 1, 1)], crs=UTM)
    roads.to_file(work / "roads.gpkg", layer="roads")
    write_scene(work / "dem.tif", 16, 16, bands=1)
    before = {**digest(work / "roads.gpkg"), **digest(work / "dem.tif")}
    refused = rs_seg("infer", "scene.tif", "-o", "roads.gpkg", "--model", bundle, "--overwrite",
                     cwd=work)  # fmt: skip
    assert_one_line_error(refused, "roads.gpkg: was not written by rs-seg")
    refused = infer(work, bundle, "--prob-out", "dem.tif", "--overwrite")
    assert_one_line_error(refused, "dem.tif: was not written by rs-seg")
    assert {**digest(work / "roads.gpkg"), **digest(work / "dem.tif")} == before


# --- rs-seg vectorize ---------------------------------------------------------------------------


def vectorize(root: Path, *extra: str, env: dict[str, str] | None = None):
    return rs_seg("vectorize", "f_prob.tif", "-o", "v.gpkg", "--min-area", "0", *extra,
                  cwd=root, env=env)  # fmt: skip


@pytest.mark.parametrize("step", ["staged", "published"])
def test_vectorize_killed_at_publication_keeps_old_or_new(work: Path, step: str) -> None:
    assert vectorize(work).returncode == 0
    old = digest(work / "v.gpkg")
    killed = vectorize(work, "--threshold", "0.3", "--overwrite", env={"RS_SEG_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    assert (digest(work / "v.gpkg") == old) == (step == "staged")
    assert pyogrio.read_info(work / "v.gpkg", layer="fields")["features"] >= 0  # a whole file
    again = vectorize(work, "--overwrite")
    assert again.returncode == 0 and hidden_leftovers(work) == []


def test_vectorize_refuses_foreign_outputs_and_broken_rasters(work: Path) -> None:
    roads = gpd.GeoDataFrame({"name": ["A1"]}, geometry=[shapely.box(0, 0, 1, 1)], crs=UTM)
    roads.to_file(work / "v.gpkg", layer="roads")
    before = digest(work / "v.gpkg")
    assert_one_line_error(vectorize(work, "--overwrite"), "v.gpkg: was not written by rs-seg")
    assert digest(work / "v.gpkg") == before
    truncated_copy(work / "f_prob.tif", work / "cut.tif", 0.5)
    failed = rs_seg("vectorize", "cut.tif", "-o", "w.gpkg", cwd=work)
    assert_one_line_error(failed, "cut.tif")
    assert not (work / "w.gpkg").exists() and hidden_leftovers(work) == []


def test_vectorize_on_a_full_disk_is_one_line(work: Path) -> None:
    with small_disk(work / "disk", "32k") as disk:
        full = rs_seg("vectorize", "f_prob.tif", "-o", "disk/v.gpkg", "--min-area", "0",
                      cwd=work)  # fmt: skip
        assert_one_line_error(full, "disk/v.gpkg: no space left on the device")
        assert list(disk.iterdir()) == []
