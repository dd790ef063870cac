"""Orchestration benchmark: the ``infer-new-imagery`` flow against a bare loop, and on local Dask.

It generates N synthetic scenes once (default 6 scenes of 1024 x 1024 px, 4 bands, uint16, seed
11, kept in ``--workdir`` and reused), builds a model bundle with random weights (FPN /
``tu-mobilenetv3_small_050``, 256 px chips, normalization measured on the first scene; the code of
``benchmarks/bench_infer.py``), then maps the whole inbox in fresh child processes (cwd and
``PYTHONPATH`` the repository root, a fresh ``PREFECT_HOME``, no ``PREFECT_API_URL``: Prefect's
ephemeral mode), alternating the kinds within each repeat, each run into a fresh output folder
(and so a fresh ledger) so that every scene is mapped every time:

* ``direct`` (the limit): ``rs_seg.ops.incoming.plan(cfg)`` and a loop calling
  ``rs_seg.ops.incoming.map_scene(cfg, job)`` for each job; no Prefect, no ledger claims. Timed: the
  ``plan`` call and the loop, after importing ``rs_seg.ops.incoming`` and ``rs_seg.infer.predict``.
* ``flow``: ``flows.infer_new_imagery.infer_new_imagery(cfg)`` on Prefect's ephemeral server,
  default runner (one thread: scenes one after another, like ``direct``). Before the timed call
  the same child imports the flow module (``import_seconds``) and runs the flow twice on an empty
  inbox: the first call starts the ephemeral server and creates its database (``startup_seconds``,
  reported separately, not in the run), the second is the fixed cost of one flow run that maps
  nothing (``empty_flow_seconds``). Timed: the flow call: planning, ledger claims and records, one
  Prefect task per scene, the markdown artifact, the end of the run.
* ``flow_dask2``: the same with ``runner=RunnerConfig(kind="dask", workers=2)``: a local cluster of
  two worker processes with one thread each. The cluster starts on the first task submission and
  stops when the flow leaves the runner, both inside the timed call (``cluster_start_seconds`` and
  ``cluster_close_seconds``, measured by wrapping ``DaskTaskRunner.client`` and ``__exit__``); each
  worker also imports the flow module (torch, rs_seg, Prefect) and, in ephemeral mode, starts a
  temporary Prefect server of its own when its first task reports its state, inside the call.
  Dask's nanny sets ``OMP_NUM_THREADS=1`` in its workers (``distributed.nanny.pre-spawn-environ``),
  so each worker's torch runs one thread; the benchmark changes no thread setting.
* ``flow_dask2_server``: ``flow_dask2`` with a Prefect server started in the child before the
  warm-up calls (``flows.server.prefect_api`` on a free port, what ``make serve`` does; its start
  is ``server_start_seconds``), so ``PREFECT_API_URL`` reaches the workers and they report to it.

After each Dask run (unless ``--no-probe``) the child starts one more identical cluster and
measures, in both workers at once, the cold import of the flow module and the first contact with
the Prefect API (the ``probe_*`` figures): where a Dask run's time goes.

Reported: seconds per run (median, min, max), scenes per second, the ratio of each kind's median
to ``direct``'s, CPU seconds of the child process itself during the run (Dask workers and the
Prefect server excluded), peak RSS of the child from ``wait4`` (the largest of the child and any
descendant it reaped, not a sum) and the peak summed RSS of the child's process tree (psutil,
sampled every 0.25 s: the Prefect servers, the Dask scheduler and workers). Every run's probability
rasters are compared pixel for pixel with those of the first ``direct`` run, and its polygon
counts too. Dirty pages are flushed (``os.sync``) before each child. Results go to
``benchmarks/results/flows.json`` and ``flows.png`` (``--out`` to change).

    python benchmarks/bench_flows.py [--scenes 6] [--size 1024] [--repeats 3] [--workdir DIR]
    python benchmarks/bench_flows.py --quick    # smoke run: 2 scenes of 512 px, 1 repeat, the
                                                # first 3 kinds, no probe (<workdir>/results-quick)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import _harness
import bench_infer  # the bundle child

ROOT = _harness.ROOT
BANDS = 4
SEED = 11
KINDS = ("direct", "flow", "flow_dask2", "flow_dask2_server")
DASK_WORKERS = 2
OVERHEAD_GOAL = 1.10  # the flow may take at most 10 % longer than the bare loop


# --- children ------------------------------------------------------------------------------------


def child_synth(size: int, scenes: int, out: str) -> dict:
    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes

    started = time.perf_counter()
    result = generate_scenes(
        SynthConfig(out=Path(out), size=size, bands=BANDS, scenes=scenes, seed=SEED)
    )
    return {
        "scenes": [str(s) for s in result.scenes],
        "seconds": time.perf_counter() - started,
    }


def child_direct(incoming: str, bundle: str, out_dir: str, device: str) -> dict:
    started = time.perf_counter()
    import rs_seg.infer.predict  # noqa: F401 - imported by the flow module too; not part of the run
    from rs_seg.config import IncomingConfig
    from rs_seg.ops.incoming import map_scene, plan

    import_seconds = time.perf_counter() - started
    cfg = IncomingConfig(
        incoming=incoming,
        out_dir=Path(out_dir),
        infer={"model": Path(bundle), "device": device},
        settle_seconds=0,  # the benchmark's scenes are complete when it starts
    )
    started, cpu = time.perf_counter(), time.process_time()
    jobs = plan(cfg)
    plan_seconds = time.perf_counter() - started
    results, per_scene = [], []
    for job in jobs:
        scene_started = time.perf_counter()
        results.append(map_scene(cfg, job))
        per_scene.append(time.perf_counter() - scene_started)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "import_seconds": import_seconds,
        "plan_seconds": plan_seconds,
        "scene_seconds": per_scene,
        "mapped": sum(r.status == "mapped" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "polygons": {r.scene.stem: r.polygons for r in results},
    }


def _time_dask_runner(timings: dict) -> None:
    """Time the flow's DaskTaskRunner creating its cluster and client, and closing them."""
    from prefect_dask import DaskTaskRunner

    client_property = DaskTaskRunner.client

    def client(self):
        if self._client is not None:
            return client_property.fget(self)
        started = time.perf_counter()
        value = client_property.fget(self)
        timings["cluster_start_seconds"] = time.perf_counter() - started
        return value

    exit_method = DaskTaskRunner.__exit__

    def exit_(self, *args):
        started = time.perf_counter()
        exit_method(self, *args)
        timings["cluster_close_seconds"] = time.perf_counter() - started

    DaskTaskRunner.client = property(client)
    DaskTaskRunner.__exit__ = exit_


def _worker_cold_start() -> dict:
    """In a fresh Dask worker: import the flow module, then reach the Prefect API once."""
    started = time.perf_counter()
    import torch  # what unpickling the first map-scene task imports, torch included
    from prefect.client.orchestration import get_client

    import flows.infer_new_imagery  # noqa: F401

    import_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with get_client(sync_client=True) as client:  # ephemeral mode: starts a temporary server
        client.api_healthcheck()
    return {
        "import_seconds": import_seconds,
        "prefect_api_seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _probe_dask_cluster(workers: int, cfg) -> dict:
    """The flow's kind of local cluster once more, after the timed run: where the time goes.

    Cluster start-up (distributed already imported); then in every worker at once the cold import
    of the flow module, the first contact with the Prefect API and torch's thread count; then the
    same scenes mapped on the now warm cluster with ``client.map(map_scene, ...)``, no Prefect:
    the throughput of the workers themselves.
    """
    from distributed import Client, LocalCluster

    from rs_seg.ops.incoming import map_scene, plan

    started = time.perf_counter()
    with (
        LocalCluster(n_workers=workers, processes=True, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        start_seconds = time.perf_counter() - started
        started = time.perf_counter()
        per_worker = list(client.run(_worker_cold_start).values())
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        jobs = plan(cfg)
        mapped = client.gather(client.map(map_scene, [cfg] * len(jobs), jobs, pure=False))
        warm_seconds = time.perf_counter() - started
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    return {
        "probe_cluster_start_seconds": start_seconds,
        "probe_worker_cold_start_seconds": cold_seconds,
        "probe_workers": per_worker,
        "probe_warm_map_seconds": warm_seconds,
        "probe_warm_mapped": sum(r.status == "mapped" for r in mapped),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_flow(
    incoming: str, bundle: str, out_dir: str, empty: str, warm_dir: str, device: str,
    runner: dict, server: bool, probe: bool,
) -> dict:  # fmt: skip
    import contextlib

    started = time.perf_counter()
    import torch

    from flows.infer_new_imagery import infer_new_imagery
    from flows.server import prefect_api
    from rs_seg.config import IncomingConfig, RunnerConfig

    import_seconds = time.perf_counter() - started
    timings: dict = {}
    if runner.get("kind") == "dask":
        _time_dask_runner(timings)
    runner_cfg = RunnerConfig(**runner)
    warm = IncomingConfig(
        incoming=empty,
        out_dir=Path(warm_dir),
        infer={"model": Path(bundle), "device": device},
        runner=runner_cfg,
        settle_seconds=0,  # the benchmark's scenes are complete when it starts
    )
    with contextlib.ExitStack() as stack:
        if server:  # a real server, as `make serve` starts: PREFECT_API_URL set for the workers too
            started = time.perf_counter()
            stack.enter_context(prefect_api(_free_port()))
            timings["server_start_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        infer_new_imagery(warm)  # ephemeral mode: starts the temporary server, creates its database
        startup_seconds = time.perf_counter() - started
        started = time.perf_counter()
        infer_new_imagery(warm)  # a flow run that maps nothing: the fixed cost of one run
        empty_flow_seconds = time.perf_counter() - started
        cfg = warm.model_copy(update={"incoming": incoming, "out_dir": Path(out_dir)})
        started, cpu = time.perf_counter(), time.process_time()
        result = infer_new_imagery(cfg)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu
        if runner.get("kind") == "dask" and probe:
            probe_cfg = cfg.model_copy(update={"out_dir": Path(f"{out_dir}-probe")})
            timings.update(_probe_dask_cluster(runner.get("workers") or DASK_WORKERS, probe_cfg))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "import_seconds": import_seconds,
        "startup_seconds": startup_seconds,
        "empty_flow_seconds": empty_flow_seconds,
        "torch_threads": torch.get_num_threads(),
        "mapped": result["mapped"],
        "failed": result["failed"],
        "skipped": result["skipped"],
        "errors": [r["error"] for r in result["results"] if r["error"]],
        "polygons": {Path(r["scene"]).stem: r["polygons"] for r in result["results"]},
        **timings,
    }


CHILDREN = {
    "synth": child_synth,
    "bundle": bench_infer.child_bundle,
    "direct": child_direct,
    "flow": child_flow,
}


# --- parent --------------------------------------------------------------------------------------


def child_env(prefect_home: Path) -> dict[str, str]:
    """A private Prefect home and no ``PREFECT_API_URL`` at all (ephemeral mode).

    Not an empty ``PREFECT_API_URL``: Prefect 3.8 then takes "" for a server's address when it
    sends events, and every event fails with a logged traceback.
    """
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }


def run_child(kind: str, run_dir: Path, **arguments) -> dict:
    """One measurement in a fresh process: its JSON result plus wall time and peak RSS.

    ``_harness.run_child`` with the child's stdout and stderr (Prefect's logs) in
    ``run_dir/child.log`` (its tail is shown on failure), the repository as the working folder,
    a private Prefect home (removed afterwards) and the process tree's summed RSS sampled.
    """
    result = _harness.run_child(
        __file__, kind, arguments, run_dir=run_dir, cwd=ROOT,
        env=child_env(run_dir / "prefect-home"), sample_tree=True,
    )  # fmt: skip
    shutil.rmtree(run_dir / "prefect-home", ignore_errors=True)
    return result


def scenes_for(size: int, scenes: int, workdir: Path) -> dict:
    data_dir = workdir / f"synth_{size}x{scenes}"

    def make() -> dict:
        run_dir = workdir / "synth-run"
        result = run_child("synth", run_dir, size=size, scenes=scenes, out=str(data_dir))
        shutil.rmtree(run_dir, ignore_errors=True)
        return {k: result[k] for k in ("scenes", "seconds")}

    return _harness.generated(
        data_dir, make, f"generating {scenes} synthetic {BANDS}-band scenes of {size} px ..."
    )


def compare(result: dict, out_dir: Path, reference: dict | None, reference_dir: Path) -> None:
    """Compare a run's probability rasters and polygon counts with the reference run's."""
    import numpy as np
    import rasterio

    if reference is None:
        return
    max_diff, differing, pixels, missing = 0, 0, 0, []
    for ref in sorted(reference_dir.rglob("*_prob.tif")):
        mine = out_dir / ref.relative_to(reference_dir)
        if not mine.exists():
            missing.append(ref.relative_to(reference_dir).parts[0])
            continue
        with rasterio.open(ref) as a, rasterio.open(mine) as b:
            levels_a, levels_b = a.read().astype(np.int16), b.read().astype(np.int16)
            masks_equal = np.array_equal(a.dataset_mask(), b.dataset_mask())
        diff = np.abs(levels_a - levels_b)
        max_diff = max(max_diff, int(diff.max()) if masks_equal else 255)
        differing += int((diff > 0).sum())
        pixels += diff.size
    result["prob_max_level_diff"] = max_diff
    result["prob_pixels_differing"] = differing
    result["prob_fraction_differing"] = differing / pixels if pixels else None
    result["polygons_equal"] = result["polygons"] == reference["polygons"]
    result["identical_to_direct"] = not missing and max_diff == 0 and result["polygons_equal"]
    if missing:
        result["missing_scenes"] = missing


def summarize(runs: list[dict], scenes: int, megapixels: float) -> dict:
    seconds = [r["seconds"] for r in runs]
    out = {
        "seconds": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "seconds_runs": [round(s, 3) for s in seconds],
        "scenes_per_s": scenes / statistics.median(seconds),
        "mpx_per_s": megapixels / statistics.median(seconds),
        "cpu_seconds": _harness.median_of(runs, "cpu_seconds"),
        "wall_seconds": _harness.median_of(runs, "wall_seconds"),
        "peak_rss_mb": _harness.peak_of(runs),
        "peak_tree_rss_mb": _harness.peak_of(runs, "peak_tree_rss_mb"),
        "tree_processes": _harness.peak_of(runs, "tree_processes"),
        "all_mapped": all(r["mapped"] == scenes and r["failed"] == 0 for r in runs),
    }
    if all("identical_to_direct" in r for r in runs):
        out["identical_to_direct"] = all(r["identical_to_direct"] for r in runs)
        out["polygons_equal"] = all(r["polygons_equal"] for r in runs)
        out["prob_max_level_diff"] = max(r["prob_max_level_diff"] for r in runs)
        out["prob_pixels_differing_max"] = max(r["prob_pixels_differing"] for r in runs)
    for key in (
        "import_seconds", "plan_seconds", "server_start_seconds", "startup_seconds",
        "empty_flow_seconds", "cluster_start_seconds", "cluster_close_seconds",
        "probe_cluster_start_seconds", "probe_worker_cold_start_seconds", "probe_warm_map_seconds",
    ):  # fmt: skip
        value = _harness.median_of(runs, key)
        if value is not None:
            out[key] = value
    probes = [r["probe_workers"] for r in runs if "probe_workers" in r]
    if probes:  # per run the slowest worker (they start at once), then the median over runs
        for key in ("import_seconds", "prefect_api_seconds"):
            out[f"probe_worker_{key}"] = statistics.median(max(w[key] for w in p) for p in probes)
        out["worker_torch_threads"] = sorted({w["torch_threads"] for p in probes for w in p})
        out["worker_omp_num_threads"] = sorted(
            {str(w["omp_num_threads"]) for p in probes for w in p}
        )
    if any("torch_threads" in r for r in runs):
        out["torch_threads"] = runs[0]["torch_threads"]
    return out


def machine(model_info: dict) -> dict:
    """bench_infer's machine (torch device from the bundle child), with the orchestration stack."""
    keys = ("torch", "torch_threads", "device", "device_name", "rs_seg")
    return _harness.machine(
        gdal=False,
        packages=("prefect", "prefect-dask", "dask", "distributed"),
        **{key: model_info[key] for key in keys},
    )


def run_kind(kind: str, args: argparse.Namespace, common: dict, run_dir: Path) -> dict:
    out_dir = run_dir / "out"
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh output folder and ledger: all are mapped
    if kind == "direct":
        return run_child(kind, run_dir, out_dir=str(out_dir), **common)
    dask = kind.startswith("flow_dask")
    runner = {"kind": "dask", "workers": DASK_WORKERS} if dask else {}
    warm_dir = run_dir / "warm"
    shutil.rmtree(warm_dir, ignore_errors=True)
    result = run_child(
        "flow", run_dir, out_dir=str(out_dir), empty=str(args.workdir / "empty_inbox"),
        warm_dir=str(warm_dir), runner=runner, server=kind.endswith("_server"),
        probe=not args.no_probe, **common,
    )  # fmt: skip
    shutil.rmtree(warm_dir, ignore_errors=True)
    return result


def bench(args: argparse.Namespace) -> dict:
    data = scenes_for(args.size, args.scenes, args.workdir)
    incoming = str(Path(data["scenes"][0]).parent)
    tag = f"{args.arch}-{args.encoder}".replace("/", "_")
    bundle = str(args.workdir / f"synth_{args.size}x{args.scenes}" / f"bundle-{tag}.pt")
    model_info = run_child(
        "bundle", args.workdir / "bundle-run", scene=data["scenes"][0], out=bundle,
        arch=args.arch, encoder=args.encoder, device=args.device,
    )  # fmt: skip
    shutil.rmtree(args.workdir / "bundle-run", ignore_errors=True)
    (args.workdir / "empty_inbox").mkdir(parents=True, exist_ok=True)
    runs_root = args.workdir / "runs"
    shutil.rmtree(runs_root, ignore_errors=True)
    common = {"incoming": incoming, "bundle": bundle, "device": args.device}
    kinds = [k for k in KINDS if k in args.kinds]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    reference: dict | None = None
    reference_dir = runs_root / "direct-1" / "out"
    for attempt in range(1, args.repeats + 1):  # alternate, so drift on the machine hits all alike
        for kind in kinds:
            print(f"run {attempt}/{args.repeats}: {kind} ...", flush=True)
            run_dir = runs_root / f"{kind}-{attempt}"
            result = run_kind(kind, args, common, run_dir)
            if kind == "direct" and reference is None:
                reference = result
            compare(result, run_dir / "out", reference, reference_dir)
            if not args.keep and run_dir / "out" != reference_dir:
                shutil.rmtree(run_dir / "out", ignore_errors=True)
            runs[kind].append(result)
            extra = ""
            if "startup_seconds" in result:
                extra += f", first flow call {result['startup_seconds']:.1f} s"
            if "cluster_start_seconds" in result:
                extra += f", cluster start {result['cluster_start_seconds']:.1f} s"
            if "identical_to_direct" in result:
                extra += ", outputs " + (
                    "identical" if result["identical_to_direct"] else
                    f"differ: {result['prob_pixels_differing']} px by up to "
                    f"{result['prob_max_level_diff']} level(s), polygons "
                    + ("equal" if result["polygons_equal"] else "DIFFER")
                )  # fmt: skip
            print(
                f"  {kind}: {result['seconds']:.1f} s, {result['mapped']} mapped, peak RSS "
                f"{result['peak_rss_mb']:.0f} MB (tree {result['peak_tree_rss_mb']:.0f} MB)"
                f"{extra}",
                flush=True,
            )
    if not args.keep:
        shutil.rmtree(runs_root, ignore_errors=True)
    megapixels = args.scenes * args.size * args.size / 1e6
    medians = {k: summarize(v, args.scenes, megapixels) for k, v in runs.items()}
    ratios, extra = {}, {}
    if "direct" in medians:
        for kind in kinds[1:]:
            ratios[f"{kind}_vs_direct"] = medians[kind]["seconds"] / medians["direct"]["seconds"]
            paired = [  # same repeat, so the same state of the machine
                r["seconds"] - d["seconds"] for r, d in zip(runs[kind], runs["direct"], strict=True)
            ]
            extra[kind] = {"median": statistics.median(paired), "runs": paired}
    return _harness.report(
        "flows",
        machine(model_info),
        data={
            "scenes": args.scenes,
            "size": args.size,
            "bands": BANDS,
            "dtype": "uint16",
            "seed": SEED,
            "megapixels": megapixels,
            "scene_mb": round(sum(Path(s).stat().st_size for s in data["scenes"]) / 1e6, 1),
        },
        model={
            "arch": args.arch,
            "encoder": args.encoder,
            "parameters": model_info["parameters"],
            "weights": "random (seeded); throughput does not depend on training",
            "chip_size": 256,
            "overlap": 0.25,
            "batch_size": 16,
            "min_area": 500.0,
        },
        timed={
            "direct": "plan(cfg) and map_scene(cfg, job) for every job (no Prefect, no claims)",
            "flow": "infer_new_imagery(cfg) on the ephemeral server, after one start-up call and "
            "one timed empty-inbox call in the same process",
            "flow_dask2": "the same with a local Dask cluster of 2 worker processes x 1 thread; "
            "cluster start, worker imports, each worker's own temporary Prefect server, model "
            "builds and cluster shutdown inside",
            "flow_dask2_server": "flow_dask2 with a Prefect server started before (flows.server."
            "prefect_api on a free port, as make serve does): the workers report to it",
        },
        repeats=args.repeats,
        medians=medians,
        ratios=ratios,
        extra_seconds_vs_direct=extra,
        runs=runs,
    )


def evaluate_checks(report: dict) -> list[dict]:
    checks = []
    ratio = report["ratios"].get("flow_vs_direct")
    if ratio is not None:
        checks.append({
            "check": f"flow <= {OVERHEAD_GOAL} x direct (median seconds)",
            "value": round(ratio, 3),
            "met": ratio <= OVERHEAD_GOAL,
        })  # fmt: skip
    for kind, m in report["medians"].items():
        if kind == "direct":
            continue
        ok = m["all_mapped"] and m["polygons_equal"] and m["prob_max_level_diff"] <= 1
        checks.append({
            "check": f"{kind}: every scene mapped in every run, the polygon counts of direct, "
            "probabilities within 1 level (of 255) of direct",
            "value": "identical" if m["identical_to_direct"] else (
                f"{m['prob_pixels_differing_max']} px differ by up to "
                f"{m['prob_max_level_diff']} level(s); polygons "
                + ("equal" if m["polygons_equal"] else "DIFFER")
            ),
            "met": ok,
        })  # fmt: skip
    return checks


STYLE = {
    "direct": ("direct loop\n(limit)", "#adb5bd"),
    "flow": ("flow, threads\nrunner", "#2b8a3e"),
    "flow_dask2": ("flow, local Dask\n(2 workers)", "#4c6ef5"),
    "flow_dask2_server": ("flow, local Dask\n(2 workers), server", "#7048e8"),
}


def plot(report: dict, path: Path) -> None:
    plt = _harness.pyplot()
    medians = report["medians"]
    kinds = [k for k in KINDS if k in medians]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), width_ratios=(1.3, 1))
    xs = list(range(len(kinds)))
    values = [medians[k]["seconds"] for k in kinds]
    errors = [
        [medians[k]["seconds"] - medians[k]["seconds_min"] for k in kinds],
        [medians[k]["seconds_max"] - medians[k]["seconds"] for k in kinds],
    ]
    bars = ax1.bar(
        xs, values, 0.6, yerr=errors, capsize=4, color=[STYLE[k][1] for k in kinds],
        label="median run (min-max)",
    )  # fmt: skip
    base = medians.get("direct", {}).get("seconds")
    labels = [
        f"{v:.1f} s" + (f"\n{v / base:.2f}x" if base and k != "direct" else "")
        for k, v in zip(kinds, values, strict=True)
    ]
    ax1.bar_label(bars, labels, fontsize=8, padding=2)
    startup = [
        medians[k]["startup_seconds"] + medians[k].get("server_start_seconds", 0.0)
        if "startup_seconds" in medians[k] else None
        for k in kinds
    ]  # fmt: skip
    if any(s is not None for s in startup):
        sx = [x + 0.33 for x, s in zip(xs, startup, strict=True) if s is not None]
        sv = [s for s in startup if s is not None]
        extra = ax1.bar(
            sx, sv, 0.2, color="white", edgecolor="#495057", hatch="///",
            label="before the run: server start + first flow call (not in the run)",
        )  # fmt: skip
        ax1.bar_label(extra, [f"{v:.1f}" for v in sv], fontsize=7)
    ax1.set_xticks(xs, [STYLE[k][0] for k in kinds], fontsize=8)
    ax1.set(ylabel="seconds per run (median, min-max)", title="Mapping the whole inbox")
    ax1.set_ylim(0, max(max(values) * 1.3, *(s * 1.15 for s in startup if s is not None)))
    ax1.legend(fontsize=7, loc="upper left", frameon=False)
    own = [medians[k]["peak_rss_mb"] for k in kinds]
    tree = [medians[k]["peak_tree_rss_mb"] for k in kinds]
    sampled = f"child + descendants (summed, sampled every {_harness.TREE_SAMPLE_S:g} s)"
    _harness.grouped_bars(
        ax2, [("child (wait4)", own, "#868e96"), (sampled, tree, "#fab005")],
        width=0.76, value_format="{:.0f}",
    )  # fmt: skip
    ax2.set_xticks(xs, [STYLE[k][0] for k in kinds], fontsize=8)
    ax2.set(ylabel="peak RSS (MB)", title="Peak memory")
    ax2.set_ylim(0, max(tree + own) * 1.25)
    ax2.legend(fontsize=7, loc="upper left", frameon=False)
    info, data = report["machine"], report["data"]
    fig.suptitle(
        f"infer-new-imagery: {data['scenes']} scenes of {data['size']}² px, "
        f"{report['model']['arch']}/{report['model']['encoder']}, {info['cores']} cores "
        f"({info['cpu']}), {report['repeats']} repeats, {report['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    _harness.save_figure(fig, path, dpi=120)


def print_table(report: dict) -> None:
    table = _harness.Table(
        ("kind", "<18"), ("s (median)", ">10.2f"), ("min-max", ">12"), ("scenes/s", ">9.3f"),
        ("x direct", ">9"), ("RSS MB", ">7.0f"), ("tree MB", ">8.0f"),
    )  # fmt: skip
    print(f"\n{table.header()}  notes")
    base = report["medians"].get("direct", {}).get("seconds")
    for kind, m in report["medians"].items():
        notes = []
        for key, label in (
            ("server_start_seconds", "server start"), ("startup_seconds", "first call"),
            ("empty_flow_seconds", "empty run"), ("cluster_start_seconds", "cluster start"),
            ("cluster_close_seconds", "close"), ("probe_worker_import_seconds", "worker import"),
            ("probe_worker_prefect_api_seconds", "worker API"),
            ("probe_warm_map_seconds", "warm cluster map"),
        ):  # fmt: skip
            if key in m:
                notes.append(f"{label} {m[key]:.1f} s")
        if "identical_to_direct" in m:
            notes.append(
                "outputs identical" if m["identical_to_direct"] else
                f"{m['prob_pixels_differing_max']} px off by <= {m['prob_max_level_diff']}"
            )  # fmt: skip
        ratio = f"{m['seconds'] / base:.3f}" if base else "-"
        spread = f"{m['seconds_min']:>5.1f}-{m['seconds_max']:<6.1f}"
        cells = table.row(
            kind, m["seconds"], spread, m["scenes_per_s"], ratio, m["peak_rss_mb"],
            m["peak_tree_rss_mb"],
        )  # fmt: skip
        print(f"{cells}  " + ", ".join(notes))
    for kind, extra in report["extra_seconds_vs_direct"].items():
        runs = ", ".join(f"{v:+.2f}" for v in extra["runs"])
        print(f"{kind} - direct, paired by repeat: {runs} s (median {extra['median']:+.2f} s)")
    _harness.print_checks(report["checks"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_flows"))
    parser.add_argument("--out", type=Path, default=None, help=f"[{_harness.RESULTS}]")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="[all; --quick: the first 3]")
    parser.add_argument("--arch", default="FPN")
    parser.add_argument("--encoder", default="tu-mobilenetv3_small_050")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in --workdir")
    parser.add_argument(
        "--no-probe", action="store_true", help="skip the second Dask cluster after each Dask run"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: --scenes 2 --size 512 --repeats 1 --no-probe, no server kind",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.scenes, args.size, args.repeats, args.no_probe = 2, 512, 1, True
    if args.kinds is None:
        args.kinds = list(KINDS[:3] if args.quick else KINDS)
    if args.out is None:
        args.out = args.workdir / "results-quick" if args.quick else _harness.RESULTS
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = bench(args)
    report["checks"] = evaluate_checks(report)
    report["all_checks_met"] = all(c["met"] for c in report["checks"])
    _harness.write_json(args.out / "flows.json", report)
    plot(report, args.out / "flows.png")
    print_table(report)
    print(f"results: {args.out / 'flows.json'}, {args.out / 'flows.png'}")


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
