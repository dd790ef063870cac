"""``rs-seg infer URL``: a COG on a web server maps exactly like the same file on disk.

The scene is served by a loopback server that speaks byte ranges and fails on demand
(tests/range_server.py); the model is a random-weight bundle, so inference is real and fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from rs_seg.config import InferConfig
from rs_seg.infer.run import InferSummary, run_infer
from rs_seg.remote import display
from tests.helpers import assert_one_line_error, hidden_leftovers, make_bundle, rs_seg
from tests.range_server import RangeServer
from tests.stac_helpers import FAST_RETRIES, serving_scene


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeServer]:
    with serving_scene(tmp_path / "www", monkeypatch) as served:
        yield served


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "m.pt", task="fields")


def infer(scene: str | Path, out: Path, model: Path) -> InferSummary:
    cfg = InferConfig(scene=scene, out=out / "fields.gpkg", model=model, device="cpu",
                      min_area=0, mask_out=out / "mask.tif")  # fmt: skip
    return run_infer(cfg)


def assert_same_outputs(a: InferSummary, b: InferSummary) -> None:
    for first, second in ((a.prob, b.prob), (a.mask, b.mask)):
        with rasterio.open(first) as one, rasterio.open(second) as other:
            assert np.array_equal(one.read(), other.read())
            assert np.array_equal(one.read_masks(), other.read_masks())
    one, other = (pyogrio.read_dataframe(s.fields, layer="fields") for s in (a, b))
    assert len(one) == len(other) == a.polygons > 0
    assert one.geometry.to_wkb().tolist() == other.geometry.to_wkb().tolist()


def test_a_url_scene_maps_like_the_file_and_is_read_in_ranges(
    tmp_path: Path, server: RangeServer, bundle: Path
) -> None:
    local = infer(server.root / "scene.tif", tmp_path / "local", bundle)
    remote = infer(f"{server.url}/scene.tif", tmp_path / "remote", bundle)
    assert_same_outputs(local, remote)
    gets = server.data_requests("scene.tif")
    assert len(gets) > 1 and all(r.range for r in gets), "byte ranges, never one whole GET"
    with rasterio.open(remote.prob) as src:
        assert display(src.tags()["scene"]) == f"{server.url}/scene.tif", "provenance: the URL"


@pytest.mark.parametrize("kind", ["503", "cut"])
def test_a_transient_failure_mid_scene_is_retried(
    tmp_path: Path, server: RangeServer, bundle: Path, kind: str
) -> None:
    local = infer(server.root / "scene.tif", tmp_path / "local", bundle)
    server.fail(kind, count=2, after=1)  # the header reads, then two requests fail
    remote = infer(f"{server.url}/scene.tif", tmp_path / "remote", bundle)
    assert server.faults.count == 0, "the failures happened, and were retried"
    assert_same_outputs(local, remote)


@pytest.mark.slow  # a command in a child process: ~8 s of imports
def test_a_lasting_failure_is_one_line_and_leaves_no_outputs(
    tmp_path: Path, server: RangeServer, bundle: Path
) -> None:
    server.fail("503", after=1)  # the server fails once the header is read: mid-scene
    url = f"{server.url}/scene.tif"
    out = tmp_path / "out"
    out.mkdir()
    result = rs_seg("infer", url, "-o", out / "fields.gpkg", "--model", bundle, "--device", "cpu",
                    cwd=tmp_path, env={**os.environ, **FAST_RETRIES})  # fmt: skip
    assert_one_line_error(result, f"error: {url}: reading the scene failed after 2 retries per")
    assert list(out.iterdir()) == [] and hidden_leftovers(out) == [], "nothing half-written"


@pytest.mark.slow  # a command in a child process: ~8 s of imports
def test_a_url_output_is_refused_before_any_work(tmp_path: Path, server: RangeServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rs_seg.infer", f"{server.url}/scene.tif", "-o",
         f"{server.url}/fields.gpkg", "--model", str(tmp_path / "never-read.pt")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(result, "is a URL; outputs are written to local files")
    assert server.requests == [], "refused before the scene was touched"
