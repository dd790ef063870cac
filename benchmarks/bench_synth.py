"""Synthetic scene generation: time and peak memory per scene size (4 bands, one scene each).

Each size runs in a fresh child process (bench_prepare.py's ``synth`` child, through
``_harness.run_child``); time is measured inside the child, peak RSS is the child's ``ru_maxrss``.
Writes benchmarks/results/synth.json.

    python benchmarks/bench_synth.py [--sizes 4096 16384 20000] [--workdir /tmp/rs_seg_bench_synth]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import _harness
import bench_prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 20000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_synth"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        out = args.workdir / f"synth_{size}"
        shutil.rmtree(out, ignore_errors=True)
        result = bench_prepare.run_child("synth", size=size, out=str(out))
        scene_bytes = Path(result["scene"]).stat().st_size
        row = {
            "size": size,
            "seconds": round(result["seconds"], 1),
            "megapixels_per_s": round(size * size / 1e6 / result["seconds"], 2),
            "peak_rss_mb": round(result["peak_rss_mb"]),
            "scene_mb": round(scene_bytes / 1e6),
            "label_polygons": result["polygons"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    report = _harness.report("synth", _harness.machine(), rows=rows)
    _harness.write_json(_harness.RESULTS / "synth.json", report)


if __name__ == "__main__":
    main()
