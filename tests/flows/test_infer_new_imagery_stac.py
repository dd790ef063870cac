"""The ``infer-new-imagery`` flow over a STAC catalog served on loopback: items mapped once,
recorded by item id, excluded ones listed in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rs_seg.config import IncomingConfig
from tests.helpers import ROOT, ephemeral_prefect_env, make_bundle
from tests.range_server import serving
from tests.stac_helpers import stac_item, write_catalog, write_cog

# Two runs of the flow in one child process (one ephemeral server), with the report of each.
FLOW_SCRIPT = """
import json, sys
from prefect.client.orchestration import get_client
from rs_seg.config import IncomingConfig
from flows.infer_new_imagery import infer_new_imagery
cfg = IncomingConfig.model_validate_json(sys.argv[1])
runs = [infer_new_imagery(cfg), infer_new_imagery(cfg)]
with get_client(sync_client=True) as client:
    artifacts = [a.data for a in client.read_artifacts() if a.key == "infer-new-imagery"]
print("RESULT " + json.dumps({"runs": runs, "artifacts": artifacts}))
"""


@pytest.mark.slow
def test_the_flow_maps_a_stac_catalog_once_by_item_id(tmp_path: Path) -> None:
    root = tmp_path / "www"
    with serving(root) as server:
        for i, name in enumerate(("a", "b")):
            write_cog(root / f"{name}.tif", 64, seed=i)
        catalog = write_catalog(root / "stac", [
            stac_item("tile-a", f"{server.url}/a.tif", "2024-05-01T10:00:00Z"),
            stac_item("tile-b", f"{server.url}/b.tif", "2022-05-01T10:00:00Z"),
        ])  # fmt: skip
        source = {"href": f"{server.url}/stac/{catalog.name}", "datetime": "2024-01-01/.."}
        cfg = IncomingConfig(
            stac=source, out_dir=tmp_path / "out", merged=tmp_path / "all.gpkg",
            infer={"model": make_bundle(tmp_path / "m.pt"), "device": "cpu", "min_area": 0},
        )  # fmt: skip
        env = ephemeral_prefect_env(tmp_path) | {"GDAL_HTTP_RETRY_DELAY": "0.01"}
        done = subprocess.run(
            [sys.executable, "-c", FLOW_SCRIPT, cfg.model_dump_json()], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout.split("RESULT ", 1)[1])
    (first, second), artifacts = output["runs"], output["artifacts"]
    assert (first["mapped"], first["excluded"], first["failed"]) == (1, 1, 0)
    assert (second["mapped"], second["skipped"], second["excluded"]) == (0, 1, 1)
    rows = {r["item_id"]: r for r in first["results"]}
    assert rows["tile-a"]["status"] == "mapped"
    assert rows["tile-a"]["scene"] == f"{server.url}/a.tif", "reported as the URL"
    assert rows["tile-b"]["status"] == "excluded"
    assert rows["tile-b"]["reason"].startswith("datetime 2022-05-01T10:00:00Z is outside")
    assert first["merged"]["scenes"] == 1
    model_id = Path(rows["tile-a"]["fields"]).parent.name
    assert (tmp_path / "out" / "tile-a" / model_id / "fields.gpkg").is_file()
    assert any("| tile-b | excluded |" in a and "excluded 1" in a for a in artifacts)
    assert "tile-b excluded by the STAC filters" in done.stdout + done.stderr
