"""The Prefect flows run without a server (ephemeral mode) and produce what the CLI produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rs_seg.index import read_index
from tests.conftest import ephemeral_prefect_env, pixel_box, write_labels, write_scene

ROOT = Path(__file__).resolve().parents[1]

FLOW_SCRIPT = """
import json, sys
from rs_seg.config import PrepareConfig
from flows.prepare_chips import prepare_chips
cfg = PrepareConfig.model_validate_json(sys.argv[1])
print("RESULT " + json.dumps(prepare_chips(cfg)))
"""


@pytest.mark.slow
def test_prepare_chips_flow_runs_in_ephemeral_mode(tmp_path) -> None:
    scenes = [
        write_scene(tmp_path / f"s{i}.tif", 96, 96, origin=(500_000 + 3000 * i, 5_300_000))
        for i in range(3)
    ]
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 40, 40)], to_crs="EPSG:4326")
    from rs_seg.config import PrepareConfig

    cfg = PrepareConfig(
        scenes=[str(s) for s in scenes], labels=labels, out=tmp_path / "chips", chip_size=32
    )
    env = ephemeral_prefect_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT, cfg.model_dump_json()],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT" in done.stdout
    chips = read_index(tmp_path / "chips")
    assert len(chips) == 3 * 9
    assert set(chips["scene"]) == {"s0", "s1", "s2"}
    assert chips.groupby("block")["split"].nunique().max() == 1
