"""Refactor check (issue 28, point 4): what ``rs-seg infer`` loads and how long it takes, two trees.

The model contract moved into ``rs_seg/model/`` so that inference no longer imports the training
stack. This script measures that, for the source tree it belongs to (``current``) and another one
(``--baseline``, e.g. the commit before the change: ``git worktree add /tmp/before b559deb``),
alternating the two trees run by run (current, baseline, current, baseline, ...) for ``--runs``
rounds, every run a fresh process of the same Python (``sys.executable``) with ``PYTHONPATH=TREE``
(so that tree's ``rs_seg`` is imported; each run records ``rs_seg.__file__`` and the script stops if
it is not the tree's):

* ``import``: ``python -c "import rs_seg.infer.run"``;
* ``help``: ``rs-seg infer --help``;
* ``model_info``: ``rs-seg model info BUNDLE``;
* ``infer``: ``rs-seg infer SCENE -o fields.gpkg --model BUNDLE --device cpu --overwrite`` on a
  synthetic scene (``--size`` px, default 1024, 3 bands, ``rs_seg.synthetic`` seed 11, 10 m pixels
  in EPSG:32633), into a scratch folder per tree.

The commands run through a small wrapper (``python -c``: ``runpy.run_module("rs_seg")`` with the
command's arguments, as ``python -m rs_seg`` does) that writes, at exit, which heavy modules
(``HEAVY``) are in ``sys.modules`` and the seconds from the wrapper's start to its exit
(``in_process_seconds``: start-up of the interpreter excluded). Wall time is the parent's clock
around the whole process (``_harness.run_process``, dirty pages flushed before each run).

Before the runs each tree's ``rs_seg`` is byte-compiled (``compileall``, as an installed package
is; ``--no-compile`` to skip: without ``__pycache__``, e.g. under ``PYTHONDONTWRITEBYTECODE``, every
run compiles the sources it imports), and ``--warmup`` rounds (default 1) run uncounted.

The bundle is the tests' random-weights Unet/resnet18 (``tests/helpers.py``: ``make_bundle``, 3
bands, ``--chip`` px chips, default 256), written once per run of this script by the baseline
tree's own code when there is one (bundle format 1, which both trees read; the refactored tree
writes format 2), else by the current tree.

Reported per kind and tree: median, min and max of wall seconds (and of the in-process seconds),
peak RSS, the heavy modules loaded, and the ratio current / baseline of the medians. Goals checked,
on the current tree: after ``import``, ``help`` and ``model_info`` none of ``FORBIDDEN`` is loaded;
the exit status is 1 if one is. Timings have no goal here: the ratios are for the reader to judge
(the machine is shared; medians of alternating runs, but still noisy). Results go to
``benchmarks/results/refactor.json`` (``--output``).

    python benchmarks/bench_refactor.py --baseline /tmp/before [--runs 5] [--size 1024]
    python benchmarks/bench_refactor.py --baseline /tmp/before --kinds import help --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _harness

ROOT = _harness.ROOT
KINDS = ("import", "help", "model_info", "infer")
NO_TRAINING_KINDS = ("import", "help", "model_info")  # the "not in sys.modules" checks
# what issue 28 asks to keep out of inference, with torchmetrics as tests/test_architecture.py
# does (pytorch_lightning: lightning's older package name)
FORBIDDEN = ("lightning", "pytorch_lightning", "albumentations", "pandas", "torchmetrics")
HEAVY = (*FORBIDDEN, "torch", "geopandas", "prefect", "matplotlib")
BANDS = 3
SEED = 11
PIXEL = 10.0  # tests/helpers.py's make_bundle: 10 m pixels in EPSG:32633
EPSG = 32633
MARKER = "@@bench_refactor@@ "
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

# python -c WRAPPER MODE ARGS...: MODE "import" imports rs_seg.infer.run; MODE "cli" runs rs_seg's
# __main__ with ARGS as its command line. At exit: one MARKER line of JSON (after the command's
# own output; SystemExit from the command line included).
WRAPPER = f"""
import atexit, json, runpy, sys, time
_started = time.perf_counter()
_heavy = {HEAVY!r}
def _report():
    rs_seg = sys.modules.get("rs_seg")
    print("\\n{MARKER}" + json.dumps({{
        "in_process_seconds": time.perf_counter() - _started,
        "heavy": sorted(m for m in _heavy if m in sys.modules),
        "rs_seg": getattr(rs_seg, "__file__", None),
    }}), flush=True)
atexit.register(_report)
_mode, _args = sys.argv[1], sys.argv[2:]
if _mode == "import":
    import rs_seg.infer.run
else:
    sys.argv = ["rs-seg", *_args]
    runpy.run_module("rs_seg", run_name="__main__", alter_sys=True)
"""


# --- children ------------------------------------------------------------------------------------


def child_scene(out: str, size: int) -> dict[str, Any]:
    """One synthetic scene (the fields of ``rs_seg.synthetic``, not noise)."""
    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes

    config = SynthConfig(out=Path(out), size=size, bands=BANDS, seed=SEED, pixel_size=PIXEL,
                         epsg=EPSG)  # fmt: skip
    result = generate_scenes(config)
    return {"scene": str(result.scenes[0]), "size": size, "bands": BANDS, "seed": SEED}


def child_bundle(tree: str, path: str, chip: int) -> dict[str, Any]:
    """The tests' random-weights bundle, written by ``tree``'s own code (its bundle format)."""
    sys.path.insert(0, tree)
    import rs_seg
    from tests.helpers import make_bundle

    make_bundle(Path(path), bands=BANDS, chip=chip)
    return {"written_by": str(Path(rs_seg.__file__).parent.parent), "chip": chip}


CHILDREN: dict[str, _harness.Child] = {"scene": child_scene, "bundle": child_bundle}


# --- the trees -----------------------------------------------------------------------------------


def tree_env(tree: Path) -> dict[str, str]:
    """A run from ``tree``'s environment: its rs_seg first on ``sys.path``, offline defaults."""
    return {**OFFLINE, **os.environ, "PYTHONPATH": str(tree)}


def describe_tree(tree: Path) -> dict[str, Any]:
    """The tree's commit and whether it has changes on top of it (a tree in progress)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"path": str(tree), "commit": git("rev-parse", "--short", "HEAD") or None,
            "modified_files": len(changed.splitlines())}  # fmt: skip


def inputs(
    args: argparse.Namespace, trees: Mapping[str, Path]
) -> tuple[Path, Path, dict[str, Any]]:
    """The scene (kept in ``--workdir``) and a bundle written now by the oldest tree."""
    data_dir = args.workdir / f"scene_{args.size}"
    scene = _harness.generated(
        data_dir,
        lambda: _harness.run_child(__file__, "scene", {"out": str(data_dir), "size": args.size}),
        f"generating a {args.size} px synthetic scene in {data_dir} ...",
    )
    writer = trees.get("baseline", trees["current"])
    bundle = args.workdir / f"bundle_chip{args.chip}.pt"
    bundle.unlink(missing_ok=True)
    made = _harness.run_child(
        __file__, "bundle", {"tree": str(writer), "path": str(bundle), "chip": args.chip},
        cwd=writer, env=tree_env(writer),
    )  # fmt: skip
    if Path(made["written_by"]).resolve() != writer.resolve():
        raise SystemExit(f"the bundle was written by {made['written_by']}, not by {writer}")
    info = {"arch": "Unet", "encoder": "resnet18", "weights": "random (tests/helpers.py)",
            "chip": args.chip, "written_by": str(writer)}  # fmt: skip
    return Path(scene["scene"]), bundle, info


def command_for(kind: str, scene: Path, bundle: Path, out: Path) -> list[str]:
    """The wrapper's command line for one kind."""
    wrapper = [sys.executable, "-c", WRAPPER]
    if kind == "import":
        return [*wrapper, "import"]
    if kind == "help":
        return [*wrapper, "cli", "infer", "--help"]
    if kind == "model_info":
        return [*wrapper, "cli", "model", "info", str(bundle)]
    return [*wrapper, "cli", "infer", str(scene), "-o", str(out / "fields.gpkg"),
            "--model", str(bundle), "--device", "cpu", "--overwrite"]  # fmt: skip


def run_once(kind: str, tree: Path, scene: Path, bundle: Path, out: Path) -> dict[str, Any]:
    """One fresh process: wall and CPU seconds, peak RSS, and what the wrapper reported."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{kind}.log"
    done = _harness.run_process(
        command_for(kind, scene, bundle, out), cwd=out, env=tree_env(tree), log=log
    )
    lines = [line for line in log.read_text().splitlines() if line.startswith(MARKER)]
    if not lines:
        raise SystemExit(f"{kind} from {tree} reported nothing{_harness.log_tail(log)}")
    probe = json.loads(lines[-1][len(MARKER) :])
    imported = probe["rs_seg"]
    if imported is None or not Path(imported).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{kind} imported rs_seg from {imported}, not from {tree}")
    return {
        "wall_seconds": done.wall_seconds,
        "in_process_seconds": probe["in_process_seconds"],
        "cpu_seconds": done.cpu_seconds,
        "peak_rss_mb": done.peak_rss_mb,
        "load_average": done.load_average,
        "heavy": probe["heavy"],
    }


def compile_trees(trees: Mapping[str, Path]) -> None:
    """Byte-compile each tree's rs_seg, as an installed package is: no run compiles sources.

    Without it, a tree without ``__pycache__`` (a fresh worktree, or ``PYTHONDONTWRITEBYTECODE``
    set) compiles every module it imports in every run, and a tree with more or larger modules
    pays more for that than for importing them.
    """
    for tree in trees.values():
        command = [sys.executable, "-m", "compileall", "-q", str(tree / "rs_seg")]
        subprocess.run(command, check=True, cwd=tree, env=tree_env(tree))


def measure(
    args: argparse.Namespace, trees: Mapping[str, Path], scene: Path, bundle: Path
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``--runs`` rounds after ``--warmup`` uncounted ones; in each, every kind from every tree
    in turn (A B A B ...)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {name: [] for name in trees} for kind in args.kinds
    }
    for round_ in range(1 - args.warmup, args.runs + 1):
        label = f"{round_}/{args.runs}" if round_ > 0 else "warm-up"
        for kind in args.kinds:
            for name, tree in trees.items():
                out = args.workdir / f"out_{name}"
                result = run_once(kind, tree, scene, bundle, out)
                if round_ > 0:
                    runs[kind][name].append(result)
                print(f"[{label}] {kind:<10} {name:<8} "
                      f"{result['wall_seconds']:6.2f} s wall, {result['peak_rss_mb']:5.0f} MB, "
                      f"heavy: {', '.join(result['heavy']) or '-'}", flush=True)  # fmt: skip
    return runs


# --- summaries -----------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every run, rounded for reading."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}  # fmt: skip


def summarize(runs: Mapping[str, Mapping[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per kind: each tree's spreads and heavy modules, and the ratio current / baseline."""
    summary: dict[str, Any] = {}
    for kind, by_tree in runs.items():
        row: dict[str, Any] = {}
        for name, tree_runs in by_tree.items():
            heavy = sorted({m for r in tree_runs for m in r["heavy"]})
            varying = any(r["heavy"] != tree_runs[0]["heavy"] for r in tree_runs)
            row[name] = {
                "wall_seconds": spread([r["wall_seconds"] for r in tree_runs]),
                "in_process_seconds": spread([r["in_process_seconds"] for r in tree_runs]),
                "cpu_seconds": spread([r["cpu_seconds"] for r in tree_runs]),
                "peak_rss_mb": round(_harness.peak_of(tree_runs)),
                "heavy": heavy,
                "forbidden_loaded": [m for m in heavy if m in FORBIDDEN],
                **({"heavy_varies_between_runs": True} if varying else {}),
            }
        if "baseline" in row:
            for key in ("wall_seconds", "in_process_seconds", "cpu_seconds"):
                ratio = row["current"][key]["median"] / row["baseline"][key]["median"]
                row[f"ratio_{key}"] = round(ratio, 3)
        summary[kind] = row
    return summary


def checks(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 28, point 4: no training stack (FORBIDDEN) after the light commands, current tree."""
    results = []
    for kind in NO_TRAINING_KINDS:
        if kind in summary:
            loaded = summary[kind]["current"]["forbidden_loaded"]
            results.append({"goal": f"{kind}: none of {', '.join(FORBIDDEN)} loaded",
                            "value": ", ".join(loaded) or "none", "met": not loaded})  # fmt: skip
    return results


def print_table(summary: Mapping[str, Any]) -> None:
    table = _harness.Table(("kind", "<11"), ("tree", "<9"), ("wall median", ">11.3f"),
                           ("min", ">7.3f"), ("max", ">7.3f"), ("in-proc", ">8.3f"),
                           ("RSS MB", ">7.0f"), ("heavy modules", "<40"))  # fmt: skip
    print(table.header())
    for kind, row in summary.items():
        for name in ("current", "baseline"):
            if name in row:
                s = row[name]
                wall = s["wall_seconds"]
                print(table.row(kind, name, wall["median"], wall["min"], wall["max"],
                                s["in_process_seconds"]["median"], s["peak_rss_mb"],
                                ", ".join(s["heavy"]) or "-"))  # fmt: skip
        if "ratio_wall_seconds" in row:
            print(f"{'':<11} current / baseline: wall {row['ratio_wall_seconds']:.3f}, "
                  f"in-process {row['ratio_in_process_seconds']:.3f}, "
                  f"CPU {row['ratio_cpu_seconds']:.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="the source tree before the change")
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="leave the trees as they are (runs may compile rs_seg's sources)",
    )
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels for infer")
    parser.add_argument("--chip", type=int, default=256, help="the bundle's chip size")
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench_refactor")
    parser.add_argument("--output", type=Path, default=_harness.RESULTS / "refactor.json")
    args = parser.parse_args()
    trees = {"current": ROOT}
    if args.baseline is not None:
        if not (args.baseline / "rs_seg" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no rs_seg package there")
        trees["baseline"] = args.baseline.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scene, bundle, bundle_info = inputs(args, trees)
    if not args.no_compile:
        compile_trees(trees)
    runs = measure(args, trees, scene, bundle)
    summary = summarize(runs)
    print_table(summary)
    goals = checks(summary)
    _harness.print_checks(goals, "goal")
    scene_info = {"path": str(scene), "size": args.size, "bands": BANDS, "seed": SEED,
                  "pixel_size": PIXEL, "epsg": EPSG}  # fmt: skip
    document = _harness.report(
        "refactor",
        _harness.machine(gdal=False, packages=("torch", "lightning", "pandas")),
        trees={name: describe_tree(tree) for name, tree in trees.items()},
        runs_per_tree=args.runs,
        warmup_rounds=args.warmup,
        byte_compiled=not args.no_compile,
        order="alternating: each round runs every kind from every tree in turn",
        scene=scene_info,
        bundle=bundle_info,
        heavy_modules=list(HEAVY),
        forbidden=list(FORBIDDEN),
        summary=summary,
        checks=goals,
        runs=runs,
    )
    _harness.write_json(args.output, document)
    print(f"results: {args.output}")
    return 0 if all(goal["met"] for goal in goals) else 1


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
