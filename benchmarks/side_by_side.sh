#!/usr/bin/env bash
# Side by side, alternating whole invocations: current tree (/work/main) then the baseline tree
# (/tmp/before, run with its own bench scripts and PYTHONPATH=/tmp/before), ROUNDS times.
# Usage: side_by_side.sh infer|pipeline [ROUNDS] [extra args for the bench script...]
# Results: $SIDE/<bench>/{new,old}_<round>/ (SIDE defaults to /tmp/side_by_side), then a summary.
set -euo pipefail
BENCH=$1; ROUNDS=${2:-3}; shift $(( $# >= 2 ? 2 : 1 ))
NEW=${NEW:-$(cd "$(dirname "$0")/.." && pwd)}; OLD=${OLD:-/tmp/before}; PY=${PY:-$NEW/.venv/bin/python}
SIDE=${SIDE:-/tmp/side_by_side}
rm -rf "${SIDE:?}/$BENCH"  # this run's results only: earlier rounds must not mix in (scenes in work_* are kept)
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
for i in $(seq 1 "$ROUNDS"); do
  for side in new old; do
    tree=$NEW; [ "$side" = old ] && tree=$OLD
    echo "=== $BENCH round $i/$ROUNDS: $side ($tree) $(date +%T)"
    (cd "$tree" && PYTHONPATH="$tree" "$PY" "benchmarks/bench_$BENCH.py" \
        --workdir "$SIDE/work_${BENCH}_$side" --out "$SIDE/$BENCH/${side}_$i" "$@")
  done
done
"$PY" - "$SIDE/$BENCH" <<'PY'
import json, statistics, sys
from pathlib import Path
root = Path(sys.argv[1])
def figures(path):
    d = json.loads(path.read_text())
    out = {}
    if d["benchmark"] == "infer":
        for row in d["rows"]:
            for kind, m in row["medians"].items():
                if "mpx_per_s" in m:
                    out[f"{row['size']} {kind} Mpx/s"] = m["mpx_per_s"]
            if "ratio_rs_seg_vs_bare" in row:
                out[f"{row['size']} rs_seg/{row['limit']}"] = row["ratio_rs_seg_vs_bare"]
    else:
        for row in d.get("inference", []):
            for setup, m in row["mpx"].items():
                out[f"{row['size']} {setup} Mpx/s"] = m["per_s"]
            for setup, m in row["mpx"].items():
                if setup != "bare_io":
                    out[f"{row['size']} {setup} / bare_io"] = m["ratio_to_bare_io"]
        for setup, m in (d.get("loader") or {}).items():
            out[f"loader {setup} chips/s"] = m["per_s"]
    return out
runs = {s: [figures(p) for p in sorted(root.glob(f"{s}_*/*.json"))] for s in ("new", "old")}
keys = [k for k in runs["new"][0] if all(k in r for s in runs.values() for r in s)]
print(f"{'figure':<34} {'new median (runs)':<30} {'old median (runs)':<30} new/old")
for k in keys:
    new, old = ([r[k] for r in runs[s]] for s in ("new", "old"))
    fmt = lambda v: f"{statistics.median(v):.3f} ({', '.join(f'{x:.2f}' for x in v)})"
    print(f"{k:<34} {fmt(new):<30} {fmt(old):<30} {statistics.median(new) / statistics.median(old):.3f}")
PY
