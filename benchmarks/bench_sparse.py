"""Wide, mostly empty scenes: peak RSS of ``rs-seg infer`` must follow the width, not the height.

Issue 27, point 5: a 100000 x 100000 all-nodata scene (a 461 KB sparse GeoTIFF) grew to 12 GB RSS
in 100 s, and 100000 px wide strips grew with their height. The scenes here are sparse, tiled
GeoTIFFs ``--width`` px wide (default 100000), 3 bands of uint16, 256 x 64 px tiles, nodata 0, at
each of ``--heights`` (default 600, 2400 and 9600 rows), of two kinds:

* ``empty``: every pixel nodata;
* ``sparse``: one 32 px square of data in every grid row (a stride of 48 px), each in another
  column, so batches gather windows from many rows.

Each measurement is a fresh child process (``_harness.run_process``): the real command line,
``python -m rs_seg infer scene.tif -o f.gpkg --model bundle.pt --min-area 0`` with a Unet/resnet18
bundle of random weights and 64 px chips, and, as the limit, **bare I/O**: a child that reads the
same scene in strips of 256 rows (its mask included) and nothing else. Peak RSS is ``ru_maxrss``;
wall and CPU seconds are those of the whole process, start-up included.

Goal checked: for each kind, peak RSS at the largest height at most ``HEIGHT_GROWTH`` x the peak
at the smallest. ``--baseline TREE`` also runs the command line from another source tree (an
older commit: ``git archive <commit> | tar -x -C /tmp/old``) for before / after figures.
Results go to ``benchmarks/results/sparse.json`` (``--output``).

    python benchmarks/bench_sparse.py [--heights 600 2400 9600] [--baseline /tmp/old]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _harness

ROOT = _harness.ROOT
HEIGHT_GROWTH = 1.25  # peak RSS at the largest height over the smallest, at most
BANDS = 3
STRIP = 256
KINDS = ("empty", "sparse")


def child_scene(path: str, height: int, width: int, kind: str) -> dict:
    """Write one sparse scene (only its squares of data take room on disk)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": BANDS, "dtype": "uint16",
        "nodata": 0, "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 1, 1),
        "tiled": True, "blockxsize": 256, "blockysize": 64, "compress": "deflate",
        "sparse_ok": True,
    }  # fmt: skip
    rng = np.random.default_rng(height)
    tops = range(8, height - 32, 48) if kind == "sparse" else range(0)
    with rasterio.open(path, "w", **profile) as dst:
        for i, top in enumerate(tops):
            square = rng.integers(200, 4000, size=(BANDS, 32, 32)).astype("uint16")
            dst.write(square, window=Window(i * 7919 % (width - 32), top, 32, 32))
    return {"bytes": Path(path).stat().st_size}


def child_bundle(path: str) -> dict:
    """The tests' tiny bundle (Unet/resnet18, random weights, 64 px chips)."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import make_bundle

    make_bundle(Path(path), bands=BANDS, chip=64)
    return {}


def child_bare(scene: str) -> dict:
    """Bare I/O: the scene read in strips with its mask, nothing kept."""
    import rasterio
    from rasterio.windows import Window

    from rs_seg.rasters import GDAL_ENV

    with rasterio.Env(**GDAL_ENV), rasterio.open(scene) as src:
        for top in range(0, src.height, STRIP):
            window = Window(0, top, src.width, min(STRIP, src.height - top))
            src.read(window=window)
            src.read_masks(1, window=window)
    return {}


CHILDREN = {"scene": child_scene, "bundle": child_bundle, "bare": child_bare}


def infer(tree: Path, scene: Path, bundle: Path, out: Path) -> dict:
    """``rs-seg infer`` from source ``tree`` in a fresh process: wall, CPU and peak RSS."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "rs_seg", "infer", str(scene), "-o", str(out / "f.gpkg"),
               "--model", str(bundle), "--min-area", "0", "--overwrite"]  # fmt: skip
    done = _harness.run_process(command, cwd=out, env=env, log=out / "infer.log")
    return {"wall_seconds": round(done.wall_seconds, 1), "cpu_seconds": round(done.cpu_seconds, 1),
            "peak_rss_mb": round(done.peak_rss_mb), "load_average": done.load_average}  # fmt: skip


def measure(args: argparse.Namespace, bundle: Path) -> list[dict]:
    rows = []
    trees = {"rs_seg": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    for kind in KINDS:
        for height in args.heights:
            scene = args.workdir / f"{kind}_{height}.tif"
            if not scene.exists():
                scene_args = {"path": str(scene), "height": height, "width": args.width}
                _harness.run_child(__file__, "scene", {**scene_args, "kind": kind})
            bare = _harness.run_child(__file__, "bare", {"scene": str(scene)})
            row = {"kind": kind, "height": height, "width": args.width,
                   "bare_io": {"wall_seconds": round(bare["wall_seconds"], 1),
                               "peak_rss_mb": round(bare["peak_rss_mb"])}}  # fmt: skip
            for name, tree in trees.items():
                row[name] = infer(Path(tree), scene, bundle, args.workdir / f"out_{name}")
                print(f"{kind} {args.width} x {height} {name}: {row[name]}", flush=True)
            rows.append(row)
    return rows


def checks(rows: list[dict], heights: list[int]) -> list[dict]:
    """Peak RSS at the largest height over the smallest, per kind."""
    results = []
    for kind in KINDS:
        peaks = {r["height"]: r["rs_seg"]["peak_rss_mb"] for r in rows if r["kind"] == kind}
        ratio = peaks[max(heights)] / peaks[min(heights)]
        results.append({"goal": f"{kind}: peak RSS {max(heights)} / {min(heights)} rows",
                        "value": round(ratio, 3), "limit": HEIGHT_GROWTH,
                        "met": ratio <= HEIGHT_GROWTH})  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heights", type=int, nargs="+", default=[600, 2400, 9600])
    parser.add_argument("--width", type=int, default=100_000)
    parser.add_argument("--baseline", type=Path, help="another source tree to compare with")
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench_sparse")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "sparse.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = args.workdir / "bundle.pt"
    if not bundle.exists():
        _harness.run_child(__file__, "bundle", {"path": str(bundle)})
    rows = measure(args, bundle)
    goals = checks(rows, args.heights)
    _harness.print_checks(goals, "goal")
    document = _harness.report("sparse", _harness.machine(), rows=rows, checks=goals,
                               baseline=str(args.baseline) if args.baseline else None)  # fmt: skip
    _harness.write_json(args.output, document)
    return 0 if all(goal["met"] for goal in goals) else 1


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
