"""Vectorize benchmark: ``rs-seg vectorize`` on adversarial rasters, against a bare strip read.

Issue 10: a 2048 x 2048 checkerboard of cropland / background pixels took 118 s and 3.7 GB and gave
no field, because every one-pixel region was polygonized before the minimum-area filter dropped it.
The rasters here are single-band uint8 probability GeoTIFFs in UTM 33N with 1 m pixels, tiled
512 x 512, DEFLATE, with the threshold tag ``rs-seg infer`` writes (``threshold_used=0.500000``):

* ``checkerboard``: 230 / 20 alternating pixels, every cropland region a single pixel (1 m²);
* ``noise``: uniform random levels 0-255 (seed 0), so half the pixels are cropland in 4-connected
  regions of all sizes, about 0.066 per pixel.

Cases (``--cases``): the checkerboard with the command line's defaults (``--min-area 500``); noise
2048 x 2048 with the defaults; noise with ``--min-area 0`` (nothing can be dropped early, so every
region is polygonized and written) at 2048 x 2048, 4096 x 2048 and 8192 x 2048 (height x width:
the same strips, more of them) and 4096 x 4096 (twice the strip width).

Every measurement is a fresh child process started from this script, which imports only the
standard library (``_harness``, which runs the children, included), so the child's ``ru_maxrss``
from ``wait4`` is its own peak (a child forked from a large parent starts with the parent's size as
its peak): the real command line
(``python -m rs_seg vectorize prob.tif -o out.gpkg [--min-area 0]``), and, as the limit, **bare
I/O**: a script that reads the same raster in the same strips (1024 rows) and computes the cropland
mask, nothing else. Wall time is the child's from start to exit, interpreter start and imports
included (the command line's own figure, printed by it, is kept too). Runs alternate, rs_seg then
bare; wall and CPU seconds (user + system, from ``wait4``: less sensitive than wall to other work
on the machine, whose 1-minute load average is recorded per run) are medians over ``--repeats``,
peak RSS the largest.

Goals checked: the checkerboard under 10 s and 500 MB; with ``--min-area 0`` on noise, peak RSS at
8192 rows at most 1.15 x the 2048-row figure (memory must not grow with the scene's height; see
``HEIGHT_GROWTH`` for the margin).

``--baseline TREE`` also runs the command line from another source tree (for example an older
commit: ``git archive <commit> | tar -x -C /tmp/old``), for before / after figures; ``--cases``
picks cases by name. Results go to ``benchmarks/results/vectorize.json`` (``--output``).

    python benchmarks/bench_vectorize.py [--repeats 2] [--baseline /tmp/old] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import _harness

ROOT = _harness.ROOT
STRIP_ROWS = 1024  # VectorizeSettings' default, what the command line uses
# name: (raster kind, height, width, extra command-line arguments)
CASES = {
    "checkerboard_2048": ("checkerboard", 2048, 2048, []),
    "noise_2048": ("noise", 2048, 2048, []),
    "noise_2048_min0": ("noise", 2048, 2048, ["--min-area", "0"]),
    "noise_4096x2048_min0": ("noise", 4096, 2048, ["--min-area", "0"]),
    "noise_8192x2048_min0": ("noise", 8192, 2048, ["--min-area", "0"]),
    "noise_4096_min0": ("noise", 4096, 4096, ["--min-area", "0"]),
}
CHECKERBOARD_SECONDS, CHECKERBOARD_MB = 10.0, 500.0
# Peak RSS at 8192 rows over 2048 rows, noise with --min-area 0. The whole-run peak is the largest
# of the per-strip peaks, which vary by about 25 MB from run to run, so a longer scene samples more
# of them; a leak of one WKB per field (about 300 B, 0.066 fields per pixel) would give 1.5.
HEIGHT_GROWTH = 1.15


def child_make(kind: str, height: int, width: int, path: str) -> dict:
    """Write a probability raster strip by strip (the parent stays free of numpy and GDAL)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500_000, 5_300_000, 1.0, 1.0),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, 512):
            rows = min(512, height - row0)
            if kind == "checkerboard":
                r, c = np.indices((rows, width))
                values = np.where((r + row0 + c) % 2 == 0, 230, 20).astype(np.uint8)
            else:
                values = rng.integers(0, 256, (rows, width), dtype=np.uint8)
            dst.write(values, 1, window=((row0, row0 + rows), (0, width)))
        dst.update_tags(threshold_used=f"{0.5:.6f}")  # as rs-seg infer writes it
    return {"path": path}


def child_bare(path: str) -> dict:
    """The limit: read the raster in the command line's strips and threshold it, nothing else."""
    import rasterio
    from rasterio.windows import Window

    from rs_seg.levels import threshold_to_level
    from rs_seg.rasters import GDAL_ENV

    started = time.perf_counter()
    level = threshold_to_level(0.5)
    cropland = 0
    with rasterio.Env(**GDAL_ENV), rasterio.open(path) as src:
        for row0 in range(0, src.height, STRIP_ROWS):
            rows = min(STRIP_ROWS, src.height - row0)
            values = src.read(1, window=Window(0, row0, src.width, rows))
            cropland += int((values >= level).sum())
    return {"seconds": time.perf_counter() - started, "cropland_pixels": cropland}


CHILDREN = {"make": child_make, "bare": child_bare}


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict:
    """Run a child to completion (``_harness.run_process``), in this benchmark's terms.

    Wall and CPU seconds, peak RSS (MiB, wait4), the 1-minute load average when it started (wall
    times are only as good as that) and its stdout.
    """
    finished = _harness.run_process(command, cwd=cwd, env=env)
    return {
        "wall_s": finished.wall_seconds,
        "cpu_s": finished.cpu_seconds,
        "peak_rss_mb": finished.peak_rss_mb,
        "load_average": finished.load_average,
        "stdout": finished.stdout,
    }


def run_cli(tree: Path, prob: Path, out: Path, extra: list[str]) -> dict:
    out.unlink(missing_ok=True)
    env = os.environ | {"PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "rs_seg", "vectorize", str(prob), "-o", str(out), *extra]
    result = run(command, cwd=tree, env=env)
    line = result.pop("stdout").strip().splitlines()[-1]  # "N fields (... ha) -> ... in S s)"
    result["fields"] = int(line.split()[0])
    result["cli_s"] = float(line.rsplit(" in ", 1)[1].split()[0])
    out.unlink(missing_ok=True)
    return result


def run_bare(prob: Path) -> dict:
    result = run(_harness.child_command(__file__, "bare", {"path": str(prob)}), cwd=ROOT)
    result.update(json.loads(result.pop("stdout").strip().splitlines()[-1]))
    return result


def summarize(runs: list[dict]) -> dict:
    row = {
        "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
        "wall_s_runs": [round(r["wall_s"], 2) for r in runs],
        "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
        "load_average": [round(r["load_average"], 2) for r in runs],
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
    }
    if "cli_s" in runs[0]:
        row["cli_s"] = round(statistics.median(r["cli_s"] for r in runs), 2)
        row["fields"] = runs[0]["fields"]
    return row


def bench_case(name: str, args: argparse.Namespace) -> dict:
    kind, height, width, extra = CASES[name]
    prob = args.workdir / f"{kind}_{height}x{width}.tif"
    if not prob.exists():
        print(f"[{name}] writing {prob.name} ...", flush=True)
        arguments = {"kind": kind, "height": height, "width": width, "path": str(prob)}
        run(_harness.child_command(__file__, "make", arguments), cwd=ROOT)
    out = args.workdir / f"{name}.gpkg"
    ours, bare, baseline = [], [], []
    for attempt in range(1, args.repeats + 1):
        print(f"[{name}] run {attempt}/{args.repeats}: rs-seg vectorize, then bare I/O", flush=True)
        ours.append(run_cli(ROOT, prob, out, extra))
        bare.append(run_bare(prob))
    if args.baseline is not None:
        print(f"[{name}] baseline: {args.baseline}", flush=True)
        baseline.append(run_cli(args.baseline, prob, out, extra))
    row = {
        "case": name,
        "raster": f"{kind} {height} x {width}",
        "args": " ".join(extra) or "defaults (--min-area 500)",
        "megapixels": round(height * width / 1e6, 2),
        "rs_seg": summarize(ours),
        "bare_io": summarize(bare),
    }
    if baseline:
        row["baseline"] = summarize(baseline)
    row["bytes_per_pixel_over_bare"] = round(
        (row["rs_seg"]["peak_rss_mb"] - row["bare_io"]["peak_rss_mb"]) * 2**20 / (height * width)
    )
    print(json.dumps(row), flush=True)
    return row


def goals(rows: dict[str, dict]) -> dict[str, dict]:
    checks = {}
    if "checkerboard_2048" in rows:
        ours = rows["checkerboard_2048"]["rs_seg"]
        checks["checkerboard_seconds"] = {
            "value": ours["wall_s"],
            "limit": CHECKERBOARD_SECONDS,
            "met": ours["wall_s"] < CHECKERBOARD_SECONDS,
        }
        checks["checkerboard_peak_rss_mb"] = {
            "value": ours["peak_rss_mb"],
            "limit": CHECKERBOARD_MB,
            "met": ours["peak_rss_mb"] < CHECKERBOARD_MB,
        }
    low, high = rows.get("noise_2048_min0"), rows.get("noise_8192x2048_min0")
    if low and high:
        ratio = high["rs_seg"]["peak_rss_mb"] / low["rs_seg"]["peak_rss_mb"]
        checks["noise_height_growth"] = {
            "value": round(ratio, 3),
            "limit": HEIGHT_GROWTH,
            "met": ratio <= HEIGHT_GROWTH,
        }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--baseline", type=Path, help="another source tree to run the CLI from")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_vectorize"))
    parser.add_argument("--keep", action="store_true", help="keep the rasters for the next run")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "vectorize.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    rows = {name: bench_case(name, args) for name in args.cases}
    checks = goals(rows)
    _harness.print_checks({"check": name, **check} for name, check in checks.items())
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    report = _harness.report(
        "vectorize",
        _harness.machine(),
        load_average_at_end=[round(x, 2) for x in os.getloadavg()],
        strip_rows=STRIP_ROWS,
        rows=list(rows.values()),
        goals=checks,
    )
    if args.baseline is not None:
        report["baseline_tree"] = str(args.baseline)
    _harness.write_json(args.output, report)


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
