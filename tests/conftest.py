"""Shared fixtures: tiny GeoTIFF scenes and label files written by the tests themselves.

Every test builds exactly the data it needs in ``tmp_path`` (a few hundred pixels at most), so the
suite needs no network and no shared data, and each test states its own geometry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

import rs_seg  # noqa: F401 - arms the torchvision shim before any test imports torch libs

UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_300_000.0)  # top-left corner of test scenes, UTM 33N
PIXEL = 10.0
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture
def scene_factory(tmp_path: Path) -> Callable[..., Path]:
    """``scene_factory(name, height, width, **kwargs)`` writes a scene under ``tmp_path``."""

    def make(name: str, height: int, width: int, **kwargs) -> Path:
        return write_scene(tmp_path / "scenes" / f"{name}.tif", height, width, **kwargs)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests that need ../shared/data when it is absent (clean checkouts, other machines)."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def tiny_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared chip folder (32 px chips of a learnable 192 px scene, 1-chip blocks), shared
    read-only by the training tests."""
    from rs_seg.config import PrepareConfig, SplitConfig
    from rs_seg.prepare import prepare

    root = tmp_path_factory.mktemp("tiny")
    scene = write_learnable_scene(root / "scene.tif", 192, LEARNABLE_BOXES)
    labels = write_labels(root / "labels.gpkg", [pixel_box(*b) for b in LEARNABLE_BOXES])
    cfg = PrepareConfig(
        scenes=[str(scene)],
        labels=labels,
        out=root / "chips",
        chip_size=32,
        split=SplitConfig(block_chips=1, seed=1),
    )
    return prepare(cfg).out


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
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


@pytest.fixture(scope="session")
def trained_tiny_run(tiny_chips: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real fit (Unet/resnet18, 6 epochs on the 32 px chips, ~15 s) plus its evaluation,
    shared by every test that needs a trained model: returns (TrainOutcome, EvaluationOutcome)."""
    from rs_seg.config import TrainConfig
    from rs_seg.evaluation import evaluate_run
    from rs_seg.training import train

    cfg = TrainConfig(
        chips=tiny_chips,
        out=tmp_path_factory.mktemp("trained") / "run",
        model={"arch": "Unet", "encoder": "resnet18"},
        epochs=6,
        batch_size=8,
        optimizer={"lr": 3e-3},
        accelerator="cpu",
        num_workers=0,
    )
    outcome = train(cfg)
    return outcome, evaluate_run(outcome.run, outcome.best_checkpoint)
