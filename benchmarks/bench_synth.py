"""Synthetic scene generation: time and peak memory per scene size (4 bands, one scene each).

Each size runs in a fresh child process (the same harness as bench_prepare.py); time is measured
inside the child, peak RSS is the child's ``ru_maxrss``. Writes benchmarks/results/synth.json.

    python benchmarks/bench_synth.py [--sizes 4096 16384 20000] [--workdir /tmp/rs_seg_bench_synth]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import RESULTS, machine, run_child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 20000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_synth"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        out = args.workdir / f"synth_{size}"
        shutil.rmtree(out, ignore_errors=True)
        result = run_child("synth", str(size), str(out))
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "synth",
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "rows": rows,
    }
    (RESULTS / "synth.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
