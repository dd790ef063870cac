"""Scene-inference benchmark: throughput and peak memory against the bare model and a naive recipe.

For each scene size (default 4096 and 16384 px, 4 bands, uint16) it generates a synthetic scene
once (kept in ``--workdir`` and reused), builds a model bundle with random weights (FPN /
``tu-mobilenetv3_small_050`` by default, 256 px chips, normalization measured on a sample of the
scene's valid pixels, threshold 0.5; training does not change throughput), then measures in fresh
child processes, alternating the kinds within each repeat:

* ``rs_seg``: ``rs_seg.infer.predict.predict_scene`` end to end at overlap 0.25, batch 16: windowed
  strip reads (one strip read ahead in a thread), band selection and normalization, the model
  (channels_last, bf16 autocast on CUDA), Hann blending, strip writes of a tiled GeoTIFF and the
  copy to a COG with overviews. Timed: the ``predict_scene`` call, which includes opening the
  scene, the radiometric compatibility sample and one rebuild of the network from the loaded bundle
  (a warm-up build right before it, timed separately as ``build_seconds``, takes the first-use
  costs out of it).
* ``bare``: the limit on the same device: the forward passes alone for the same number of windows
  (``window_count(h, w, 256, 0.25)``), random float32 batches of 16 x 4 x 256 x 256 already on the
  device in channels_last, ``torch.no_grad()``, the network, autocast and sigmoid of
  ``WindowPredictor.__call__``. Timed: the batch loop after one untimed warm-up batch (on CUDA up
  to a ``synchronize``). Reported as the equivalent scene throughput, scene Mpx / time.
* ``rs_seg_bf16`` and ``bare_bf16``: the same two with ``precision="bf16"`` (CPU autocast), run
  where the CPU has native bfloat16 (AVX512-BF16 / AMX; on CUDA the plain kinds are bf16
  already). The ratio's limit is the fastest bare forward of the run, so a CPU that runs bf16
  faster sets a higher bar for rs_seg's default fp32; ``bf16_speed_ratio_*`` give bf16 / fp32.
* ``naive``: the classic recipe: ``src.read()`` of the whole scene as float32, normalized as a
  whole, padded to whole 256 px tiles, non-overlapping tiles one at a time (batch 1, NCHW fp32,
  ``torch.no_grad()``), every probability into one in-memory array, then one plain uint8 GeoTIFF
  with the source profile (no COG, no overviews, no nodata mask). Timed: from opening the scene to
  closing the output. Skipped, with the reason recorded, where its estimated memory exceeds 70 %
  of the machine's RAM.
* ``vectorize``: ``rs_seg.infer.vectorize.vectorize`` on the probability COG ``rs_seg`` wrote
  (threshold 0.5, min_area 500, simplify one pixel). Timed: the ``vectorize`` call.

Throughput is scene megapixels per second measured inside the child (imports, bundle loading and
model construction excluded), the median of the runs; peak RSS is ``ru_maxrss`` from ``wait4``,
the largest over the runs. Dirty pages are flushed (``os.sync``) before each child. Repeats:
``--repeats`` (default 3) for sizes up to 4096, ``--repeats-large`` (default 1) above, since one
16384 px pass of all kinds takes tens of minutes on two CPU cores. Goals checked: rs_seg reaches
at least 0.8 of the fastest bare limit at every size, and its peak RSS at the largest size is at
most 1.5 GB (1500 MiB) and at most 1.2 x that at the smallest size. Results go to
``benchmarks/results/infer.json`` and ``infer.png`` (``--out`` to change).

    python benchmarks/bench_infer.py [--sizes 4096 16384] [--device auto] [--workdir DIR]
    python benchmarks/bench_infer.py --quick     # smoke run: one 1024 px scene, one repeat
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness

CHIP = 256
OVERLAP = 0.25
BATCH = 16
BANDS = 4
KINDS = ("rs_seg", "bare", "rs_seg_bf16", "bare_bf16", "naive", "vectorize")
BF16_KINDS = ("rs_seg_bf16", "bare_bf16")  # on a CPU only: on CUDA rs_seg runs bf16 already
RATIO_GOAL = 0.8
RSS_GOAL_MB = 1500.0
RSS_GROWTH_GOAL = 1.2
NAIVE_RAM_FRACTION = 0.7
MIN_AREA = 500.0
SEED = 11


# --- children ------------------------------------------------------------------------------------


def child_synth(size: int, out: str) -> dict:
    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes

    started = time.perf_counter()
    result = generate_scenes(SynthConfig(out=Path(out), size=size, bands=BANDS, seed=SEED))
    return {"scene": str(result.scenes[0]), "seconds": time.perf_counter() - started}


def child_bundle(
    scene: str, out: str, arch: str, encoder: str, device: str, task: str = "cropland"
) -> dict:
    """A bundle with seeded random weights and normalization measured on the scene."""
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    import rs_seg
    from rs_seg.config import ModelConfig
    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.networks import build_model
    from rs_seg.model.normalization import Normalization
    from rs_seg.model.predictor import resolve_device
    from rs_seg.synthetic import band_names
    from rs_seg.windows import read_padded

    with rasterio.open(scene) as src:
        pixels = []
        for row in np.linspace(0, max(0, src.height - CHIP), 4).astype(int):
            for col in np.linspace(0, max(0, src.width - CHIP), 4).astype(int):
                image, valid, _ = read_padded(src, Window(int(col), int(row), CHIP, CHIP))
                pixels.append(image[:, valid].astype(np.float64))
        sample = np.concatenate(pixels, axis=1)
        mean, std = sample.mean(axis=1), np.maximum(sample.std(axis=1), 1.0)
        res, crs, count = [abs(v) for v in src.res], src.crs.to_string(), src.count
    torch.manual_seed(0)
    model = ModelConfig(arch=arch, encoder=encoder, task=task)
    net = build_model(model, count, False)
    ModelBundle(
        model=model,
        bands=list(range(1, count + 1)),
        band_names=band_names(count),
        normalization=Normalization(tuple(map(float, mean)), tuple(map(float, std))),
        chip_size=CHIP,
        threshold=0.5,
        pixel_size=res,
        band_count=count,
        crs=crs,
        dtype="uint16",
        nodata=0,
        provenance={"note": "random weights, for throughput benchmarks only"},
        state_dict=net.state_dict(),
    ).save(Path(out), overwrite=True)
    resolved = resolve_device(device)
    return {
        "bundle": out,
        "parameters": sum(p.numel() for p in net.parameters()),
        "normalization": {"mean": list(mean), "std": list(std)},
        "device": str(resolved),
        "device_name": (
            torch.cuda.get_device_name(resolved)
            if resolved.type == "cuda"
            else _harness.cpu_model()
        ),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rs_seg": rs_seg.__version__,
    }


def _cuda_peak(device) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    return {"cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def child_rs_seg(
    scene: str, bundle_path: str, prob: str, device: str, precision: str = "auto"
) -> dict:
    import torch

    from rs_seg.infer.predict import predict_scene
    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.predictor import resolve_device

    bundle = ModelBundle.load(Path(bundle_path))
    resolved = resolve_device(device)
    started = time.perf_counter()
    bundle.build(resolved)  # warm-up: first-use costs of building the network stay out of the run
    build_seconds = time.perf_counter() - started
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
    started, cpu = time.perf_counter(), time.process_time()
    summary = predict_scene(
        Path(scene), bundle, Path(prob), overlap=OVERLAP, batch_size=BATCH, device=device,
        precision=precision,
    )  # fmt: skip
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "summary_seconds": summary.seconds,
        "build_seconds": build_seconds,
        "megapixels": summary.megapixels,
        "windows": summary.windows,
        "skipped_windows": summary.skipped_windows,
        "prob_mb": Path(prob).stat().st_size / 1e6,
        "warnings": summary.compatibility.warnings,
        **_cuda_peak(resolved),
    }


def window_count(height: int, width: int, size: int, overlap: float) -> int:
    """Number of windows rs_seg's grid (``rs_seg.windows``) puts over a scene."""
    from rs_seg.windows import axis_offsets, window_stride

    stride = window_stride(size, overlap)
    return len(axis_offsets(height, size, stride)) * len(axis_offsets(width, size, stride))


def child_bare(
    height: int, width: int, bundle_path: str, device: str, precision: str = "auto"
) -> dict:
    """Forward passes alone for the windows predict_scene runs, on batches already on the device."""
    import torch

    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.predictor import WindowPredictor, resolve_device

    bundle = ModelBundle.load(Path(bundle_path))
    resolved = resolve_device(device)
    predictor = WindowPredictor(bundle, resolved, tta=False, precision=precision)
    windows = window_count(height, width, CHIP, OVERLAP)
    generator = torch.Generator().manual_seed(0)
    pool = [
        torch.randn(BATCH, bundle.in_channels, CHIP, CHIP, generator=generator)
        .to(resolved)
        .contiguous(memory_format=torch.channels_last)
        for _ in range(2)
    ]
    sizes = [BATCH] * (windows // BATCH) + ([windows % BATCH] if windows % BATCH else [])

    @torch.no_grad()
    def forward(images: torch.Tensor) -> torch.Tensor:
        autocast = predictor.autocast
        with torch.autocast(resolved.type, dtype=autocast, enabled=autocast is not None):
            logits = predictor.net(images).float()
        return torch.sigmoid(logits)[:, 0]

    def sync() -> None:
        if resolved.type == "cuda":
            torch.cuda.synchronize(resolved)

    forward(pool[0])  # warm-up (allocator, kernel selection)
    sync()
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
    started, cpu = time.perf_counter(), time.process_time()
    for i, n in enumerate(sizes):
        batch = pool[i % len(pool)]
        forward(batch if n == BATCH else batch[:n])
    sync()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "megapixels": height * width / 1e6,
        "windows": windows,
        "batches": len(sizes),
        **_cuda_peak(resolved),
    }


def child_naive(scene: str, bundle_path: str, out: str, device: str) -> dict:
    """Whole scene in memory, non-overlapping tiles at batch 1, one in-memory probability array."""
    import numpy as np
    import rasterio
    import torch

    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.predictor import resolve_device

    bundle = ModelBundle.load(Path(bundle_path))
    resolved = resolve_device(device)
    model = bundle.build(resolved)
    mean = np.asarray(bundle.normalization.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(bundle.normalization.std, dtype=np.float32)[:, None, None]
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
    started, cpu = time.perf_counter(), time.process_time()
    with rasterio.open(scene) as src:
        image = src.read().astype(np.float32)
        profile = src.profile
    image = (image - mean) / std
    height, width = image.shape[1:]
    pad_h, pad_w = -height % CHIP, -width % CHIP
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)))
    prob = np.zeros(image.shape[1:], dtype=np.float32)
    tiles = 0
    with torch.no_grad():
        for row in range(0, image.shape[1], CHIP):
            for col in range(0, image.shape[2], CHIP):
                tile = torch.from_numpy(image[None, :, row : row + CHIP, col : col + CHIP])
                logits = model(tile.to(resolved))
                prob[row : row + CHIP, col : col + CHIP] = torch.sigmoid(logits)[0, 0].cpu().numpy()
                tiles += 1
    levels = np.round(prob[:height, :width] * 255).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=None)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(levels, 1)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "megapixels": height * width / 1e6,
        "tiles": tiles,
        **_cuda_peak(resolved),
    }


def child_vectorize(prob: str, out: str, scene: str) -> dict:
    try:
        from rs_seg.infer.vectorize import VectorizeSettings, vectorize
        from rs_seg.model.fields import FieldSettings
    except ImportError as exc:
        return {"skipped": f"rs_seg.infer.vectorize not importable: {exc}"}
    import pyogrio  # noqa: F401 - imported when rs_seg writes a layer; timed apart, as before
    import rasterio

    with rasterio.open(prob) as src:
        pixel = float(sum(abs(v) for v in src.res) / 2)
    settings = VectorizeSettings(FieldSettings(threshold=0.5, min_area=MIN_AREA), simplify=pixel)
    started, cpu = time.perf_counter(), time.process_time()
    summary = vectorize(Path(prob), Path(out), settings, scene=Path(scene).name, overwrite=True)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "summary_seconds": summary.seconds,
        "megapixels": summary.megapixels,
        "polygons": summary.polygons,
        "area_ha": summary.area_ha,
        "simplify": pixel,
        "min_area": MIN_AREA,
    }


CHILDREN = {
    "synth": child_synth,
    "bundle": child_bundle,
    "rs_seg": child_rs_seg,
    "bare": child_bare,
    "rs_seg_bf16": child_rs_seg,
    "bare_bf16": child_bare,
    "naive": child_naive,
    "vectorize": child_vectorize,
}


# --- parent --------------------------------------------------------------------------------------


def bf16_unavailable(device: str) -> str | None:
    """Why the bf16 kinds are not run here, or None: they compare CPU fp32 with CPU bf16."""
    from rs_seg.errors import RsSegError
    from rs_seg.model.predictor import autocast_dtype, resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cpu":
        return f"{resolved.type}: rs_seg and bare run bf16 there already (precision auto)"
    try:
        autocast_dtype("bf16", resolved)  # refuses a CPU without native bf16 in oneDNN
    except RsSegError as exc:
        return str(exc)
    return None


def run_child(kind: str, allow_failure: bool = False, **arguments) -> dict:
    """A measurement in a fresh process of this script (``_harness.run_child``)."""
    return _harness.run_child(__file__, kind, arguments, allow_failure=allow_failure)


def machine(model_info: dict) -> dict:
    """The machine, with the torch device and threads the bundle child resolved."""
    keys = ("torch", "torch_threads", "device", "device_name", "rs_seg")
    return _harness.machine(**{key: model_info[key] for key in keys})


def naive_estimate(size: int) -> int:
    """Bytes the naive recipe needs: the float32 scene twice (normalizing) + probabilities."""
    padded = math.ceil(size / CHIP) * CHIP
    return padded * padded * (BANDS * 4 * 2 + 4 + 1) + 600 * 2**20  # + torch and the model


def window_total(size: int) -> int:
    stride = CHIP - round(CHIP * OVERLAP)
    per_axis = 1 if size <= CHIP else math.ceil((size - CHIP) / stride) + 1
    return per_axis * per_axis


def scene_for(size: int, workdir: Path) -> dict:
    data_dir = workdir / f"synth_{size}"
    return _harness.generated(
        data_dir,
        lambda: run_child("synth", size=size, out=str(data_dir)),
        f"[{size}] generating a synthetic {BANDS}-band scene ...",
    )


def summarize(kind: str, runs: list[dict]) -> dict:
    measured = [r for r in runs if "seconds" in r]
    if not measured:
        return {"skipped": runs[0].get("skipped") or runs[0].get("failed") if runs else "not run"}
    rates = [r["megapixels"] / r["seconds"] for r in measured]
    out = {
        "mpx_per_s": statistics.median(rates),
        "seconds": _harness.median_of(measured, "seconds"),
        "cpu_seconds": _harness.median_of(measured, "cpu_seconds"),
        "peak_rss_mb": _harness.peak_of(measured),
        "mpx_per_s_runs": rates,
        "peak_rss_mb_runs": _harness.rss_runs(measured),
    }
    count = {"naive": "tiles"}.get(kind, "windows" if kind.startswith(("rs_seg", "bare")) else None)
    if count:
        out[count] = measured[0][count]
        out[f"{count}_per_s"] = statistics.median(r[count] / r["seconds"] for r in measured)
    if kind == "vectorize":
        out["polygons"] = measured[0]["polygons"]
        out["area_ha"] = measured[0]["area_ha"]
    if any("cuda_peak_mb" in r for r in measured):
        out["cuda_peak_mb"] = max(r.get("cuda_peak_mb", 0) for r in measured)
    return out


def bench_size(size: int, args: argparse.Namespace, repeats: int) -> tuple[dict, dict]:
    scene = scene_for(size, args.workdir)
    run_dir = args.workdir / f"runs_{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    tag = f"{args.arch}-{args.encoder}".replace("/", "_")
    bundle = str(args.workdir / f"synth_{size}" / f"bundle-{tag}.pt")
    model_info = run_child(
        "bundle",
        scene=scene["scene"],
        out=bundle,
        arch=args.arch,
        encoder=args.encoder,
        device=args.device,
    )
    prob = run_dir / "prob.tif"
    kinds = [k for k in KINDS if k in args.kinds]
    if "vectorize" in kinds and "rs_seg" not in kinds:
        raise SystemExit("--kinds vectorize needs rs_seg too (it vectorizes rs_seg's output)")
    skipped: dict[str, str] = {}
    estimate, ram = naive_estimate(size), _harness.memory_bytes()
    if "naive" in kinds and estimate > NAIVE_RAM_FRACTION * ram:
        skipped["naive"] = (
            f"estimated {estimate / 2**30:.1f} GiB > {NAIVE_RAM_FRACTION:.0%} of "
            f"{ram / 2**30:.1f} GiB RAM"
        )
        print(f"[{size}] naive skipped: {skipped['naive']}", flush=True)
    no_bf16 = bf16_unavailable(args.device)
    for kind in BF16_KINDS:
        if kind in kinds and no_bf16:
            skipped[kind] = no_bf16
            print(f"[{size}] {kind} skipped: {no_bf16}", flush=True)
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for attempt in range(1, repeats + 1):  # alternate, so drift on the machine hits all alike
        for kind in kinds:
            if kind in skipped:
                continue
            print(f"[{size}] run {attempt}/{repeats}: {kind} ...", flush=True)
            precision = "bf16" if kind in BF16_KINDS else "auto"
            if kind in ("rs_seg", "rs_seg_bf16"):
                out = prob if kind == "rs_seg" else run_dir / "prob_bf16.tif"
                out.unlink(missing_ok=True)  # removing the old output is not inference
                result = run_child(
                    kind, scene=scene["scene"], bundle_path=bundle, prob=str(out),
                    device=args.device, precision=precision,
                )  # fmt: skip
            elif kind in ("bare", "bare_bf16"):
                result = run_child(
                    kind, height=size, width=size, bundle_path=bundle, device=args.device,
                    precision=precision,
                )  # fmt: skip
            elif kind == "naive":
                out = run_dir / "naive.tif"
                out.unlink(missing_ok=True)
                result = run_child(
                    kind, allow_failure=True, scene=scene["scene"], bundle_path=bundle,
                    out=str(out), device=args.device,
                )  # fmt: skip
                out.unlink(missing_ok=True)
            else:
                result = run_child(
                    kind, prob=str(prob), out=str(run_dir / "fields.gpkg"), scene=scene["scene"]
                )
            runs[kind].append(result)
            if "seconds" in result:
                print(
                    f"[{size}]   {kind}: {result['megapixels'] / result['seconds']:.2f} Mpx/s, "
                    f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            else:
                print(f"[{size}]   {kind}: {result.get('skipped') or result.get('failed')}")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    medians = {k: summarize(k, v) for k, v in runs.items()}
    medians.update({k: {"skipped": why} for k, why in skipped.items()})
    row = {
        "size": size,
        "megapixels": size * size / 1e6,
        "scene_mb": round(Path(scene["scene"]).stat().st_size / 1e6, 1),
        "windows": window_total(size),
        "repeats": repeats,
        "naive_estimated_gib": round(estimate / 2**30, 2),
        "medians": medians,
        "runs": runs,
    }
    ours = medians.get("rs_seg", {})
    # the limit is the fastest bare forward measured: bf16 where this CPU runs it natively
    limits = {k: medians[k]["mpx_per_s"] for k in ("bare", "bare_bf16")
              if "mpx_per_s" in medians.get(k, {})}  # fmt: skip
    if "mpx_per_s" in ours and limits:
        row["limit"] = max(limits, key=lambda k: limits[k])
        row["ratio_rs_seg_vs_bare"] = ours["mpx_per_s"] / limits[row["limit"]]
    for fast, plain in (("bare_bf16", "bare"), ("rs_seg_bf16", "rs_seg")):
        if "mpx_per_s" in medians.get(fast, {}) and "mpx_per_s" in medians.get(plain, {}):
            row[f"bf16_speed_ratio_{plain}"] = (
                medians[fast]["mpx_per_s"] / medians[plain]["mpx_per_s"]
            )
    naive = medians.get("naive", {})
    if "mpx_per_s" in ours and "mpx_per_s" in naive:
        row["speedup_rs_seg_vs_naive"] = ours["mpx_per_s"] / naive["mpx_per_s"]
        row["rss_naive_vs_rs_seg"] = naive["peak_rss_mb"] / ours["peak_rss_mb"]
    return row, model_info


def evaluate_goals(rows: list[dict]) -> list[dict]:
    goals = []
    for row in rows:
        ratio = row.get("ratio_rs_seg_vs_bare")
        if ratio is not None:
            goals.append({
                "goal": f"rs_seg >= {RATIO_GOAL} x the fastest bare forward ({row['limit']}) "
                f"at {row['size']} px",
                "value": round(ratio, 3),
                "met": ratio >= RATIO_GOAL,
            })  # fmt: skip
    with_rss = [r for r in rows if "peak_rss_mb" in r["medians"].get("rs_seg", {})]
    if with_rss:
        largest = max(with_rss, key=lambda r: r["size"])
        peak = largest["medians"]["rs_seg"]["peak_rss_mb"]
        goals.append({
            "goal": f"rs_seg peak RSS at {largest['size']} px <= {RSS_GOAL_MB:.0f} MB",
            "value": round(peak),
            "met": peak <= RSS_GOAL_MB,
        })  # fmt: skip
        smallest = min(with_rss, key=lambda r: r["size"])
        if smallest is not largest:
            growth = peak / smallest["medians"]["rs_seg"]["peak_rss_mb"]
            goals.append({
                "goal": f"rs_seg peak RSS at {largest['size']} px <= {RSS_GROWTH_GOAL} x "
                f"at {smallest['size']} px",
                "value": round(growth, 3),
                "met": growth <= RSS_GROWTH_GOAL,
            })  # fmt: skip
    return goals


STYLE = {
    "bare": ("bare forward (limit)", "#adb5bd"),
    "bare_bf16": ("bare forward, bf16", "#868e96"),
    "rs_seg": ("rs_seg predict_scene", "#2b8a3e"),
    "rs_seg_bf16": ("rs_seg predict_scene, bf16", "#74b816"),
    "naive": ("naive whole-scene recipe", "#e8590c"),
    "vectorize": ("rs_seg vectorize", "#4c6ef5"),
}


def plot(report: dict, path: Path) -> None:
    plt = _harness.pyplot()
    rows = report["rows"]
    order = ("bare", "bare_bf16", "rs_seg", "rs_seg_bf16", "naive", "vectorize")  # limits first
    kinds = [k for k in order if any("mpx_per_s" in r["medians"].get(k, {}) for r in rows)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for panel, key, unit in ((ax1, "mpx_per_s", "{:.2f}"), (ax2, "peak_rss_mb", "{:.0f}")):
        series = []
        for kind in kinds:
            label, color = STYLE[kind]
            series.append((label, [row["medians"].get(kind, {}).get(key) for row in rows], color))
        _harness.grouped_bars(panel, series, value_format=unit)
        panel.set_xticks(range(len(rows)), [f"{r['size']}²" for r in rows])
        panel.set_yscale("log")
    ax1.set(
        ylabel="scene megapixels / s (median)", title="Throughput (bare: equivalent scene Mpx/s)"
    )
    goal = ax2.axhline(RSS_GOAL_MB, color="#c92a2a", linestyle="--", linewidth=1)
    ax2.set(ylabel="peak RSS (MB, log)", title="Peak memory of the process")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(
        [*handles, goal], [*labels, f"rs_seg RSS goal ({RSS_GOAL_MB:.0f} MB)"],
        loc="lower center", ncol=5, fontsize=8, frameon=False,
    )  # fmt: skip
    info = report["machine"]
    fig.suptitle(
        f"Scene inference, {report['model']['arch']}/{report['model']['encoder']}, "
        f"{BANDS}-band uint16 synthetic scenes, {info['device']} ({info['device_name']})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _harness.save_figure(fig, path, dpi=120)


def print_table(report: dict) -> None:
    table = _harness.Table(
        ("size", ">6"), ("kind", "<10"), ("Mpx/s", ">8.3f"), ("s", ">8.1f"), ("windows", ">8"),
        ("peak RSS MB", ">12.0f"),
    )  # fmt: skip
    print("\n" + table.header())
    for row in report["rows"]:
        for kind in KINDS:
            m = row["medians"].get(kind)
            if m is None:
                continue
            if "mpx_per_s" not in m:
                print(f"{table.row(row['size'], kind)} skipped: {m.get('skipped')}")
                continue
            count = m.get("windows", m.get("tiles", m.get("polygons", "")))
            cells = (m["mpx_per_s"], m["seconds"], str(count), m["peak_rss_mb"])
            print(table.row(row["size"], kind, *cells))
        if "ratio_rs_seg_vs_bare" in row:
            print(f"{'':>6} rs_seg / {row['limit']} = {row['ratio_rs_seg_vs_bare']:.3f}")
        for plain in ("bare", "rs_seg"):
            if f"bf16_speed_ratio_{plain}" in row:
                print(f"{'':>6} {plain}: bf16 / fp32 = {row[f'bf16_speed_ratio_{plain}']:.3f}")
    _harness.print_checks(report["goals"], name="goal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_infer"))
    parser.add_argument("--out", type=Path, default=_harness.RESULTS)
    parser.add_argument("--repeats", type=int, default=3, help="runs per size up to 4096 px")
    parser.add_argument("--repeats-large", type=int, default=1, help="runs per larger size")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--arch", default="FPN")
    parser.add_argument("--encoder", default="tu-mobilenetv3_small_050")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in --workdir")
    parser.add_argument("--quick", action="store_true", help="smoke run: --sizes 1024 --repeats 1")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [1024], 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows, model_info = [], {}
    for size in args.sizes:
        repeats = args.repeats if size <= 4096 else args.repeats_large
        row, model_info = bench_size(size, args, repeats)
        rows.append(row)
    report = _harness.report(
        "infer",
        machine(model_info),
        model={
            "arch": args.arch,
            "encoder": args.encoder,
            "parameters": model_info["parameters"],
            "weights": "random (seeded); throughput does not depend on training",
            "chip_size": CHIP,
            "bands": BANDS,
            "overlap": OVERLAP,
            "batch_size": BATCH,
            "normalization": "per-band mean/std of 16 sample windows of each scene",
        },
        timed={
            "rs_seg": "the predict_scene call (scene open, compatibility sample, network rebuild "
            "after a warm-up build, all windows, blending, strip writes, COG copy)",
            "bare": "forward + sigmoid for the same windows in batches of 16 already on the "
            "device, after one warm-up batch",
            "rs_seg_bf16": "as rs_seg, with precision bf16 (CPU autocast)",
            "bare_bf16": "as bare, under bf16 CPU autocast",
            "naive": "whole-scene read + normalize, batch-1 tiles, uint8 GeoTIFF write",
            "vectorize": "the vectorize call on rs_seg's probability COG",
        },
        rows=rows,
    )
    report["goals"] = evaluate_goals(rows)
    report["all_goals_met"] = all(g["met"] for g in report["goals"])
    _harness.write_json(args.out / "infer.json", report)
    plot(report, args.out / "infer.png")
    print_table(report)
    print(f"results: {args.out / 'infer.json'}, {args.out / 'infer.png'}")


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
