"""GPU figures (issue 14 point 5): train ``configs/cropland.yaml`` briefly, then map a large scene.

One prepared script for a CUDA machine. Every step runs in a fresh child process (``_harness``),
so each has its own peak host RSS (``wait4``):

1. ``synth``: ``--train-scenes`` (default 8) synthetic 2048 px 4-band uint16 scenes, 3 m pixels,
   seed 5, and one ``--scene-size`` (default 16384) px scene, seed 11 (``bench_infer``'s). Kept in
   ``--workdir`` and reused by later runs.
2. ``prepare``: ``rs_seg.prepare.run.prepare``: 256 px chips, random split 0.8/0.1/0.1,
   ``boundary_width: 0`` (cropland masks: the config is the cropland task).
3. ``train``: ``rs_seg.train.fit.train`` with the ``train:`` section of ``--config`` (model,
   optimizer, batch size, precision ``auto`` = bf16-mixed where supported, loader workers
   ``auto``) and ``chips``, ``out``, ``epochs`` (``--epochs``, default 3), ``accelerator: gpu``,
   ``devices: 1`` overridden; then ``evaluate_run`` writes the model bundle (timed apart). A
   Lightning callback times each epoch's training batches from the start of its first batch
   (loader start-up excluded) to the end of its last (after ``cuda.synchronize``), validation
   excluded. Training chips/s: the chips of epochs 2.. over their batch time (epoch 1 holds
   cuDNN autotuning and warm-up; with one epoch, that epoch); ``fit_chips_per_s``: all chips over
   the whole ``fit`` call (set-up and validation included).
4. ``map``: ``predict_scene(device="cuda")`` of the large scene with the trained bundle (window =
   chip size, overlap 0.25, ``--batch-size`` 16, ``--workers`` reading/normalizing threads [one per
   core, at most 8], precision auto = bf16 autocast), after one untimed ``bundle.build``
   (first-use costs). Timed: the ``predict_scene`` call (scene open to finished COG). Mpx/s =
   scene Mpx / seconds; km2/s = Mpx/s x pixel_size^2, pixel size in metres (1 Mpx of 3 m pixels
   is 9 km2); windows/s = windows (chips of the chip size) / seconds.

Peak GPU memory: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (reset before
``fit`` / ``predict_scene``), and the largest ``memory.used`` nvidia-smi saw on the device (every
process on it, CUDA context included). GPU busy %: a thread in the child runs ``nvidia-smi -i
<torch's device 0> --query-gpu=utilization.gpu,memory.used`` every 0.2 s (one short call per
sample, so each line is complete when read; ``utilization.gpu`` is the share of the driver's last
sample period in which any kernel ran); only samples inside the timed intervals count (training:
the epochs' batch intervals, and the whole ``fit`` apart; mapping: the ``predict_scene`` call),
summarized as mean, median, share of samples >= 80 % and the mean sample period. Goal (issue
14): mean busy >= 80 % while mapping.

Without CUDA or nvidia-smi it measures nothing and says so (exit 0). ``--allow-cpu`` runs the same
steps tiny on the CPU as a smoke test (2 scenes of 512 px, 1 epoch, a 1024 px scene, no GPU
sampling), results to ``--workdir``/gpu_cpu_smoke.json instead of ``benchmarks/results/gpu.json``.

    python benchmarks/gpu_figures.py [--epochs 3] [--scene-size 16384] [--batch-size 16]
    python benchmarks/gpu_figures.py --allow-cpu     # smoke test without a GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness
import bench_infer

BUSY_GOAL = 80.0
POLL_S = 0.2
OVERLAP = 0.25
NO_GPU = "no GPU here: nothing measured; run this on a CUDA machine"
QUERY = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]


# --- GPU sampling --------------------------------------------------------------------------------


def _query(gpu: str) -> list[float] | None:
    command = ["nvidia-smi", "-i", gpu, *QUERY]
    try:
        line = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
        return [float(v) for v in line.splitlines()[0].split(",")]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class GpuSampler(threading.Thread):
    """``(perf_counter, busy %, memory.used MiB)`` every POLL_S, one nvidia-smi call each."""

    def __init__(self, gpu: str) -> None:
        super().__init__(daemon=True)
        self.gpu = gpu
        self.samples: list[tuple[float, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            values = _query(self.gpu)
            if values is not None:
                self.samples.append(((started + time.perf_counter()) / 2, *values))
            self.done.wait(max(0.0, POLL_S - (time.perf_counter() - started)))

    def stop(self) -> None:
        self.done.set()
        self.join(15)

    def summary(self, intervals: list[tuple[float, float]]) -> dict[str, Any]:
        inside = [s for s in self.samples if any(a <= s[0] <= b for a, b in intervals)]
        busy = [s[1] for s in inside]
        if not busy:
            return {"samples": 0}
        times = [s[0] for s in inside]
        return {
            "samples": len(busy),
            "period_s": (times[-1] - times[0]) / max(1, len(times) - 1),
            "busy_mean": statistics.fmean(busy),
            "busy_median": statistics.median(busy),
            "busy_share_ge_80": sum(b >= BUSY_GOAL for b in busy) / len(busy),
            "smi_memory_max_mib": max(s[2] for s in inside),
        }


def gpu_id() -> str:
    """The nvidia-smi id of torch's device 0 (its UUID; CUDA's order may differ from the index)."""
    import torch

    try:
        uuid = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
        if _query(uuid) is not None:
            return uuid
    except (AttributeError, RuntimeError):
        pass
    return "0"


def sampler(on_gpu: bool) -> GpuSampler | None:
    if not on_gpu:
        return None
    found = GpuSampler(gpu_id())
    found.start()
    return found


def cuda_peak(on_gpu: bool) -> dict[str, float]:
    import torch

    if not on_gpu:
        return {}
    return {
        "cuda_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "cuda_peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
    }


# --- children ------------------------------------------------------------------------------------


def child_probe() -> dict:
    import torch

    import rs_seg

    cuda = torch.cuda.is_available()
    return {
        "cuda": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else _harness.cpu_model(),
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "rs_seg": rs_seg.__version__,
    }


def child_synth(out: str, size: int, scenes: int, seed: int) -> dict:
    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes

    started = time.perf_counter()
    cfg = SynthConfig(out=Path(out), size=size, bands=4, seed=seed, scenes=scenes)
    result = generate_scenes(cfg)
    seconds = time.perf_counter() - started
    return {
        "scenes": list(map(str, result.scenes)),
        "labels": str(result.labels),
        "seconds": seconds,
    }


def child_prepare(scenes: list[str], labels: str, out: str) -> dict:
    from rs_seg.config import PrepareConfig, SplitConfig
    from rs_seg.prepare.run import prepare
    from rs_seg.train.dataset import load_chip_splits

    started = time.perf_counter()
    split = SplitConfig(method="random", seed=0)
    cfg = PrepareConfig(scenes=scenes, labels=Path(labels), out=Path(out), boundary_width=0,
                        split=split)  # fmt: skip
    chips = prepare(cfg).out
    seconds = time.perf_counter() - started
    return {"chips": str(chips), "counts": load_chip_splits(chips).counts(), "seconds": seconds}


def child_train(config: str, chips: str, out: str, epochs: int, on_gpu: bool) -> dict:
    import torch

    import rs_seg.train.fit as fit  # first: rs_seg arms its torchvision shim before lightning
    from rs_seg.config import TrainConfig
    from rs_seg.config_files import build_config
    from rs_seg.evaluate.evaluation import evaluate_run

    accelerator = "gpu" if on_gpu else "cpu"
    overrides = {"chips": chips, "out": out, "epochs": epochs, "accelerator": accelerator,
                 "devices": 1}  # fmt: skip
    cfg = build_config(TrainConfig, "train", Path(config), overrides)
    hardware = fit.resolve_hardware(cfg)
    epochs_seen: dict[int, list[float]] = {}  # epoch -> [first batch start, last batch end, chips]

    class Clock(fit.Callback):
        def on_train_batch_start(
            self, trainer: Any, module: Any, batch: Any, batch_idx: int
        ) -> None:
            if batch_idx == 0:
                epochs_seen[trainer.current_epoch] = [time.perf_counter(), 0.0, 0]

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if on_gpu and batch_idx == trainer.num_training_batches - 1:
                torch.cuda.synchronize()
            row = epochs_seen[trainer.current_epoch]
            row[1], row[2] = time.perf_counter(), row[2] + len(batch[0])

    build_trainer = fit.build_trainer

    def with_clock(*args: Any, **kwargs: Any) -> Any:
        trainer = build_trainer(*args, **kwargs)
        trainer.callbacks.append(Clock())  # type: ignore[attr-defined]
        return trainer

    fit.build_trainer = with_clock  # type: ignore[assignment]
    gpu = sampler(on_gpu)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    outcome = fit.train(cfg)
    fit_end = time.perf_counter()
    memory = cuda_peak(on_gpu)
    if gpu is not None:
        gpu.stop()
    assert outcome is not None  # one process: rank zero
    evaluated = evaluate_run(outcome.run, outcome.best_checkpoint)
    rows = [epochs_seen[e] for e in sorted(epochs_seen)]
    timed = rows[1:] or rows
    chips = sum(r[2] for r in rows)
    result = {
        "model": f"{cfg.model.arch}/{cfg.model.encoder}",
        "batch_size": cfg.batch_size,
        "precision": hardware.precision,
        "loader_workers": hardware.num_workers,
        "epochs_run": outcome.epochs_run,
        "chips_per_epoch": [r[2] for r in rows],
        "epoch_batch_seconds": [r[1] - r[0] for r in rows],
        "chips_per_s": sum(r[2] for r in timed) / sum(r[1] - r[0] for r in timed),
        "fit_seconds": fit_end - started,
        "fit_chips_per_s": chips / (fit_end - started),
        "evaluate_seconds": time.perf_counter() - fit_end,
        "bundle": str(evaluated.bundle),
        "test_iou": evaluated.metrics["test"].get("cropland_iou"),
        **memory,
    }
    if gpu is not None:
        result["gpu_train_batches"] = gpu.summary([(r[0], r[1]) for r in rows])
        result["gpu_fit"] = gpu.summary([(started, fit_end)])
    return result


def child_map(
    scene: str, bundle: str, prob: str, batch_size: int, workers: int | None, on_gpu: bool
) -> dict:
    import torch

    from rs_seg.infer.predict import predict_scene
    from rs_seg.model.bundle import ModelBundle

    device = "cuda" if on_gpu else "cpu"
    loaded = ModelBundle.load(Path(bundle))
    loaded.build(torch.device(device))  # warm-up: first-use costs stay out of the timed call
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu = sampler(on_gpu)
    started = time.perf_counter()
    summary = predict_scene(Path(scene), loaded, Path(prob), overlap=OVERLAP,
                            batch_size=batch_size, device=device, workers=workers)  # fmt: skip
    ended = time.perf_counter()
    seconds = ended - started
    if gpu is not None:
        gpu.stop()
    mpx_per_s = summary.megapixels / seconds
    result = {
        "seconds": seconds,
        "megapixels": summary.megapixels,
        "windows": summary.windows,
        "pixel_size_m": summary.pixel_size,
        "mpx_per_s": mpx_per_s,
        "km2_per_s": mpx_per_s * summary.pixel_size**2,
        "windows_per_s": summary.windows / seconds,
        "km2": summary.megapixels * summary.pixel_size**2,
        "batch_size": batch_size,
        "workers": workers,
        **cuda_peak(on_gpu),
    }
    if gpu is not None:
        result["gpu"] = gpu.summary([(started, ended)])
    return result


CHILDREN = {"probe": child_probe, "synth": child_synth, "prepare": child_prepare,
            "train": child_train, "map": child_map}  # fmt: skip


# --- parent --------------------------------------------------------------------------------------


def run_child(kind: str, **arguments: Any) -> dict:
    return _harness.run_child(__file__, kind, arguments)


def data_for(args: argparse.Namespace) -> tuple[dict, dict]:
    """Training chips and the mapping scene, generated once per size and kept in the workdir."""
    train_dir = args.workdir / f"train_{args.train_size}x{args.train_scenes}"
    chips_dir = train_dir / "chips"
    scene_dir = args.workdir / f"scene_{args.scene_size}"

    def synth(folder: Path, size: int, scenes: int, seed: int) -> dict:
        return _harness.generated(folder, lambda: run_child(
            "synth", out=str(folder / "synth"), size=size, scenes=scenes, seed=seed,
        ), f"generating {scenes} synthetic scene(s) of {size} px ...")  # fmt: skip

    train = synth(train_dir, args.train_size, args.train_scenes, 5)
    chips = _harness.generated(chips_dir, lambda: run_child(
        "prepare", scenes=train["scenes"], labels=train["labels"], out=str(chips_dir / "chips"),
    ), "preparing chips ...")  # fmt: skip
    return chips, synth(scene_dir, args.scene_size, 1, bench_infer.SEED)


def gpu_cells(row: dict, key: str) -> str:
    peak, busy = row.get("cuda_peak_allocated_mb"), row.get(key) or {}
    if peak is None or not busy.get("samples"):
        return "GPU not measured"
    return (
        f"peak {peak:.0f} MB allocated, busy mean {busy['busy_mean']:.0f} % / median "
        f"{busy['busy_median']:.0f} % / {busy['busy_share_ge_80']:.0%} of samples >= 80 %"
    )


def print_table(report: dict) -> None:
    train, mapped = report["train"], report["map"]
    print(
        f"train {train['model']}, {train['precision']}, batch {train['batch_size']}: "
        f"{train['chips_per_s']:.1f} chips/s ({train['fit_chips_per_s']:.1f} over the whole "
        f"fit, {train['fit_seconds']:.1f} s), peak RSS {train['peak_rss_mb']:.0f} MB; "
        f"{gpu_cells(train, 'gpu_train_batches')}"
    )
    print(f"map {report['scene_size']} px ({mapped['km2']:.0f} km2): {mapped['mpx_per_s']:.1f} "
          f"Mpx/s, {mapped['km2_per_s']:.1f} km2/s, {mapped['windows_per_s']:.0f} windows/s, "
          f"{mapped['seconds']:.1f} s, peak RSS {mapped['peak_rss_mb']:.0f} MB; "
          f"{gpu_cells(mapped, 'gpu')}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=_harness.ROOT / "configs/cropland.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-scenes", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--scene-size", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=16, help="mapping batch size")
    parser.add_argument("--workers", type=int, default=None, help="mapping threads [auto]")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_gpu"))
    parser.add_argument("--out", type=Path, default=None, help="[benchmarks/results/gpu.json]")
    parser.add_argument("--allow-cpu", action="store_true", help="tiny smoke run on the CPU")
    args = parser.parse_args()
    probe = run_child("probe") if shutil.which("nvidia-smi") or args.allow_cpu else {}
    on_gpu = bool(probe.get("cuda")) and shutil.which("nvidia-smi") is not None
    if not on_gpu and not args.allow_cpu:
        print(NO_GPU)
        return 0
    if not on_gpu:
        args.train_scenes, args.train_size, args.scene_size, args.epochs = 2, 512, 1024, 1
    out = args.out or (
        _harness.RESULTS / "gpu.json" if on_gpu else args.workdir / "gpu_cpu_smoke.json"
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    chips, scene = data_for(args)
    run = args.workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    print(f"training {args.config.name}, {args.epochs} epochs, chips {chips['counts']} ...",
          flush=True)  # fmt: skip
    train = run_child("train", config=str(args.config), chips=chips["chips"], out=str(run),
                      epochs=args.epochs, on_gpu=on_gpu)  # fmt: skip
    print(f"mapping the {args.scene_size} px scene ...", flush=True)
    prob = args.workdir / "prob.tif"
    mapped = run_child("map", scene=scene["scenes"][0], bundle=train["bundle"], prob=str(prob),
                       batch_size=args.batch_size, workers=args.workers, on_gpu=on_gpu)  # fmt: skip
    prob.unlink(missing_ok=True)
    keys = ("torch", "cuda_version", "device_name", "rs_seg")
    report = _harness.report(
        "gpu", _harness.machine(**{k: probe[k] for k in keys}), device="cuda" if on_gpu else "cpu",
        config=str(args.config), epochs=args.epochs, chips=chips["counts"],
        scene_size=args.scene_size, data={"chips": chips, "scene": scene}, train=train,
        map=mapped,
    )  # fmt: skip
    busy = mapped.get("gpu", {}).get("busy_mean")
    goal = f"GPU busy >= {BUSY_GOAL:g} % (mean) while mapping"
    report["goals"] = [] if busy is None else [{"goal": goal, "value": round(busy, 1),
                                                "met": busy >= BUSY_GOAL}]  # fmt: skip
    _harness.write_json(out, report)
    print_table(report)
    _harness.print_checks(report["goals"], "goal")
    if not on_gpu:
        print("CPU smoke run: no GPU figures measured")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
