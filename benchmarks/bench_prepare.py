"""Chip-preparation benchmark: throughput and peak memory against a bare windowed read + write.

For each scene size (default 4096 and 16384 px, 4 bands, uint16) it generates a synthetic scene with
its cropland polygons, then measures in fresh child processes:

* ``rs_seg``: ``rs_seg.prepare.run.prepare`` end to end (labels reprojected and rasterized, nodata
  handling, chip GeoTIFFs, spatial split, index), and
* ``bare``: the lower bound on the same machine in the same run: for exactly the chips rs_seg wrote,
  read the window and write an image chip and a mask chip with the same GeoTIFF profiles, nothing
  else.

Throughput is chips written per second inside the child (imports excluded, dirty pages flushed
before each run), the median of ``--repeats`` alternating runs; peak RSS is the largest
``ru_maxrss`` (from ``wait4``) of those runs. Results go to ``benchmarks/results/prepare.json``
and ``prepare.png``.

    python benchmarks/bench_prepare.py [--sizes 4096 16384] [--workdir /tmp/rs_seg_bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import _harness


def child_synth(size: int, out: str) -> dict:
    import pyogrio

    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes

    started = time.perf_counter()
    result = generate_scenes(SynthConfig(out=Path(out), size=size, bands=4, seed=11, scenes=1))
    seconds = time.perf_counter() - started
    polygons = pyogrio.read_info(result.labels)["features"]
    return {
        "scene": str(result.scenes[0]),
        "labels": str(result.labels),
        "polygons": polygons,
        "seconds": seconds,
    }


def child_prepare(scene: str, labels: str, out: str) -> dict:
    from rs_seg.config import PrepareConfig
    from rs_seg.prepare.run import prepare

    cfg = PrepareConfig(scenes=[scene], labels=labels, out=Path(out), overwrite=True)
    started, cpu = time.perf_counter(), time.process_time()
    summary = prepare(cfg)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "chips": summary.chips,
    }


def child_bare(scene: str, index_dir: str, out: str) -> dict:
    """Read each window rs_seg wrote and write image + mask chips with the same profiles."""
    import numpy as np
    import pyogrio
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from rs_seg.config import PrepareConfig
    from rs_seg.prepare.chips import ChipSettings, chip_profile, mask_profile
    from rs_seg.rasters import GDAL_ENV, RasterInfo

    chips = pyogrio.read_dataframe(Path(index_dir) / "index.gpkg", read_geometry=False)
    info = RasterInfo.read(Path(scene))
    size = int(chips["size"].iloc[0])
    defaults = PrepareConfig.model_fields
    settings = ChipSettings(size, size, 1.0, defaults["compression"].default)
    image_profile, mask_profile_ = chip_profile(info, settings), mask_profile(info, settings)
    zeros = np.zeros((1, size, size), dtype=np.uint8)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu = time.perf_counter(), time.process_time()
    with rasterio.Env(**GDAL_ENV), rasterio.open(scene) as src:
        for i, (row_off, col_off) in enumerate(
            zip(chips["row_off"], chips["col_off"], strict=True)
        ):
            window = Window(col_off, row_off, size, size)
            data = src.read(window=window)
            transform = window_transform(window, src.transform)
            with rasterio.open(out / f"{i}.tif", "w", **image_profile, transform=transform) as dst:
                dst.write(data)
            with rasterio.open(
                out / f"{i}_m.tif", "w", **mask_profile_, transform=transform
            ) as dst:
                dst.write(zeros)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "chips": len(chips),
    }


CHILDREN = {"synth": child_synth, "prepare": child_prepare, "bare": child_bare}


def run_child(kind: str, **arguments: str | int) -> dict:
    """A measurement in a fresh process of this script (``_harness.run_child``)."""
    return _harness.run_child(__file__, kind, arguments)


def bench_size(size: int, workdir: Path, repeats: int) -> dict:
    data_dir = workdir / f"synth_{size}"
    scene = _harness.generated(
        data_dir,
        lambda: run_child("synth", size=size, out=str(data_dir)),
        f"[{size}] generating a synthetic 4-band scene ...",
    )
    chips_dir, bare_dir = workdir / f"chips_{size}", workdir / f"bare_{size}"
    ours, bare = [], []
    for attempt in range(1, repeats + 1):  # alternate, so drift on the machine hits both alike
        print(
            f"[{size}] run {attempt}/{repeats}: rs_seg prepare, then bare read + write", flush=True
        )
        shutil.rmtree(chips_dir, ignore_errors=True)  # deleting old chips is not preparation
        ours.append(
            run_child("prepare", scene=scene["scene"], labels=scene["labels"], out=str(chips_dir))
        )
        shutil.rmtree(bare_dir, ignore_errors=True)
        bare.append(
            run_child("bare", scene=scene["scene"], index_dir=str(chips_dir), out=str(bare_dir))
        )
        shutil.rmtree(bare_dir, ignore_errors=True)
    shutil.rmtree(chips_dir, ignore_errors=True)
    ours_rate = statistics.median(r["chips"] / r["seconds"] for r in ours)
    bare_rate = statistics.median(r["chips"] / r["seconds"] for r in bare)
    row = {
        "size": size,
        "scene_mb": round(Path(scene["scene"]).stat().st_size / 1e6, 1),
        "label_polygons": scene.get("polygons"),
        "chips": ours[0]["chips"],
        "repeats": repeats,
        "rs_seg_chips_per_s": ours_rate,
        "bare_chips_per_s": bare_rate,
        "rs_seg_chips_per_s_runs": [r["chips"] / r["seconds"] for r in ours],
        "bare_chips_per_s_runs": [r["chips"] / r["seconds"] for r in bare],
        "rs_seg_peak_rss_mb": _harness.peak_of(ours),
        "bare_peak_rss_mb": _harness.peak_of(bare),
        "rs_seg_peak_rss_mb_runs": _harness.rss_runs(ours),
        "bare_peak_rss_mb_runs": _harness.rss_runs(bare),
    }
    row["slowdown_vs_bare"] = row["bare_chips_per_s"] / row["rs_seg_chips_per_s"]
    # CPU seconds per chip are less sensitive to other tenants of a shared machine than wall time.
    row["rs_seg_cpu_ms_per_chip"] = 1000 * statistics.median(
        r["cpu_seconds"] / r["chips"] for r in ours
    )
    row["bare_cpu_ms_per_chip"] = 1000 * statistics.median(
        r["cpu_seconds"] / r["chips"] for r in bare
    )
    row["cpu_ratio_vs_bare"] = row["rs_seg_cpu_ms_per_chip"] / row["bare_cpu_ms_per_chip"]
    print(json.dumps(row, indent=1), flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    plt = _harness.pyplot()
    labels = [f"{r['size']}²" for r in rows]
    x = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((ax1, "chips_per_s"), (ax2, "peak_rss_mb")):
        _harness.grouped_bars(ax, [
            ("rs_seg prepare", [r[f"rs_seg_{key}"] for r in rows], None),
            ("bare read+write", [r[f"bare_{key}"] for r in rows], None),
        ])  # fmt: skip
    ax1.set(
        xticks=list(x), xticklabels=labels, ylabel="chips / s", title="Throughput (256 px chips)"
    )
    ax1.legend()
    ax2.set(xticks=list(x), xticklabels=labels, ylabel="peak RSS (MB)", title="Peak memory")
    ax2.legend(loc="lower right")
    fig.suptitle("Chip preparation, 4-band uint16 synthetic scenes")
    fig.tight_layout()
    _harness.save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench"))
    parser.add_argument("--out", type=Path, default=_harness.RESULTS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; medians reported")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [bench_size(size, args.workdir, args.repeats) for size in args.sizes]
    report = _harness.report("prepare", _harness.machine(), rows=rows)
    if len(rows) >= 2:
        report["rss_ratio_largest_vs_smallest"] = (
            rows[-1]["rs_seg_peak_rss_mb"] / rows[0]["rs_seg_peak_rss_mb"]
        )
    _harness.write_json(args.out / "prepare.json", report)
    plot(rows, args.out / "prepare.png")
    print(f"results: {args.out / 'prepare.json'}, {args.out / 'prepare.png'}")


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
