"""Fields benchmark: what the boundary output costs in inference, and splitting in vectorize.

Two measurements for issue 12, each in one run, every kind in a fresh child process of this
script (peak RSS from ``wait4``), kinds alternating within each repeat:

* **inference**: ``predict_scene`` on a synthetic 4-band 4096 px scene (``bench_infer``'s scene
  and settings: overlap 0.25, batch 16, random weights) with a ``cropland`` bundle (one output) and
  a ``fields`` bundle (two outputs, a two-band probability COG), same seed, for two networks:
  FPN/``tu-mobilenetv3_small_050`` (``bench_infer``'s, small, so any per-output cost shows most)
  and Unet/``tu-efficientnet_lite0`` (what ``configs/naip-fields.yaml`` trains). Reported: Mpx/s
  (wall and CPU) of each, and the ratio fields / cropland (goal: at least 0.95).
* **vectorize**: ``rs-seg vectorize prob.tif -o out.gpkg`` (the command line, interpreter start
  included, and the time it prints) on a two-band probability raster of fields, with splitting
  (the default: the stored boundary threshold, grow 3, min area 500 m², simplify one pixel) and
  with ``--no-split`` (today's binary vectorize of band 1, the same raster), against **bare I/O**
  (both bands read in the command line's strips and thresholded, nothing else), at 4096 and 16384
  px. Goals: splitting at least 10 Mpx/s (its own printed time), peak RSS at 16384 px at most
  1.2 x that at 4096 px. ``--no-split`` runs only up to ``--binary-max`` (4096): without the
  boundary band this raster's cropland is two regions spanning the scene, held open with all
  their holes to the last strip, which at 16384 px ran for minutes at 2 GB and more.

The fields raster: a 4096 px tile, either ``--real PROB`` (a two-band probability raster written
by ``rs-seg infer`` with a fields model, e.g. a NAIP test scene from ``check_infer_real.py``) or,
by default, a synthetic one (Voronoi parcels of about 2.4 ha at 1 m, 80 % cropland; extent and
boundary probabilities as a fields model gives them: high inside / along shared parcel edges, 2
px wide, with spatially smooth noise and 0.5 % speckle). Larger sizes mirror the tile (flipped
copies side by side, so every seam continues the fields across it), which keeps the content per
pixel the same at every size: the comparison between sizes is about the scene's size alone.

    python benchmarks/bench_fields.py [--sizes 4096 16384] [--repeats 3] [--real prob.tif]
        [--skip-inference] [--workdir DIR]

Results: ``benchmarks/results/fields.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness
import bench_infer

ROOT = _harness.ROOT
TILE = 4096
STRIP_ROWS = 1024
INFER_SIZE = 4096
# (arch, encoder): bench_infer's small network, where any per-output cost shows most, and the
# network configs/naip-fields.yaml trains for fields
NETWORKS = (("FPN", "tu-mobilenetv3_small_050"), ("Unet", "tu-efficientnet_lite0"))
BINARY_MAX = 4096  # --no-split above this is not run by default (see the docstring)
RATIO_GOAL = 0.95
SPLIT_MPX_GOAL = 10.0
RSS_GROWTH_GOAL = 1.2
FIELD_AREA_PX = 24_000  # mean parcel area, pixels (NAIP fields: about 2.4 ha at 1 m)


# --- children ------------------------------------------------------------------------------------


def child_tile(path: str, size: int, real: str | None) -> dict:
    """A ``size`` x ``size`` two-band fields raster: the real tile mirrored, or a synthetic one."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    if real:
        with rasterio.open(real) as src:
            tile, tags = src.read([1, 2]), src.tags()
            crs, transform = src.crs, src.transform
    else:
        tile, tags = _synthetic_tile(TILE), {"threshold_used": "0.500000"}
        tags["boundary_threshold_used"] = "0.500000"
        crs, transform = "EPSG:32633", from_origin(500_000, 5_300_000, 1.0, 1.0)
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 2, "dtype": "uint8",
        "crs": crs, "transform": transform, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    side = tile.shape[1]
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, size, side):
            rows = min(side, size - row0)
            flipped = tile[:, ::-1] if (row0 // side) % 2 else tile
            strip = np.concatenate(
                [flipped[:, :, ::-1] if j % 2 else flipped for j in range(-(-size // side))],
                axis=2,
            )[:, :rows, :size]
            dst.write(strip, window=((row0, row0 + rows), (0, size)))
        dst.descriptions = ("cropland", "boundary")
        dst.update_tags(**tags)
    return {"path": path, "real": real}


def _synthetic_tile(size: int):
    """Extent and boundary levels (2, size, size) uint8 of Voronoi parcels, 80 % cropland."""
    import numpy as np
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    points = rng.random((size * size // FIELD_AREA_PX, 2)) * size
    cropland = rng.random(len(points)) < 0.8
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    _, cell = cKDTree(points).query(np.column_stack([rows.ravel(), cols.ravel()]), workers=-1)
    cell = cell.reshape(size, size)
    del rows, cols
    crop = cropland[cell]
    edge = np.zeros((size, size), dtype=bool)
    for axis in (0, 1):
        differs = np.diff(cell, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        trail = [slice(None)] * 2
        trail[axis] = slice(None, -1)
        edge[tuple(lead)] |= differs
        edge[tuple(trail)] |= differs
    edge &= crop  # boundaries lie inside cropland, where two parcels meet or at its edge

    def smooth_noise(scale: float) -> np.ndarray:
        return ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3) * scale * 4

    extent = np.where(crop, 225.0, 25.0) + smooth_noise(18)
    boundary = np.where(edge, 220.0, 15.0) + smooth_noise(12)
    speck = rng.random((size, size)) < 0.005
    extent[speck] = 255 - extent[speck]
    return np.clip(np.stack([extent, boundary]), 0, 255).astype(np.uint8)


def child_bare(path: str) -> dict:
    """The limit: both bands read in the command line's strips and thresholded."""
    import rasterio
    from rasterio.windows import Window

    from rs_seg.rasters import GDAL_ENV

    started = time.perf_counter()
    seeds = 0
    with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
        for row0 in range(0, src.height, STRIP_ROWS // max(1, src.width // 2048)):
            rows = min(STRIP_ROWS // max(1, src.width // 2048), src.height - row0)
            data = src.read([1, 2], window=Window(0, row0, src.width, rows))
            seeds += int(((data[0] >= 128) & (data[1] < 128)).sum())
    return {"seconds": time.perf_counter() - started, "seed_pixels": seeds}


def child_bundle(scene: str, out: str, arch: str, encoder: str, task: str) -> dict:
    """``bench_infer``'s random-weight bundle, for one network and task."""
    return bench_infer.child_bundle(scene, out, arch, encoder, "cpu", task=task)


CHILDREN = {
    "tile": child_tile,
    "bare": child_bare,
    "synth": bench_infer.child_synth,
    "bundle": child_bundle,
    "predict": bench_infer.child_rs_seg,
}


# --- parent --------------------------------------------------------------------------------------


def run_cli(prob: Path, out: Path, extra: list[str]) -> dict:
    """``rs-seg vectorize`` in a fresh interpreter: wall, CPU, peak RSS and its printed time."""
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "rs_seg", "vectorize", str(prob), "-o", str(out), *extra]
    finished = _harness.run_process(command, cwd=ROOT)
    line = finished.stdout.strip().splitlines()[-1]  # "N fields (... ha) -> ... (M Mpx in S s)"
    megapixels = float(line.rsplit("(", 1)[1].split()[0])
    seconds = float(line.rsplit(" in ", 1)[1].split()[0])
    out.unlink(missing_ok=True)
    return {
        "fields": int(line.split()[0]), "megapixels": megapixels, "seconds": seconds,
        "mpx_per_s": megapixels / seconds, "wall_s": finished.wall_seconds,
        "cpu_s": finished.cpu_seconds, "peak_rss_mb": finished.peak_rss_mb,
    }  # fmt: skip


def summarize(runs: list[dict], rate: str = "mpx_per_s") -> dict:
    return {
        rate: round(statistics.median(r[rate] for r in runs), 2),
        f"{rate}_runs": [round(r[rate], 2) for r in runs],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
        **({"fields": runs[0]["fields"]} if "fields" in runs[0] else {}),
    }


def bench_vectorize(size: int, args: argparse.Namespace, repeats: int) -> dict:
    prob = args.workdir / f"fields_{'real' if args.real else 'synthetic'}_{size}.tif"
    if not prob.exists():
        print(f"[vectorize {size}] writing {prob.name} ...", flush=True)
        real = str(args.real) if args.real else None
        _harness.run_child(__file__, "tile", {"path": str(prob), "size": size, "real": real})
    out = args.workdir / "fields.gpkg"
    split, binary, bare = [], [], []
    for attempt in range(1, repeats + 1):
        print(f"[vectorize {size}] run {attempt}/{repeats}: split, --no-split, bare", flush=True)
        split.append(run_cli(prob, out, []))
        if size <= args.binary_max:
            binary.append(run_cli(prob, out, ["--no-split"]))
        result = _harness.run_child(__file__, "bare", {"path": str(prob)})
        result["mpx_per_s"] = size * size / 1e6 / result["seconds"]
        bare.append(result)
    row = {
        "size": size,
        "megapixels": round(size * size / 1e6, 1),
        "split": summarize(split),
        "binary": summarize(binary) if binary else None,
        "bare_io": summarize(bare),
    }
    print(json.dumps(row), flush=True)
    return row


def bench_inference(args: argparse.Namespace) -> list[dict]:
    scene_dir = args.workdir / f"scene_{INFER_SIZE}"
    meta = _harness.generated(
        scene_dir,
        lambda: _harness.run_child(__file__, "synth", {"size": INFER_SIZE, "out": str(scene_dir)}),
        f"[inference] generating a {INFER_SIZE} px scene ...",
    )
    return [bench_network(meta["scene"], network, args) for network in NETWORKS]


def bench_network(scene: str, network: tuple[str, str], args: argparse.Namespace) -> dict:
    """One network as a cropland and as a fields bundle, runs alternating."""
    arch, encoder = network
    bundles = {}
    for task in ("cropland", "fields"):
        path = args.workdir / f"{arch}_{encoder}_{task}.pt"
        _harness.run_child(__file__, "bundle", {"scene": scene, "out": str(path), "arch": arch,
                                                "encoder": encoder, "task": task})  # fmt: skip
        bundles[task] = str(path)
    runs: dict[str, list[dict]] = {"cropland": [], "fields": []}
    for attempt in range(1, args.repeats + 1):
        for task, bundle in bundles.items():
            print(f"[inference {arch}/{encoder}] run {attempt}/{args.repeats}: {task}", flush=True)
            prob = args.workdir / f"{task}_prob.tif"
            result = _harness.run_child(__file__, "predict", {
                "scene": scene, "bundle_path": bundle, "prob": str(prob), "device": "cpu",
            })  # fmt: skip
            result["mpx_per_s"] = result["megapixels"] / result["seconds"]
            result["cpu_mpx_per_s"] = result["megapixels"] / result["cpu_seconds"]
            runs[task].append(result)
    row: dict = {"network": f"{arch}/{encoder}"}
    for task, task_runs in runs.items():
        row[task] = summarize(task_runs) | summarize(task_runs, "cpu_mpx_per_s")
    row["ratio"] = round(row["fields"]["mpx_per_s"] / row["cropland"]["mpx_per_s"], 3)
    row["cpu_ratio"] = round(row["fields"]["cpu_mpx_per_s"] / row["cropland"]["cpu_mpx_per_s"], 3)
    row["scene"] = f"{INFER_SIZE} x {INFER_SIZE}, 4 bands"
    print(json.dumps(row), flush=True)
    return row


def goals(inference: list[dict], rows: list[dict]) -> list[dict]:
    checks = []
    for row in inference:
        checks.append({"check": f"fields / cropland inference throughput, {row['network']}",
                       "value": row["ratio"], "limit": RATIO_GOAL,
                       "met": row["ratio"] >= RATIO_GOAL})  # fmt: skip
    for row in rows:
        value = row["split"]["mpx_per_s"]
        checks.append({"check": f"split vectorize Mpx/s at {row['size']} px", "value": value,
                       "limit": SPLIT_MPX_GOAL, "met": value >= SPLIT_MPX_GOAL})  # fmt: skip
    if len(rows) > 1:
        ratio = rows[-1]["split"]["peak_rss_mb"] / rows[0]["split"]["peak_rss_mb"]
        checks.append({"check": f"split peak RSS {rows[-1]['size']} / {rows[0]['size']} px",
                       "value": round(ratio, 3), "limit": RSS_GROWTH_GOAL,
                       "met": ratio <= RSS_GROWTH_GOAL})  # fmt: skip
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-large", type=int, default=1)
    parser.add_argument("--real", type=Path, help="a fields model's probability raster as tile")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--binary-max", type=int, default=BINARY_MAX,
                        help="largest size --no-split is run at")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_fields"))
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "fields.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    inference = [] if args.skip_inference else bench_inference(args)
    rows = [
        bench_vectorize(size, args, args.repeats if size <= 4096 else args.repeats_large)
        for size in sorted(args.sizes)
    ]
    checks = goals(inference, rows)
    _harness.print_checks(checks)
    _harness.write_json(args.output, _harness.report(
        "fields", _harness.machine(), tile=str(args.real) if args.real else "synthetic",
        inference=inference, vectorize=rows, goals=checks,
    ))  # fmt: skip


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
