"""Builders and checks shared by test modules (no test module imports another test module).

Importing this module (child processes of the tests do too) sets the offline defaults and arms the
torchvision shim (``import rs_seg``) before anything imports torch libraries.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

# rs_seg's package import arms the torchvision shim before any test imports torch libraries.
from rs_seg.config import IncomingConfig, MaskTarget, ModelConfig, TrainConfig

if TYPE_CHECKING:
    from rs_seg.infer.vectorize import VectorizeSettings
    from rs_seg.model.bundle import ModelBundle

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_300_000.0)  # top-left corner of test scenes, UTM 33N
PIXEL = 10.0


def write_scene(
    path: Path,
    height: int,
    width: int,
    *,
    bands: int = 3,
    dtype: str = "uint16",
    crs: str | None = UTM,
    origin: tuple[float, float] = ORIGIN,
    pixel: float = PIXEL,
    nodata: float | None = 0,
    nodata_cols: int = 0,
    seed: int = 0,
) -> Path:
    """A scene of random reflectance-like values; the first ``nodata_cols`` columns are nodata."""
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, size=(bands, height, width)).astype(dtype)
    if nodata_cols:
        data[:, :, :nodata_cols] = nodata
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": dtype,
        "nodata": nodata,
    }
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(*origin, pixel, pixel))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def pixel_box(
    row0: int, col0: int, row1: int, col1: int, origin=ORIGIN, pixel=PIXEL
) -> shapely.Polygon:
    """A box in scene CRS covering pixel rows [row0, row1) and columns [col0, col1)."""
    x0, y0 = origin
    return shapely.box(x0 + col0 * pixel, y0 - row1 * pixel, x0 + col1 * pixel, y0 - row0 * pixel)


def write_labels(
    path: Path, polygons: Sequence[shapely.Geometry], crs: str = UTM, to_crs: str | None = None
) -> Path:
    """Polygons as a vector file; ``to_crs`` reprojects them first (e.g. to EPSG:4326)."""
    frame = gpd.GeoDataFrame(
        {"class": ["cropland"] * len(polygons)}, geometry=list(polygons), crs=crs
    )
    if to_crs is not None:
        frame = frame.to_crs(to_crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path)
    return path


def read_chip(path: Path) -> np.ndarray:
    """All bands of a chip file."""
    with rasterio.open(path) as src:
        return src.read()


def write_learnable_scene(
    path: Path, size: int, boxes: Sequence[tuple[int, int, int, int]], bands: int = 3, seed: int = 0
) -> Path:
    """A scene where cropland (the pixel ``boxes``) is brighter in band 1: a model can learn it."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 120, size=(bands, size, size))
    for row0, col0, row1, col1 in boxes:
        data[0, row0:row1, col0:col1] += 900
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": bands, "dtype": "uint16",
        "nodata": 0, "crs": UTM, "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.clip(data, 1, 65535).astype("uint16"))
    return path


LEARNABLE_BOXES = [(8, 8, 60, 90), (100, 20, 180, 70), (120, 110, 170, 185), (10, 120, 70, 180)]


# How long a child waits for its ephemeral Prefect server (Prefect's default: 20 s). Start-up on a
# fresh SQLite database, 2 cores: 12 s with two other busy processes (load 3), 18-27 s with four
# (load 5; tests/tools/cpu_load.py), and for two servers starting at once as in
# test_two_overlapping_flow_runs_map_every_scene_exactly_once 18-19 s at load 3, 43-55 s at load
# 6-9. Prefect counts only its 0.1 s poll sleeps against the limit, so the wall-clock wait is
# longer still. A value set in the environment wins.
PREFECT_STARTUP_TIMEOUT_S = 180


def ephemeral_prefect_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child process that runs flows on a private, temporary Prefect home
    (no server configured, so Prefect starts its ephemeral one) with the repo importable."""
    # Unset, not empty: Prefect 3.8 reads an empty PREFECT_API_URL as a server when sending events.
    timeout = os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_STARTUP_TIMEOUT_S)
    )
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": timeout,
        "PYTHONPATH": str(ROOT),
    }


def train_config(chips: Path, out: Path, **overrides: Any) -> TrainConfig:
    """Tiny, fast settings: resnet18 Unet, 32 px chips, fp32 on CPU, no loader workers."""
    settings = {
        "chips": chips,
        "out": out,
        "model": {"arch": "Unet", "encoder": "resnet18"},
        "epochs": 6,
        "batch_size": 8,
        "optimizer": {"lr": 3e-3},
        "accelerator": "cpu",
        "num_workers": 0,
        **overrides,
    }
    return TrainConfig.model_validate(settings)


def make_bundle(
    path: Path, bands: int = 3, chip: int = 64, seed: int = 0, task: MaskTarget = "cropland"
) -> Path:
    """A model bundle with random weights (Unet/resnet18): real inference, no training."""
    import torch

    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.networks import build_model
    from rs_seg.model.normalization import Normalization

    torch.manual_seed(seed)
    model = ModelConfig(arch="Unet", encoder="resnet18", task=task)
    net = build_model(model, bands)
    return ModelBundle(
        model=model,
        bands=list(range(1, bands + 1)),
        band_names=[f"b{i}" for i in range(1, bands + 1)],
        normalization=Normalization((1000.0,) * bands, (300.0,) * bands),
        chip_size=chip,
        threshold=0.5,
        pixel_size=[PIXEL, PIXEL],
        band_count=bands,
        crs=UTM,
        state_dict=net.state_dict(),
    ).save(path)


class FunctionPredictor:
    """A fake model for ``predict_scene`` / ``run_infer`` (their ``predictor``): ``fn`` in place
    of the network.

    Band selection, normalization and batch layout are the bundle's, from a real
    ``WindowPredictor`` on the CPU; ``fn(model, batch)`` takes this model (its ``bundle``) and a
    batch of normalized windows (N, bands, H, W) and returns probabilities (N, outputs, H, W).
    ``bundle``: a loaded bundle or the path of one.
    """

    def __init__(
        self,
        bundle: ModelBundle | Path,
        fn: Callable[[FunctionPredictor, np.ndarray], np.ndarray],
    ) -> None:
        import torch

        from rs_seg.model.bundle import ModelBundle
        from rs_seg.model.predictor import WindowPredictor

        self.bundle = bundle if isinstance(bundle, ModelBundle) else ModelBundle.load(bundle)
        real = WindowPredictor(self.bundle, torch.device("cpu"), tta=False)
        self.band_index = real.band_index
        self.autocast = real.autocast
        self.normalize = real.normalize
        self.in_model_layout = real.in_model_layout
        self.fn = fn

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(self, batch)


def digest(path: Path) -> dict[str, str]:
    """Every file at or below ``path`` with the SHA-256 of its bytes (folders as '/')."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(path.rglob("*"))
    }


def rs_seg(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """``python -m rs_seg ARGS`` in a child process (a real exit code, real signals)."""
    return subprocess.run(
        [sys.executable, "-m", "rs_seg", *map(str, args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def signal_when_ready(
    args: list[str | Path],
    cwd: Path,
    ready: Callable[[], bool],
    signum: int,
    settle: float = 0.0,
    timeout: float = 240,
) -> subprocess.CompletedProcess | None:
    """Run ``python -m rs_seg ARGS``, send ``signum`` once ``ready()`` holds (after ``settle`` s).

    Returns the finished process, or None when it ended before the signal could be sent.
    """
    child = subprocess.Popen([sys.executable, "-m", "rs_seg", *map(str, args)], cwd=cwd,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            return None
        assert time.monotonic() < deadline, "the command never got to the point to signal"
        time.sleep(0.05)
    time.sleep(settle)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, "", stderr)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one ``error:`` line holding ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def hidden_leftovers(folder: Path) -> list[str]:
    """Staging copies, journals and scratch files of rs_seg in ``folder``."""
    return sorted(
        p.name
        for p in Path(folder).iterdir()
        if p.name.startswith(".") and (".partial-" in p.name or ".publish-" in p.name)
    )


@contextlib.contextmanager
def small_disk(where: Path, size: str = "64k") -> Iterator[Path]:
    """A size-capped tmpfs mounted at ``where`` (root only; callers skip otherwise)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a size-capped tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def truncated_copy(source: Path, target: Path, fraction: float = 0.5) -> Path:
    """A copy of ``source`` cut to ``fraction`` of its bytes: a download or copy that died."""
    data = Path(source).read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def with_model(cfg: IncomingConfig, model: Path) -> IncomingConfig:
    """The same new-imagery settings with another model bundle (a "new latest model")."""
    return cfg.model_copy(update={"infer": cfg.infer.model_copy(update={"model": model})})


def uint8_profile(height: int, width: int, bands: int = 2, block: int = 512) -> dict[str, Any]:
    """A tiled uint8 GeoTIFF profile with nodata 255, the form of rs_seg's probability rasters."""
    return {
        "driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": "uint8",
        "nodata": 255, "crs": UTM, "transform": from_origin(*ORIGIN, 2.0, 2.0), "tiled": True,
        "blockxsize": block, "blockysize": block,
    }  # fmt: skip


def write_streamed_cog(path: Path, image: np.ndarray, rows_per_block: int, **tags: str) -> Path:
    """``image`` as a COG through ``predict.streamed_cog``, in blocks of rows as inference writes.

    Band descriptions are ``band_1``, ``band_2``, ...; ``tags`` become the raster's tags.
    """
    from rs_seg.infer.predict import streamed_cog

    bands, height, width = image.shape
    with streamed_cog(path, uint8_profile(height, width, bands)) as (dst, add_rows):
        for top in range(0, height, rows_per_block):
            rows = image[:, top : top + rows_per_block]
            dst.write(rows, window=((top, top + rows.shape[1]), (0, width)))
            add_rows(rows)
        dst.descriptions = tuple(f"band_{b + 1}" for b in range(bands))
        dst.update_tags(**tags)
    return path


def json_values(text_size: int = 8, max_leaves: int = 10) -> Any:
    """A hypothesis strategy for any JSON document: what a planted or edited file may hold."""
    from hypothesis import strategies as st

    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
        | st.text(max_size=text_size)
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


FIELD_SETTINGS = ("threshold", "boundary_threshold", "min_area", "grow")


def vectorize_settings(**options: Any) -> VectorizeSettings:
    """VectorizeSettings from flat keyword options, the field settings among them checked."""
    from rs_seg.infer.vectorize import VectorizeSettings
    from rs_seg.model.fields import FieldSettings

    fields = {k: options.pop(k) for k in FIELD_SETTINGS if k in options}
    return VectorizeSettings(FieldSettings.checked(**fields), **options)
