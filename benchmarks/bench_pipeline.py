"""Pipeline-ceiling benchmark: everything around the model, with the model made nearly free.

On a GPU the network is a hundred times faster than on this CPU and the work around it (reading,
normalizing, blending, writing, the COG copy; the chip loader in training) sets the pace. This
script measures that ceiling on any machine by replacing the network with a 1x1 convolution
(bands -> outputs), and compares it with the least a pass over the same data costs, in the same
run, alternating the kinds within each repeat, every measurement in a fresh child process:

* ``null``: ``rs_seg.infer.predict.predict_scene`` end to end (scene open, compatibility sample,
  windows of 256 px at overlap 0.25, batch 16, normalization, the 1x1 "model" on one torch
  thread, Hann blending, strip writes, COG copy) with ``workers`` reading and normalizing threads.
  Timed: the ``predict_scene`` call.
* ``bare_io``: the limit: the scene read strip by strip (256 rows, every band, no overlap) with
  rasterio, and one uint8 band per strip written to a tiled GeoTIFF with predict's scratch profile
  (zstd 1, 512 px blocks); no COG. Timed: open to close.
* ``loader``: training's chip pipeline: :class:`rs_seg.train.dataset.ChipDataset` (read image and
  mask chips, normalize, flips and rotations) through a torch ``DataLoader`` (batch 16, shuffled,
  ``num_workers`` processes; 0 = in the main process). Timed: iterating the chips once, after the
  first batch (worker start-up excluded).
  ``cached``: the same from the decoded chip cache (:mod:`rs_seg.train.chip_cache`), built before
  the clock starts, as training builds it before its first epoch.
* ``bare_chips``: the limit for reading chip files: each chip's image and mask opened and read
  with rasterio, nothing else.

Core counts are set with ``taskset`` (the child then sees, and torch and GDAL use, only those
cores); ``workers`` above the core count is oversubscription and shows what extra threads cost.
Throughput: scene Mpx/s and chips/s, median over ``--repeats``; peak RSS from ``wait4``. Goals
(issue 14): null-model inference at least 0.5 x bare I/O at every size, peak RSS of the largest
size within 1.2 x the smallest's in every setup, and the loader at least 2 x 116 chips/s per
core (116 chips/s: the loader in one process before this work). Results:
``benchmarks/results/pipeline.json``.

    python benchmarks/bench_pipeline.py [--sizes 4096 16384] [--repeats 3] [--workdir DIR]
    python benchmarks/bench_pipeline.py --quick      # 1024 px, one repeat
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

import _harness
import bench_infer

CHIP, OVERLAP, BATCH = bench_infer.CHIP, bench_infer.OVERLAP, bench_infer.BATCH  # same windows
RATIO_GOAL = 0.5
RSS_GROWTH_GOAL = 1.2  # peak RSS of the largest scene against the smallest (issue 14, point 2)
LOADER_BEFORE = 116.0  # chips/s in one process before issue 14 (the figure)
LOADER_GOAL = 2.0
# (cores, workers) of the inference runs: one core; two cores with one, two and four workers
INFER_SETUPS = ((1, 1), (2, 1), (2, 2), (2, 4))
# (cores, DataLoader worker processes, from the decoded chip cache)
LOADER_SETUPS = (
    (1, 0, False), (2, 0, False), (2, 1, False), (2, 2, False), (1, 0, True), (2, 1, True),
)  # fmt: skip


# --- children ------------------------------------------------------------------------------------


def child_null(scene: str, bundle_path: str, prob: str, workers: int) -> dict:
    import torch

    from rs_seg.infer.predict import predict_scene
    from rs_seg.model.bundle import ModelBundle

    bundle = ModelBundle.load(Path(bundle_path))

    def null_network(self: ModelBundle, device: torch.device) -> torch.nn.Module:
        return torch.nn.Conv2d(self.in_channels, self.outputs, 1).to(device).eval()

    ModelBundle.build = null_network  # type: ignore[method-assign]
    # One torch thread: the 1x1 convolution is cheap either way, and idle OpenMP threads spin
    # between batches, taking the cores the pipeline is measured on (about 15 % at 4096 px); on
    # a GPU the model's thread only launches kernels.
    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), time.process_time()
    summary = predict_scene(
        Path(scene), bundle, Path(prob), overlap=OVERLAP, batch_size=BATCH, device="cpu",
        workers=workers,
    )  # fmt: skip
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "megapixels": summary.megapixels,
        "windows": summary.windows,
    }


def child_bare_io(scene: str, out: str) -> dict:
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from rs_seg.infer.predict import _profile
    from rs_seg.rasters import GDAL_ENV

    started, cpu = time.perf_counter(), time.process_time()
    with rasterio.Env(**GDAL_ENV), rasterio.open(scene) as src:
        with rasterio.open(out, "w", **_profile(src)) as dst:
            for top in range(0, src.height, CHIP):
                window = Window(0, top, src.width, min(CHIP, src.height - top))
                data = src.read(window=window)
                dst.write((data[0] >> 8).astype(np.uint8), 1, window=window)
        megapixels = src.width * src.height / 1e6
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "megapixels": megapixels,
    }


def child_chips(out: str) -> dict:
    from rs_seg.config import PrepareConfig, SplitConfig, SynthConfig
    from rs_seg.prepare.run import prepare
    from rs_seg.synthetic import generate_scenes

    scenes = generate_scenes(SynthConfig(out=Path(out) / "synth", size=2048, bands=4, seed=5))
    cfg = PrepareConfig(
        scenes=[str(p) for p in scenes.scenes], labels=scenes.labels, out=Path(out) / "chips",
        split=SplitConfig(method="random", seed=0),
    )  # fmt: skip
    return {"chips": str(prepare(cfg).out)}


def _chip_paths(chips: str) -> tuple[list[str], list[str], list[int]]:
    from rs_seg.train.dataset import load_chip_splits

    splits = load_chip_splits(Path(chips))
    images, masks = [], []
    for split in ("train", "val", "test"):
        split_images, split_masks = splits.paths(split)
        images += split_images
        masks += split_masks
    return images, masks, list(splits.bands)


def child_loader(chips: str, workers: int, passes: int, cached: bool, cache_dir: str) -> dict:
    import torch

    from rs_seg.config import AugmentConfig
    from rs_seg.model.normalization import Normalization
    from rs_seg.train.chip_cache import split_cache
    from rs_seg.train.dataset import ChipDataset, build_augmentation

    images, masks, bands = _chip_paths(chips)
    cache = None
    if cached:  # decoded before the clock starts, as training does before its first epoch
        paths = [Path(p) for p in images], [Path(p) for p in masks]
        cache = split_cache(Path(cache_dir), "all", *paths, bands, CHIP)
    normalization = Normalization((1000.0,) * len(bands), (300.0,) * len(bands))
    dataset = ChipDataset(
        images, masks, bands, normalization, build_augmentation(AugmentConfig(), seed=0), cache
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset([dataset] * passes), batch_size=BATCH, shuffle=True,
        num_workers=workers, persistent_workers=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    batches = iter(loader)
    first = len(next(batches)[0])
    started, cpu = time.perf_counter(), time.process_time()
    chips_read = sum(len(images) for images, _ in batches)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "chips": chips_read,
        "first_batch": first,
    }


def child_bare_chips(chips: str, passes: int) -> dict:
    import rasterio

    images, masks, _ = _chip_paths(chips)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        for image, mask in zip(images, masks, strict=True):
            with rasterio.open(image) as src:
                src.read()
            with rasterio.open(mask) as src:
                src.read(1)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "chips": len(images) * passes,
    }


CHILDREN = {
    "synth": bench_infer.child_synth,
    "bundle": bench_infer.child_bundle,
    "null": child_null,
    "bare_io": child_bare_io,
    "chips": child_chips,
    "loader": child_loader,
    "bare_chips": child_bare_chips,
}


# --- parent --------------------------------------------------------------------------------------


def pinned(cores: int) -> list[str]:
    """``taskset`` prefix that limits a child to its first ``cores`` usable cores."""
    usable = sorted(os.sched_getaffinity(0))
    if cores >= len(usable) or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in usable[:cores])]


def run_child(kind: str, cores: int | None = None, **arguments) -> dict:
    """One measurement in a fresh process, limited to ``cores`` cores when given."""
    command = pinned(cores) + _harness.child_command(__file__, kind, arguments) if cores else None
    if command is None:
        return _harness.run_child(__file__, kind, arguments)
    finished = _harness.run_process(command)
    result = finished.last_json()
    result["wall_seconds"] = finished.wall_seconds
    result["peak_rss_mb"] = finished.peak_rss_mb
    return result


def rate(runs: list[dict], amount: str) -> dict:
    values = [r[amount] / r["seconds"] for r in runs]
    return {
        "per_s": statistics.median(values),
        "runs": values,
        "cpu_seconds": _harness.median_of(runs, "cpu_seconds"),
        "peak_rss_mb": _harness.peak_of(runs),
    }


def bench_inference(size: int, args: argparse.Namespace) -> dict:
    scene = bench_infer.scene_for(size, args.workdir)["scene"]
    bundle = args.workdir / f"null_bundle_{size}.pt"
    if not bundle.exists():
        bench_infer.run_child("bundle", scene=scene, out=str(bundle), arch="FPN",
                              encoder="tu-mobilenetv3_small_050", device="cpu")  # fmt: skip
    runs: dict[str, list[dict]] = {"bare_io": []} | {f"{c}c/{w}w": [] for c, w in INFER_SETUPS}
    out = args.workdir / f"out_{size}.tif"
    for repeat in range(args.repeats):
        runs["bare_io"].append(run_child("bare_io", cores=None, scene=scene, out=str(out)))
        for cores, workers in INFER_SETUPS:
            result = run_child("null", cores=cores, scene=scene, bundle_path=str(bundle),
                               prob=str(out), workers=workers)  # fmt: skip
            runs[f"{cores}c/{workers}w"].append(result)
        print(f"[{size}] repeat {repeat + 1}: " + ", ".join(
            f"{k} {v[-1]['megapixels'] / v[-1]['seconds']:.1f}" for k, v in runs.items()
        ) + " Mpx/s", flush=True)  # fmt: skip
    out.unlink(missing_ok=True)
    rates = {kind: rate(kind_runs, "megapixels") for kind, kind_runs in runs.items()}
    bare = rates["bare_io"]["per_s"]
    for kind in rates:
        rates[kind]["ratio_to_bare_io"] = rates[kind]["per_s"] / bare
    return {"size": size, "mpx": rates}


def bench_loader(args: argparse.Namespace) -> dict:
    data_dir = args.workdir / "chips"
    chips = _harness.generated(
        data_dir, lambda: run_child("chips", out=str(data_dir)), "preparing chips ..."
    )["chips"]
    names = {setup: _loader_name(*setup) for setup in LOADER_SETUPS}
    runs: dict[str, list[dict]] = {"bare_chips": []} | {name: [] for name in names.values()}
    cache_dir = args.workdir / "chip-cache"
    for repeat in range(args.repeats):
        runs["bare_chips"].append(run_child("bare_chips", cores=1, chips=chips, passes=3))
        for (cores, workers, cached), name in names.items():
            result = run_child("loader", cores=cores, chips=chips, workers=workers, passes=3,
                               cached=cached, cache_dir=str(cache_dir))  # fmt: skip
            runs[name].append(result)
        print(f"[loader] repeat {repeat + 1}: " + ", ".join(
            f"{k} {v[-1]['chips'] / v[-1]['seconds']:.0f}" for k, v in runs.items()
        ) + " chips/s", flush=True)  # fmt: skip
    shutil.rmtree(cache_dir, ignore_errors=True)
    rates = {kind: rate(kind_runs, "chips") for kind, kind_runs in runs.items()}
    for kind, value in rates.items():
        cores = 1 if kind == "bare_chips" else int(kind.split("c/")[0])
        value["per_core"] = value["per_s"] / cores
    return rates


def _loader_name(cores: int, workers: int, cached: bool) -> str:
    return f"{cores}c/{workers}w" + (" cached" if cached else "")


def evaluate_goals(inference: list[dict], loader: dict) -> list[dict]:
    goals = []
    for row in inference:
        best = max((v for k, v in row["mpx"].items() if k != "bare_io"), key=lambda v: v["per_s"])
        goals.append({
            "goal": f"null-model inference >= {RATIO_GOAL} x bare I/O at {row['size']} px",
            "value": round(best["ratio_to_bare_io"], 3),
            "met": best["ratio_to_bare_io"] >= RATIO_GOAL,
        })  # fmt: skip
    if len(inference) > 1:  # bounded memory: the widest scene's peak against the narrowest's
        by_size = sorted(inference, key=lambda row: row["size"])
        small, large = by_size[0], by_size[-1]
        growth = {
            setup: large["mpx"][setup]["peak_rss_mb"] / small["mpx"][setup]["peak_rss_mb"]
            for setup in small["mpx"]
            if setup != "bare_io"
        }
        worst = max(growth, key=growth.__getitem__)
        goals.append({
            "goal": f"null-model peak RSS at {large['size']} px <= {RSS_GROWTH_GOAL} x at "
            f"{small['size']} px (worst setup: {worst})",
            "value": round(growth[worst], 3), "met": growth[worst] <= RSS_GROWTH_GOAL,
        })  # fmt: skip
    for name in ("1c/0w", "1c/0w cached") if loader else ():
        per_core = loader[name]["per_core"]
        goals.append({
            "goal": f"loader >= {LOADER_GOAL} x {LOADER_BEFORE:g} chips/s per core ({name})",
            "value": round(per_core, 1), "met": per_core >= LOADER_GOAL * LOADER_BEFORE,
        })  # fmt: skip
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_infer"))
    parser.add_argument("--out", type=Path, default=_harness.RESULTS)
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024 px, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [1024], 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    inference = [] if args.skip_inference else [bench_inference(size, args) for size in args.sizes]
    loader = {} if args.skip_loader else bench_loader(args)
    report = _harness.report(
        "pipeline",
        _harness.machine(),
        inference=inference,
        loader=loader,
        setups="'Nc/Mw': the child pinned to N cores (taskset) with M workers (inference: "
        "preparation threads; loader: DataLoader processes, 0 = in process)",
    )
    report["goals"] = evaluate_goals(inference, loader)
    report["all_goals_met"] = all(g["met"] for g in report["goals"])
    _harness.write_json(args.out / "pipeline.json", report)
    for row in inference:
        print(f"{row['size']} px: " + ", ".join(
            f"{k} {v['per_s']:.1f} Mpx/s ({v['ratio_to_bare_io']:.2f}x)"
            for k, v in row["mpx"].items()
        ))  # fmt: skip
    for kind, value in loader.items():
        print(f"loader {kind}: {value['per_s']:.0f} chips/s, {value['per_core']:.0f} per core")
    _harness.print_checks(report["goals"], "goal")
    print(f"results: {args.out / 'pipeline.json'}")


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
