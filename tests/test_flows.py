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


NEW_IMAGERY_SCRIPT = """
import json, sys
from rs_seg.config import IncomingConfig
from flows.infer_scene import infer_new_imagery
cfg = IncomingConfig.model_validate_json(sys.argv[1])
first = infer_new_imagery(cfg)
second = infer_new_imagery(cfg)
print("RESULT " + json.dumps({"first": first, "second": second}))
"""


@pytest.mark.slow
def test_infer_new_imagery_flow_maps_each_scene_once(tmp_path) -> None:
    import json

    from rs_seg.config import IncomingConfig
    from tests.test_inference import make_bundle

    for i in range(2):
        write_scene(tmp_path / "inbox" / f"s{i}.tif", 64, 64, seed=i)
    (tmp_path / "inbox" / "bad.tif").write_text("not a raster")
    cfg = IncomingConfig(
        incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
        model=make_bundle(tmp_path / "m.pt"), device="cpu",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", NEW_IMAGERY_SCRIPT, cfg.model_dump_json()],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert (result["first"]["mapped"], result["first"]["failed"]) == (2, 1)
    assert (result["second"]["mapped"], result["second"]["skipped"]) == (0, 2)
    assert result["second"]["failed"] == 1, "the bad scene is retried (and fails again)"
    assert len(list((tmp_path / "out").rglob("fields.gpkg"))) == 2
