"""The Prefect flows run without a server (ephemeral mode) and produce what the CLI produces."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rs_seg.prepare.index import read_index
from tests.helpers import ROOT, ephemeral_prefect_env, pixel_box, write_labels, write_scene

FLOW_SCRIPT = """
import json, sys
from rs_seg.config import PrepareConfig, RunnerConfig
from flows.prepare_chips import prepare_chips
cfg = PrepareConfig.model_validate_json(sys.argv[1])
dask = cfg.model_copy(update={"out": cfg.out.with_name("chips-dask")})
results = [prepare_chips(cfg), prepare_chips(dask, RunnerConfig(kind="dask", workers=2))]
print("RESULT " + json.dumps(results))
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
    on_dask = read_index(tmp_path / "chips-dask")
    relative = ["image_path", "mask_path"]
    assert on_dask.drop(columns=relative).equals(chips.drop(columns=relative)), "Dask: same index"
    for name in [*chips["image"][:4], *chips["mask"][:4]]:
        same = (tmp_path / "chips" / name).read_bytes() == (
            tmp_path / "chips-dask" / name
        ).read_bytes()
        assert same, name


# The schedule story, through the flow: 3 new scenes, a quiet re-run, a 4th scene
# arriving, a new model; plus one scene through infer-scene. All in one process (one server).
NEW_IMAGERY_SCRIPT = """
import json, sys
from pathlib import Path
from rs_seg.config import IncomingConfig, InferConfig
from flows.infer_new_imagery import infer_new_imagery
from flows.infer_scene import infer_scene
from tests.helpers import write_scene
from tests.helpers import make_bundle, with_model
tmp, cfg = Path(sys.argv[1]), IncomingConfig.model_validate_json(sys.argv[2])
runs = {"first": infer_new_imagery(cfg), "second": infer_new_imagery(cfg)}
write_scene(tmp / "inbox" / "s3.tif", 64, 64, seed=3)
runs["fourth"] = infer_new_imagery(cfg)
newer = with_model(cfg, make_bundle(tmp / "m2.pt", seed=2))
runs["new_model"] = infer_new_imagery(newer)
one = InferConfig(scene=tmp / "inbox" / "s0.tif", out=tmp / "one" / "fields.gpkg",
                  model=cfg.infer.model, device="cpu")
runs["one"] = infer_scene(one)
print("RESULT " + json.dumps(runs))
"""


def mapped(run: dict) -> list[str]:
    return sorted(Path(r["scene"]).name for r in run["results"] if r["status"] == "mapped")


@pytest.mark.slow
def test_infer_new_imagery_flow_maps_each_scene_once(tmp_path) -> None:
    import pyogrio

    from rs_seg.config import IncomingConfig
    from tests.helpers import make_bundle

    for i in range(3):
        write_scene(tmp_path / "inbox" / f"s{i}.tif", 64, 64, seed=i)
    (tmp_path / "inbox" / "bad.tif").write_text("not a raster")
    cfg = IncomingConfig(
        incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out", merged=tmp_path / "all.gpkg",
        infer={"model": make_bundle(tmp_path / "m.pt"), "device": "cpu", "min_area": 0},
        settle_seconds=0,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", NEW_IMAGERY_SCRIPT, str(tmp_path), cfg.model_dump_json()],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.split("RESULT ", 1)[1])
    first, second, fourth, new_model = (runs[k] for k in ("first", "second", "fourth", "new_model"))
    assert mapped(first) == ["s0.tif", "s1.tif", "s2.tif"] and first["waiting"] == 1
    (bad,) = [r for r in first["results"] if r["status"] == "waiting"]
    assert bad["scene"].endswith("bad.tif") and "cannot be opened as a raster" in bad["reason"]
    assert (second["mapped"], second["skipped"]) == (0, 3), "nothing new: nothing mapped"
    assert second["waiting"] == 1, "the unreadable file waits every run, alone, never claimed"
    assert first["failed"] == second["failed"] == 0
    assert mapped(fourth) == ["s3.tif"] and fourth["skipped"] == 3
    assert mapped(new_model) == ["s0.tif", "s1.tif", "s2.tif", "s3.tif"], "a new model maps all"
    assert len(list((tmp_path / "out").rglob("fields.gpkg"))) == 8, "4 scenes x 2 models"
    per_scene = sum(r["polygons"] for r in new_model["results"] if r["status"] == "mapped")
    assert new_model["merged"]["scenes"] == 4 and new_model["merged"]["fields"] == per_scene
    assert pyogrio.read_info(tmp_path / "all.gpkg", layer="fields")["features"] == per_scene
    assert runs["one"]["fields"] == str(tmp_path / "one" / "fields.gpkg")
    assert (tmp_path / "one" / "fields_prob.tif").is_file()


@pytest.mark.slow
def test_each_flow_module_runs_its_own_flow_from_a_config_file(tmp_path) -> None:
    """``flows.infer_scene`` maps the ``infer:`` scene, ``flows.infer_new_imagery`` the inbox."""
    from tests.helpers import make_bundle

    bundle = make_bundle(tmp_path / "m.pt")
    scene = write_scene(tmp_path / "inbox" / "s0.tif", 64, 64)
    one = {"infer": {"scene": str(scene), "out": str(tmp_path / "one" / "fields.gpkg"),
                     "model": str(bundle), "device": "cpu"}}  # fmt: skip
    inbox = {"incoming": {"incoming": str(tmp_path / "inbox"), "out_dir": str(tmp_path / "out"),
                          "infer": {"model": str(bundle), "device": "cpu"},
                          "settle_seconds": 0}}  # fmt: skip
    runs = {}
    for name, module, config in [("one", "flows.infer_scene", one),
                                 ("inbox", "flows.infer_new_imagery", inbox)]:  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(json.dumps(config))
        runs[name] = subprocess.run(
            [sys.executable, "-m", module, str(tmp_path / f"{name}.yaml")],
            env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
            timeout=240,
        )  # fmt: skip
        assert runs[name].returncode == 0, runs[name].stderr[-3000:]
    assert json.loads(runs["one"].stdout)["fields"] == str(tmp_path / "one" / "fields.gpkg")
    assert (tmp_path / "one" / "fields_prob.tif").is_file()
    assert json.loads(runs["inbox"].stdout)["mapped"] == 1
    assert len(list((tmp_path / "out").rglob("fields.gpkg"))) == 1


RUNNERS_SCRIPT = """
import json, sys
from rs_seg.config import IncomingConfig
from flows.infer_new_imagery import infer_new_imagery
print("RESULT " + json.dumps([infer_new_imagery(IncomingConfig.model_validate_json(c))
                              for c in json.loads(sys.argv[1])]))
"""


def run_flows(tmp_path: Path, configs: list, timeout: int = 600) -> list[dict]:
    """Run infer-new-imagery once per config in one child process (one ephemeral server)."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", RUNNERS_SCRIPT, json.dumps([c.model_dump_json() for c in configs])],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


@pytest.mark.slow
def test_a_local_dask_cluster_gives_the_outputs_of_a_sequential_run(tmp_path) -> None:
    import numpy as np
    import pyogrio
    import rasterio

    from rs_seg.config import IncomingConfig, RunnerConfig
    from tests.helpers import LEARNABLE_BOXES, make_bundle, write_learnable_scene

    for i in range(3):
        write_learnable_scene(tmp_path / "inbox" / f"s{i}.tif", 192, LEARNABLE_BOXES, seed=i)
    base = IncomingConfig(
        incoming=str(tmp_path / "inbox"), settle_seconds=0,
        infer={"model": make_bundle(tmp_path / "m.pt", seed=3), "device": "cpu", "min_area": 0},
    )  # fmt: skip
    sequential = base.model_copy(
        update={"out_dir": tmp_path / "seq", "merged": tmp_path / "seq.gpkg"}
    )
    dask = base.model_copy(
        update={"out_dir": tmp_path / "dask", "merged": tmp_path / "dask.gpkg",
                "runner": RunnerConfig(kind="dask", workers=2)}
    )  # fmt: skip
    results = run_flows(tmp_path, [sequential, dask])
    assert [r["mapped"] for r in results] == [3, 3]
    for scene in ("s0", "s1", "s2"):
        (seq_prob,) = (tmp_path / "seq" / scene).rglob("fields_prob.tif")
        (dask_prob,) = (tmp_path / "dask" / scene).rglob("fields_prob.tif")
        with rasterio.open(seq_prob) as a, rasterio.open(dask_prob) as b:
            # Dask workers run torch on 1 thread: float sums in another order may move a pixel by
            # one level (benchmarks/bench_flows.py measured 39 of 6.3 M); never more.
            diff = np.abs(a.read().astype(int) - b.read().astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, scene
    seq_fields = pyogrio.read_dataframe(tmp_path / "seq.gpkg", layer="fields")
    dask_fields = pyogrio.read_dataframe(tmp_path / "dask.gpkg", layer="fields")
    assert len(seq_fields) == len(dask_fields) > 0
    assert set(seq_fields["scene"]) == set(dask_fields["scene"]) == {"s0", "s1", "s2"}
    assert abs(dask_fields.area.sum() / seq_fields.area.sum() - 1) < 1e-3


@pytest.mark.slow
def test_unreachable_dask_scheduler_and_flaky_reads(tmp_path) -> None:
    """A wrong Dask address fails in one line before any claim; an OSError is retried."""
    import socket

    from rs_seg.config import IncomingConfig, RunnerConfig
    from rs_seg.ops.ledger import Ledger
    from tests.helpers import make_bundle

    write_scene(tmp_path / "inbox" / "a.tif", 64, 64)
    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
                         infer={"model": make_bundle(tmp_path / "m.pt"), "device": "cpu"},
                         settle_seconds=0)  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = cfg.model_copy(update={"runner": RunnerConfig(
        kind="dask", address=f"tcp://127.0.0.1:{port}", connect_timeout=2)})  # fmt: skip
    config_file = tmp_path / "incoming.yaml"
    config_file.write_text(json.dumps({"incoming": json.loads(unreachable.model_dump_json())}))
    done = subprocess.run(
        [sys.executable, "-m", "flows.infer_new_imagery", str(config_file)],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    (error,) = done.stderr.strip().splitlines()
    assert error.startswith(f"error: no Dask scheduler answers at tcp://127.0.0.1:{port}"), error
    assert "Traceback" not in done.stderr
    assert Ledger(cfg.ledger_path).entries() == [], "nothing claimed"

    flaky = FLAKY_SCRIPT
    done = subprocess.run(
        [sys.executable, "-c", flaky, cfg.model_dump_json()],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert (result["mapped"], result["calls"]) == (1, 2), "one I/O error, retried once"
    (entry,) = Ledger(cfg.ledger_path).entries()
    assert (entry.status, entry.attempts) == ("done", 1)


# The first read of each scene fails as a dropped network share would; the task retries it.
FLAKY_SCRIPT = """
import json, sys
import flows.infer_new_imagery as flows_module
from rs_seg.config import IncomingConfig
calls = []
real = flows_module.map_scene
def flaky(config, job):
    calls.append(job.scene.name)
    if len(calls) == 1:
        raise OSError(5, "Input/output error", str(job.scene))
    return real(config, job)
flows_module.map_scene = flaky
flows_module.map_scene_task = flows_module.map_scene_task.with_options(retry_delay_seconds=0)
result = flows_module.infer_new_imagery(IncomingConfig.model_validate_json(sys.argv[1]))
print("RESULT " + json.dumps({"mapped": result["mapped"], "calls": len(calls)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "flows.infer_new_imagery", "{config}"],
        ["-m", "flows.prepare_chips", "{config}"],
        ["flows/train_cropland.py", "--config", "{config}"],
        ["-m", "flows.demo", "--out", "{out}"],
    ],
)
def test_a_prefect_server_that_is_down_is_one_line_and_touches_nothing(tmp_path, command) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(
        f"incoming: {{incoming: {tmp_path / 'inbox'}, out_dir: {tmp_path / 'out'}}}\n"
    )
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(config=config, out=tmp_path / "demo") for a in command]
    env = ephemeral_prefect_env(tmp_path) | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"error: no Prefect server answers at http://127.0.0.1:{port}/api (connection refused): "
        "start one with `make serve` or `prefect server start`, or unset PREFECT_API_URL to run "
        "flows without a server"
    ]
    assert sorted(p for p in tmp_path.rglob("*") if "prefect-home" not in p.parts) == before


OVERLAP_SCRIPT = """
import json, sys
from rs_seg.config import IncomingConfig
from flows.infer_new_imagery import infer_new_imagery
result = infer_new_imagery(IncomingConfig.model_validate_json(sys.argv[1]))
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_two_overlapping_flow_runs_map_every_scene_exactly_once(tmp_path) -> None:
    """Two schedules firing at once (two processes, two Prefect servers, one ledger)."""
    from rs_seg.config import IncomingConfig
    from tests.helpers import make_bundle

    for i in range(4):
        write_scene(tmp_path / "inbox" / f"s{i}.tif", 128, 128, seed=i)
    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
                         infer={"model": make_bundle(tmp_path / "m.pt"), "device": "cpu"},
                         settle_seconds=0)  # fmt: skip
    for k in range(2):
        (tmp_path / f"run{k}").mkdir()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", OVERLAP_SCRIPT, cfg.model_dump_json()],
            env=ephemeral_prefect_env(tmp_path / f"run{k}"),
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    try:  # each start-up alone took 43-55 s with two busy loops beside them (conftest)
        outputs = [run.communicate(timeout=600) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outputs]
    mapped_names = sorted(name for r in results for name in mapped(r))
    assert mapped_names == ["s0.tif", "s1.tif", "s2.tif", "s3.tif"], results
    assert sum(r["skipped"] for r in results) == 4, "what one run mapped, the other skipped"
    assert len(list((tmp_path / "out").rglob("fields.gpkg"))) == 4


@pytest.mark.slow
def test_an_existing_dask_cluster_started_as_documented_maps_the_scenes(tmp_path) -> None:
    """docs/scaling-out.md: `dask scheduler`, `dask worker ADDRESS` from the checkout root."""
    import os
    import signal
    import socket

    from rs_seg.config import IncomingConfig, RunnerConfig
    from tests.helpers import make_bundle

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = Path(sys.executable).parent / "dask"
    # The cluster's own Prefect home, as on another machine: the worker starts an ephemeral
    # server on its first task, which must not migrate the flow's fresh database at the same time.
    env = ephemeral_prefect_env(tmp_path / "cluster")
    started = [
        subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                          "--no-dashboard"], cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--no-dashboard"],
                         cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        for i in range(2):
            write_scene(tmp_path / "inbox" / f"s{i}.tif", 64, 64, seed=i)
        cfg = IncomingConfig(
            incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out", settle_seconds=0,
            infer={"model": make_bundle(tmp_path / "m.pt"), "device": "cpu"},
            # Also waits for the scheduler, still starting (a refused connection is retried):
            # it answered after 4-6 s here, idle or with two busy loops beside it.
            runner=RunnerConfig(kind="dask", address=address, connect_timeout=120),
        )  # fmt: skip
        (result,) = run_flows(tmp_path, [cfg])
        assert result["mapped"] == 2 and result["failed"] == 0
        assert len(list((tmp_path / "out").rglob("fields.gpkg"))) == 2
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
