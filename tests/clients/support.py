"""Real clients (QGIS, GDAL's validators) on real rs_seg outputs of tiny synthetic scenes: the
builders and runners behind the fixtures of ``tests/clients/conftest.py``.

PyQGIS and GDAL's sample validators live in the system Python (Debian: ``python3-qgis``,
``python3-gdal``), not in the venv: importing them here would mix two numpy and two GDAL builds in
one process. So the outputs are written here with rs_seg, and the clients run as children under
``/usr/bin/python3`` (``RS_SEG_SYSTEM_PYTHON`` for another one), printing what they saw.

Without those packages the tests skip and say how to install them; with ``RS_SEG_REQUIRE_QGIS=1``
(``.ci/run`` sets it once its apt-get install succeeded) a missing client fails instead, so CI
cannot pass by skipping.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.helpers import ORIGIN, PIXEL, UTM

HERE = Path(__file__).resolve().parent
QGIS_SCRIPT = HERE / "qgis_check.py"
SYSTEM_PYTHON = os.environ.get("RS_SEG_SYSTEM_PYTHON", "/usr/bin/python3")
INSTALL_HINT = (
    "apt-get install --no-install-recommends python3-qgis qgis-providers gdal-bin python3-gdal; "
    "CI (.ci/run) installs them"
)
# Where Debian's python3-gdal puts GDAL's sample scripts (3.6: osgeo_utils/samples).
VALIDATORS = ("validate_gpkg.py", "validate_cloud_optimized_geotiff.py")
VALIDATOR_DIRS = (
    "/usr/lib/python3/dist-packages/osgeo_utils/samples",
    "/usr/share/doc/python3-gdal/examples",
    "/usr/share/gdal/samples",
)

# The scene: 160 rows x 192 columns (not square, so axes cannot swap unseen), cropland boxes bright
# in band 1, the first NODATA_COLS columns and a bottom-right corner nodata: the probability
# raster has masked pixels that statistics must leave out.
ROWS, COLS, NODATA_COLS = 160, 192, 12
BOXES = [(8, 20, 60, 90), (90, 24, 150, 70), (100, 110, 150, 180), (10, 120, 70, 176)]


def required() -> bool:
    return os.environ.get("RS_SEG_REQUIRE_QGIS") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail where CI installed the clients (RS_SEG_REQUIRE_QGIS=1)."""
    if required():
        pytest.fail(f"{reason}, but RS_SEG_REQUIRE_QGIS=1 (CI installed the clients)")
    pytest.skip(f"{reason} ({INSTALL_HINT})")


def client_env() -> dict[str, str]:
    """The environment for a system-Python child: no venv paths, no venv GDAL/PROJ data."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GDAL_DATA", "PROJ_LIB", "PROJ_DATA",
            "GDAL_DRIVER_PATH", "PYTHONSTARTUP"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"QT_QPA_PLATFORM": "offscreen", "PYTHONNOUSERSITE": "1"}


@functools.cache
def _probe(code: str) -> tuple[bool, str]:
    if not Path(SYSTEM_PYTHON).exists():
        return False, f"{SYSTEM_PYTHON} not found"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", code], env=client_env(), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def last_line(text: str) -> str:
    return text.splitlines()[-1] if text.strip() else "no output"


def qgis_version() -> str:
    """QGIS's version under the system Python, or a skip (a failure when required)."""
    ok, text = _probe("from qgis.core import Qgis; print(Qgis.version())")
    if not ok:
        unavailable(f"PyQGIS not importable by {SYSTEM_PYTHON}: {last_line(text)}")
    return text.splitlines()[-1]


def validator(name: str) -> Path:
    """GDAL's ``name`` sample script, runnable by the system Python's osgeo, or a skip."""
    ok, text = _probe("from osgeo import gdal; print(gdal.__version__)")
    if not ok:
        unavailable(f"GDAL's Python bindings not importable by {SYSTEM_PYTHON}: {last_line(text)}")
    for folder in VALIDATOR_DIRS:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    unavailable(f"{name} not found in {', '.join(VALIDATOR_DIRS)} (GDAL {text})")
    raise AssertionError  # unreachable: unavailable() skips or fails


def run_validator(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEM_PYTHON, str(validator(name)), *map(str, args)], env=client_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# --- the outputs ----------------------------------------------------------------------------------


def write_client_scene(path: Path, origin: tuple[float, float] = ORIGIN, seed: int = 0) -> Path:
    """A blue/green/red scene (band descriptions as the synthetic scenes have them), nodata 0."""
    rng = np.random.default_rng(seed)
    data = rng.normal(1000, 80, size=(3, ROWS, COLS))
    for row0, col0, row1, col1 in BOXES:
        data[0, row0:row1, col0:col1] += 900
        data[1, row0:row1, col0:col1] += 500
    data = np.clip(data, 1, 65535).astype("uint16")
    data[:, :, :NODATA_COLS] = 0
    data[:, ROWS - 20 :, COLS - 30 :] = 0
    profile = {
        "driver": "GTiff", "height": ROWS, "width": COLS, "count": 3, "dtype": "uint16",
        "nodata": 0, "crs": UTM, "transform": from_origin(*origin, PIXEL, PIXEL),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("blue", "green", "red")
    return path


def pointwise(model: Any, batch: np.ndarray) -> np.ndarray:
    """A network without spatial context (as tests/infer uses): cropland where band 1 is bright.

    The bundle is a real one with random weights (what loading, checks and provenance need); its
    prediction is replaced so the fields are the boxes, a handful of clean polygons to check.
    """
    return 1 / (1 + np.exp(-4 * (batch[:, :1] - 1.5)))


@dataclass(frozen=True)
class ClientOutputs:
    scene: Path  # the scene mapped by `rs-seg infer` (run_infer)
    fields: Path  # its fields.gpkg
    prob: Path  # its fields_prob.tif
    inbox_scenes: list[Path]  # the scenes mapped by the new-imagery mapping
    scene_gpkgs: list[Path]  # their per-scene fields.gpkg (mapped/<scene>/<model id>/)
    scene_probs: list[Path]
    merged: Path  # the merged fields.gpkg (write_merged, as the flow writes it)
    chips: Path  # a chip folder's index.gpkg
    chip_count: int
