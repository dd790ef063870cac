"""Fixtures of the real-client tests: rs_seg's outputs written once per session by the real code
paths, and what QGIS saw of them (builders and runners: ``tests/clients/support.py``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.support import (
    QGIS_SCRIPT,
    SYSTEM_PYTHON,
    VALIDATORS,
    ClientOutputs,
    client_env,
    pointwise,
    qgis_version,
    validator,
    write_client_scene,
)
from tests.helpers import ORIGIN, FunctionPredictor, make_bundle


@pytest.fixture(scope="session")
def client_outputs(tmp_path_factory: pytest.TempPathFactory, tiny_chips: Path) -> ClientOutputs:
    """Every output the clients open, written once by the real code paths."""
    from rs_seg.config import IncomingConfig, InferConfig
    from rs_seg.infer.run import run_infer
    from rs_seg.model.predictor import WindowPredictor
    from rs_seg.ops.incoming import map_scenes, mapped_outputs, plan, scan, write_merged

    root = tmp_path_factory.mktemp("clients")
    bundle = make_bundle(root / "model-bundle.pt")
    scene = write_client_scene(root / "scene" / "scene.tif")
    inbox = [
        write_client_scene(root / "inbox" / "west.tif", seed=1),
        write_client_scene(root / "inbox" / "east.tif", (ORIGIN[0] + 2500, ORIGIN[1]), seed=2),
    ]
    summary = run_infer(
        InferConfig(scene=scene, out=root / "scene" / "fields.gpkg", model=bundle, device="cpu"),
        predictor=FunctionPredictor(bundle, pointwise),
    )
    with pytest.MonkeyPatch.context() as patch:
        # map_scenes runs run_infer itself, one call per scene: no predictor reaches it
        patch.setattr(WindowPredictor, "__call__", pointwise)
        cfg = IncomingConfig(
            incoming=str(root / "inbox"), out_dir=root / "mapped", settle_seconds=0,
            infer={"model": bundle, "device": "cpu"},
        )  # fmt: skip
        results = map_scenes(cfg, scan(cfg).jobs)
    assert sorted(r.status for r in results) == ["mapped", "mapped"], results
    outputs = mapped_outputs(cfg, plan(cfg))
    merged = root / "merged" / "fields.gpkg"
    merged.parent.mkdir()
    write_merged(outputs, merged)
    index = tiny_chips / "index.gpkg"
    chip_count = len(list((tiny_chips / "images").rglob("*.tif")))
    return ClientOutputs(
        scene=scene, fields=summary.fields, prob=summary.prob, inbox_scenes=inbox,
        scene_gpkgs=outputs, scene_probs=[p.with_name("fields_prob.tif") for p in outputs],
        merged=merged, chips=index, chip_count=chip_count,
    )  # fmt: skip


@pytest.fixture(scope="session")
def qgis() -> str:
    """QGIS's version under the system Python; a skip without it (a failure in CI)."""
    return qgis_version()


@pytest.fixture(scope="session")
def gdal_validators() -> dict[str, Path]:
    """GDAL's GeoPackage and COG validators; a skip without them (a failure in CI)."""
    return {name: validator(name) for name in VALIDATORS}


@pytest.fixture(scope="session")
def qgis_report(
    qgis: str, client_outputs: ClientOutputs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """What QGIS saw of every output (tests/clients/qgis_check.py under the system Python).

    ``qgis`` comes first, so a machine without QGIS skips before any output is written.
    """
    version = qgis
    out = client_outputs
    root = tmp_path_factory.mktemp("qgis")
    spec = {
        "profile": str(root / "profile"),
        "vectors": {
            "scene": {"path": str(out.fields), "layer": "fields"},
            **{
                f"inbox_{i}": {"path": str(p), "layer": "fields"}
                for i, p in enumerate(out.scene_gpkgs)
            },
            "merged": {"path": str(out.merged), "layer": "fields"},
            "chips": {"path": str(out.chips), "layer": "chips"},
        },
        "rasters": {
            "prob": {"path": str(out.prob)},
            "inbox_prob_0": {"path": str(out.scene_probs[0])},
            "scene": {"path": str(out.scene)},
        },
        "renders": [
            {
                "out": str(root / "scene.png"),
                "width": 1200,
                "scenes": [str(out.scene)],
                "probs": [str(out.prob)],
                "fields": [{"path": str(out.fields)}],
            },
            {
                "out": str(root / "merged.png"),
                "width": 1200,
                "scenes": [str(p) for p in out.inbox_scenes],
                "probs": [str(p) for p in out.scene_probs],
                "fields": [{"path": str(out.merged)}],
            },
        ],
    }
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([SYSTEM_PYTHON, str(QGIS_SCRIPT), str(spec_path)], env=client_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("QGIS_REPORT ")]
    assert lines, (
        f"QGIS {version} printed no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    )
    yield json.loads(lines[-1].removeprefix("QGIS_REPORT "))
