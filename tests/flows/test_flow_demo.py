"""`make demo` (python -m flows.demo) runs the main job through the flows, says what to open."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyogrio
import pytest

from tests.helpers import ROOT, ephemeral_prefect_env

TINY_DEMO = """
synth: {size: 256, bands: 3, scenes: 2, seed: 3, pixel_size: 3.0}
prepare: {chip_size: 64, split: {method: block, ratios: [0.8, 0.1, 0.1], block_chips: 1}}
train:
  model: {arch: Unet, encoder: resnet18}
  epochs: 1
  batch_size: 8
  num_workers: 0
  accelerator: cpu
"""


@pytest.mark.slow
def test_demo_trains_and_maps_new_scenes_through_the_flows(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text(TINY_DEMO)
    out = tmp_path / "demo"
    (out / "mapped").mkdir(parents=True)
    (out / "mapped" / "stale.txt").write_text("from an earlier demo")
    (out / "demo.json").write_text("{}")  # the mark of a folder the demo made
    done = subprocess.run(
        [sys.executable, "-m", "flows.demo", "--config", str(config), "--out", str(out)],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "[1/3] flow train-cropland" in text and "[3/3] flow infer-new-imagery" in text
    assert "a second scheduled run: 0 mapped, 3 already done" in text
    assert "open in QGIS" in text and "http://127.0.0.1:4200" in text
    assert "parcels in the new scenes' labels; object F1" in text
    assert (out / "models" / "latest.json").is_file()
    per_scene = sorted((out / "mapped").rglob("fields.gpkg"))
    assert len(per_scene) == 3 and not (out / "mapped" / "stale.txt").exists()
    merged = pyogrio.read_info(out / "fields.gpkg", layer="fields")
    assert merged["features"] == sum(
        pyogrio.read_info(p, layer="fields")["features"] for p in per_scene
    )
    assert "epoch 1/1" in done.stderr, "rs_seg progress lines reach the flow log"
