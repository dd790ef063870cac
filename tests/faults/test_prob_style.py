"""Fault injection on the QGIS style sidecar of ``rs-seg infer``: the style is published with the
rasters and fields as one set, and a style the user saved from QGIS is user data: never replaced."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pyogrio
import pytest
import rasterio

from rs_seg.staging import complete_interrupted_publications, style_written_by_rs_seg
from tests.helpers import (
    assert_one_line_error,
    digest,
    hidden_leftovers,
    make_bundle,
    rs_seg,
    write_scene,
)

USER_STYLE = """<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.4-Białowieża" styleCategories="AllStyleCategories">
  <pipe><rasterrenderer type="singlebandgray" band="1" opacity="0.6"/></pipe>
</qgis>
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "model-bundle.pt", chip=64)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Path:
    """A scene and the outputs of an earlier run, with its mask (made once)."""
    root = tmp_path_factory.mktemp("earlier")
    write_scene(root / "scene.tif", 128, 128)
    done = infer(root, bundle)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def work(tmp_path: Path, earlier: Path) -> Path:
    return Path(shutil.copytree(earlier, tmp_path / "work"))


def infer(root: Path, bundle: Path, *extra: str, env: dict[str, str] | None = None):
    return rs_seg("infer", "scene.tif", "-o", "f.gpkg", "--model", bundle, "--min-area", "0",
                  "--mask-out", "m.tif", *extra, cwd=root, env=env)  # fmt: skip


def run_ids(root: Path) -> dict[str, str]:
    """The run id each file of the set carries, in publication order."""
    ids = {}
    for raster in ("f_prob", "m"):
        with rasterio.open(root / f"{raster}.tif") as src:
            ids[f"{raster}.tif"] = src.tags()["run_id"]
        style = (root / f"{raster}.qml").read_text(encoding="utf-8")
        found = re.search(r"<!-- rs_seg run_id: (\w+) -->", style)
        ids[f"{raster}.qml"] = found[1] if found else ""
    ids["f.gpkg"] = pyogrio.read_info(root / "f.gpkg", layer="fields")["layer_metadata"]["run_id"]
    return ids


def test_the_set_includes_the_styles(earlier: Path) -> None:
    ids = run_ids(earlier)
    assert len(set(ids.values())) == 1 and all(ids.values()), ids
    assert style_written_by_rs_seg(earlier / "f_prob.qml") and style_written_by_rs_seg(
        earlier / "m.qml"
    )


# publication order: f_prob.tif, f_prob.qml, m.tif, m.qml, f.gpkg
@pytest.mark.parametrize(("step", "new"), [("replaced-2", 2), ("replaced-4", 4)])
def test_sigkill_between_a_raster_and_the_fields_is_completed_by_the_next_run(
    work: Path, bundle: Path, step: str, new: int
) -> None:
    old = run_ids(work)
    killed = infer(work, bundle, "--overwrite", env={"RS_SEG_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL
    after = run_ids(work)  # every file is whole: its own run id, old or new
    changed = [name for name in after if after[name] != old[name]]
    assert changed == list(after)[:new], (changed, step)
    complete_interrupted_publications(work)  # what the next rs-seg run here does first
    ids = run_ids(work)
    assert len(set(ids.values())) == 1 and ids["f.gpkg"] != old["f.gpkg"]
    assert hidden_leftovers(work) == []


def test_a_style_the_user_saved_is_never_replaced(work: Path, bundle: Path) -> None:
    (work / "f_prob.qml").write_text(USER_STYLE, encoding="utf-8")
    before = digest(work)
    refused = infer(work, bundle, "--overwrite")
    assert_one_line_error(refused, "f_prob.qml: was not written by rs-seg")
    assert digest(work) == before and hidden_leftovers(work) == []
