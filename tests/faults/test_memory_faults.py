"""Memory and signals of ``rs-seg infer`` on very wide, mostly empty scenes (issue 27, point 5).

A 100000 x 100000 all-nodata scene grew to 12 GB in 100 s: rows without a window to predict gave
the writer no batch, so nothing held the reading back, and every row read waited in the writer's
queue with its mask; Ctrl-C and SIGTERM then waited for that whole queue. On a sparse scene a
batch gathered the windows of many rows, each a view that kept a chunk of the scene's width
alive. The scenes here are sparse GeoTIFFs of 100000 px width: kilobytes on disk.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_seg.infer.predict import predict_scene
from rs_seg.model.bundle import ModelBundle
from tests.helpers import ORIGIN, PIXEL, UTM, FunctionPredictor, hidden_leftovers, make_bundle

WIDTH = 100_000
CHIP = 64  # the bundles' window: a stride of 48 px at the default overlap


def wide_scene(
    path: Path, height: int, *, bands: int = 3, dtype: str = "uint16", data_every: int = 0
) -> Path:
    """A tiled, sparse scene ``WIDTH`` px wide: all nodata, or a square of data every few rows.

    ``data_every``: one 32 px square of data in every that many grid rows, each in another
    column, so a batch gathers windows from many rows, each with a chunk of the full width.
    """
    profile = {
        "driver": "GTiff", "height": height, "width": WIDTH, "count": bands, "dtype": dtype,
        "nodata": 0, "crs": UTM, "transform": from_origin(*ORIGIN, PIXEL, PIXEL), "tiled": True,
        "blockxsize": 256, "blockysize": 64, "compress": "deflate", "sparse_ok": True,
    }  # fmt: skip
    rng = np.random.default_rng(height)
    tops = range(8, height - 32, 48 * data_every) if data_every else []
    with rasterio.open(path, "w", **profile) as dst:
        for i, top in enumerate(tops):
            square = rng.integers(200, 4000, size=(bands, 32, 32)).astype(dtype)
            dst.write(square, window=Window(i * 7919 % (WIDTH - 32), top, 32, 32))
    return path


def constant(model: FunctionPredictor, batch: np.ndarray) -> np.ndarray:
    """A model that costs nothing: the pipeline around it is what is measured."""
    n, _, height, width = batch.shape
    return np.full((n, model.bundle.outputs, height, width), 0.5, dtype=np.float32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "model-bundle.pt", chip=CHIP)


@pytest.mark.parametrize("data_every", [0, 1], ids=["all-nodata", "sparse-data"])
def test_prediction_memory_does_not_grow_with_the_height_of_a_wide_scene(
    tmp_path: Path, bundle: Path, data_every: int
) -> None:
    """Four times the rows, the same peak of the arrays the pipeline holds.

    Before the fix the peak grew 1.5x (all nodata: rows read were queued for the writer with
    their masks; sparse: batches kept the chunks of every row they took a window from); now
    0.9-1.0x and 1.1-1.2x (the chunks and reads in flight at the peak vary). numpy's
    allocations are traced: the process's own size (interpreter, torch, network: 800 MB) and
    the chunks' timing hide the growth from a child's peak RSS at heights a test can afford.
    """
    model = ModelBundle.load(bundle)
    predictor = FunctionPredictor(model, constant)
    peaks = []
    for height in (384, 1536):
        scene = wide_scene(tmp_path / f"s{height}.tif", height, data_every=data_every)
        tracemalloc.start()
        predict_scene(scene, model, tmp_path / f"p{height}.tif", device="cpu", workers=2,
                      predictor=predictor)  # fmt: skip
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0], peaks


@pytest.fixture(scope="module")
def huge_empty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reported scene: 100000 x 100000 px, all nodata (one band, and its bundle)."""
    root = tmp_path_factory.mktemp("huge")
    model = make_bundle(root / "model-bundle.pt", bands=1, chip=CHIP)
    return wide_scene(root / "huge.tif", WIDTH, bands=1, dtype="uint8"), model


def peak_rss_mb(pid: int) -> float:
    """The peak RSS of a running process (``VmHWM``), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_huge_empty_scene_runs_in_flat_memory_and_stops_within_seconds(
    tmp_path: Path, huge_empty: tuple[Path, Path], name: str, code: int
) -> None:
    """Eight seconds into the prediction the peak RSS is that of the second one, and a signal
    ends the run within seconds, keeping nothing.

    Before the fix the peak grew by about 150 MB a second (1.5x over these six seconds) and the
    signal took 9-15 s to act, waiting for every row queued for the writer; now the peak is flat
    and the process ends about 2 s after the signal, most of it the interpreter's own exit.
    """
    scene, model = huge_empty
    child = subprocess.Popen(
        [sys.executable, "-m", "rs_seg", "infer", str(scene), "-o", "f.gpkg", "--model",
         str(model)],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not any(".tiles." in p.name for p in tmp_path.iterdir()):  # predicting
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the prediction never started"
            time.sleep(0.05)
        time.sleep(2)
        early = peak_rss_mb(child.pid)
        time.sleep(6)
        late = peak_rss_mb(child.pid)
        signalled = time.monotonic()
        child.send_signal(getattr(signal, name))
        _, stderr = child.communicate(timeout=120)
        seconds = time.monotonic() - signalled
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == code, stderr[-2000:]
    kind = "interrupted" if name == "SIGINT" else "terminated"
    assert stderr.strip().splitlines()[-1] == f"{kind}: no partial output was kept", stderr
    assert seconds < 10, f"ended {seconds:.1f} s after {name}"
    assert late < 1.25 * early, (early, late)
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and hidden_leftovers(tmp_path) == []


def test_finished_rows_without_data_are_nodata_when_rows_below_them_span_the_width(
    tmp_path: Path, bundle: Path
) -> None:
    """A grid row's span comes from all the rows its windows cover; the rows it finishes may
    hold no valid pixel while the rows below them hold data from edge to edge. Those rows are
    nodata, not whatever the writer's level buffer held before."""
    data = np.full((3, 300, 300), 1000, dtype=np.uint16)
    data[:, :50] = 0  # the first grid row finishes rows 0-47, its windows reach row 63
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = {"driver": "GTiff", "height": 300, "width": 300, "count": 3, "dtype": "uint16",
               "nodata": 0, "crs": UTM, "transform": transform}  # fmt: skip
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(data)
    prob = tmp_path / "prob.tif"
    model = ModelBundle.load(bundle)
    predict_scene(tmp_path / "scene.tif", model, prob, device="cpu", workers=1,
                  predictor=FunctionPredictor(model, constant))  # fmt: skip
    with rasterio.open(prob) as src:
        levels = src.read(1)
    assert (levels[:50] == 255).all()
    assert set(np.unique(levels[50:])) <= {127, 128}
