"""GDAL's own validators (the sample scripts python3-gdal ships) on the GeoPackages and the COGs."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.clients.support import ClientOutputs, run_validator
from tests.helpers import write_streamed_cog

GPKG_CASES = ["scene", "inbox", "merged", "chips"]
# GDAL 3.6's validator (Debian 12) checks the R-tree triggers of GeoPackage 1.2/1.3 (update1-4);
# GeoPackage 1.4, which GDAL >= 3.7 writes by default (the venv's wheels), replaced update1 and
# update3 with update6 and update7.
OLD_VALIDATOR_ON_14 = re.compile(r"Req 75: rtree_\w+_update1 trigger missing")


def gpkg_version(path: Path) -> int:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])
    finally:
        connection.close()


def gpkg(out: ClientOutputs, name: str) -> Path:
    return {"scene": out.fields, "inbox": out.scene_gpkgs[0], "merged": out.merged,
            "chips": out.chips}[name]  # fmt: skip


@pytest.mark.parametrize("name", GPKG_CASES)
def test_geopackages_pass_gdals_geopackage_validator(
    name: str, gdal_validators: dict[str, Path], client_outputs: ClientOutputs
) -> None:
    path = gpkg(client_outputs, name)
    done = run_validator("validate_gpkg.py", path)
    message = (done.stdout + done.stderr).strip()
    if done.returncode and gpkg_version(path) >= 10400 and OLD_VALIDATOR_ON_14.search(message):
        pytest.xfail(
            f"{path.name} is GeoPackage 1.4 (user_version {gpkg_version(path)}), which this "
            f"GDAL's validator predates: {message.splitlines()[-1]}"
        )
    assert done.returncode == 0 and not message, message


@pytest.mark.parametrize("which", ["scene", "inbox"])
def test_the_probability_raster_is_a_valid_cloud_optimized_geotiff(
    which: str, gdal_validators: dict[str, Path], client_outputs: ClientOutputs
) -> None:
    prob = client_outputs.prob if which == "scene" else client_outputs.scene_probs[0]
    done = run_validator("validate_cloud_optimized_geotiff.py", "--full-check=yes", prob)
    message = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, message
    assert "is a valid cloud optimized GeoTIFF" in message and "warning" not in message.lower()


def test_a_cog_with_overviews_built_while_writing_is_valid(
    gdal_validators: dict[str, Path], tmp_path: Path
) -> None:
    """Scenes above one block get their overviews from the writer (rs_seg.infer.overviews)."""
    image = np.random.default_rng(0).integers(0, 256, size=(2, 1100, 1300), dtype=np.uint8)
    cog = write_streamed_cog(tmp_path / "prob.tif", image, 300)
    done = run_validator("validate_cloud_optimized_geotiff.py", "--full-check=yes", cog)
    message = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, message
    assert "is a valid cloud optimized GeoTIFF" in message and "warning" not in message.lower()
