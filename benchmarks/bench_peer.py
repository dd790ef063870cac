"""Peer benchmark: rs_seg's scene inference beside geoai-py's ``semantic_segmentation``.

The question: is rs_seg's tiled inference slower, hungrier or different in its results than a
tiled-inference tool users pick instead? The peer is geoai-py
(``geoai.train.semantic_segmentation``, which slides a window over a GeoTIFF, batches the windows
through a segmentation-models-pytorch network, blends overlapping softmax probabilities and writes a
class raster and, when asked, a float32 probability raster). It is installed only for this
benchmark, in its own virtual environment (``--peer-python``, default
``/tmp/peer-venv/bin/python``), never as a dependency of rs_seg; without that interpreter the script
says so and exits without running anything.

For each scene size (default 2048 and 4096 px, 4 bands, uint16; ``bench_infer``'s synthetic
scenes, kept in ``--workdir`` and reused) it builds one random-weights smp bundle
(``bench_infer.child_bundle``: Unet / resnet18 by default, seeded, normalization measured on the
scene; then the head's bias shifted so that the median logit over 4 windows is 0, so that about
half the scene is cropland and the mask comparison at 0.5 is not trivially all-cropland) and
gives both tools the same network, the same input values, window 256, overlap 0.25 (64 px,
stride 192; geoai's ``overlap`` is in pixels), batch 16, CPU, torch's default threads:

* The network. rs_seg's cropland bundle has one logit channel and applies a sigmoid; geoai
  applies a softmax over ``num_classes`` channels (with one channel it would be 1 everywhere).
  The peer gets the same state dict with a second, all-zero channel prepended to the segmentation
  head (weights and bias 0), so its softmax over (0, z) is sigmoid(z): the same function, checked
  on a random batch when the weights are written (``head_check_max_abs``). Saved with
  ``torch.save(state_dict)``, the form geoai's ``torch.load`` + ``load_state_dict`` reads.
* The input. rs_seg z-scores each band with the bundle's mean/std (nodata pixels 0); geoai divides
  raw values by 255 and has no other normalization. The peer therefore reads a pre-normalized
  copy of the scene, float32 ``255 * z`` (nodata pixels 0, exactly as rs_seg feeds them), tiled
  256 px, uncompressed, written once per size by ``rs_seg``'s own normalization code; geoai's
  ``/ 255`` turns it back into z (within one float32 rounding). Writing that copy is timed
  separately (``peer_input.seconds``) and is not in the peer's figures, so the peer is not charged
  for it.

Both run in fresh child processes, alternating (rs_seg then peer, then the other order in the next
repeat, ``--repeats`` default 2):

* ``rs_seg``: ``bench_infer.child_rs_seg``, i.e. ``predict_scene`` at overlap 0.25, batch 16,
  device cpu: strip reads, normalization, the network (channels_last), Hann blending in a rolling
  strip buffer, uint8 levels (nodata 255), tiled GeoTIFF then COG with overviews. Timed: the
  ``predict_scene`` call (after one warm-up build of the network).
* ``peer``: ``geoai.train.semantic_segmentation(input, mask, weights, architecture, encoder_name,
  num_channels=4, num_classes=2, window_size=256, overlap=64, batch_size=16, device=cpu,
  probability_path=..., quiet=True)`` in the peer's interpreter (torchvision's two op schemas are
  declared first where its compiled ops do not load, as ``rs_seg.torchvision_shim`` does). Timed:
  that call, which builds the network, loads the weights, runs every window, blends, takes the
  argmax and writes the uint8 class raster and the 2-band float32 probability raster.

Throughput is scene megapixels / timed seconds, the median of the runs; ``wall_seconds`` is the
whole child process (interpreter start and imports included); peak RSS is ``ru_maxrss`` from
``wait4`` (the largest over the runs), and ``rss_after_imports_mb`` the child's own ``ru_maxrss``
once its libraries are imported, before the timed call. Agreement (one child per size, on the last
run's outputs, over the pixels rs_seg marks valid): rs_seg's levels (band 1, ``round(p * 255)``
clipped to 254) against the peer's class-1 probability, as mean and max absolute difference in
probability units and in levels (the peer's probability rounded to levels the same way), over all
pixels, over pixels covered by a single window of the grid (where blending cannot matter, so this
isolates input and network: it should be rounding only) and over pixels in overlaps (where the
two blending weights differ); and the cropland masks at threshold 0.5 (rs_seg: level >=
``threshold_to_level(0.5)``; the peer: its probability >= 0.5, and its own argmax raster) as pixel
agreement and IoU of the cropland class. Results go to ``benchmarks/results/peer.json``.

    python benchmarks/bench_peer.py [--sizes 2048 4096] [--repeats 2] [--peer-python PATH]
    python benchmarks/bench_peer.py --quick     # smoke run: one 1024 px scene, one repeat
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness
import bench_infer  # stdlib and _harness only at import: the peer's interpreter can load it too

CHIP = bench_infer.CHIP  # 256
OVERLAP = bench_infer.OVERLAP  # 0.25
OVERLAP_PX = round(CHIP * OVERLAP)  # geoai's overlap is in pixels: 64
BATCH = bench_infer.BATCH  # 16
BANDS = bench_infer.BANDS  # 4
THRESHOLD = 0.5
PEER_PYTHON = Path("/tmp/peer-venv/bin/python")
PEER_PACKAGES = ("geoai-py", "torch", "torchvision", "segmentation-models-pytorch", "rasterio")


def _rss_now_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- children (rs_seg's interpreter) -------------------------------------------------------------


def child_bundle(scene: str, out: str, arch: str, encoder: str) -> dict:
    """``bench_infer.child_bundle``, then the head's bias shifted so the median logit is 0.

    A random network's probabilities centre anywhere (one seed gave 0.80, 99.8 % cropland), so
    masks at 0.5 would agree trivially; centred, about half the scene is cropland and every pixel
    whose probability the blending moves across 0.5 shows up in the mask agreement. Both tools get
    the shifted weights. The median is over the valid pixels of 4 windows (rs_seg's normalization).
    """
    import dataclasses

    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.predictor import WindowPredictor
    from rs_seg.windows import read_padded

    info = bench_infer.child_bundle(scene, out, arch, encoder, device="cpu")
    bundle = ModelBundle.load(Path(out))
    predictor = WindowPredictor(bundle, torch.device("cpu"), tta=False)
    logits = []
    with rasterio.open(scene) as src, torch.no_grad():
        for offset in np.linspace(0, max(0, src.height - CHIP), 4).astype(int):
            image, valid, _ = read_padded(src, Window(int(offset), int(offset), CHIP, CHIP))
            x = torch.from_numpy(predictor.normalize(image, valid)[None])
            logits.append(predictor.net(x)[0, 0].numpy()[valid])
    median = float(np.median(np.concatenate(logits)))
    (key,) = [
        k
        for k, v in bundle.state_dict.items()
        if k.startswith("segmentation_head") and k.endswith("bias") and v.shape == (1,)
    ]
    state = dict(bundle.state_dict)
    state[key] = state[key] - median
    dataclasses.replace(bundle, state_dict=state).save(Path(out), overwrite=True)
    return {**info, "head_bias_shift": -median, "head_bias_key": key}


def child_peer_input(
    scene: str, bundle_path: str, out_scene: str, out_weights: str, arch: str, encoder: str
) -> dict:
    """The peer's inputs: the scene as float32 255 * z, and the weights as a 2-class state dict."""
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import Window

    from rs_seg.model.bundle import ModelBundle
    from rs_seg.model.predictor import WindowPredictor
    from rs_seg.windows import read_padded

    bundle = ModelBundle.load(Path(bundle_path))
    predictor = WindowPredictor(bundle, torch.device("cpu"), tta=False)  # rs_seg's normalize()
    started = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = {
            "driver": "GTiff", "width": src.width, "height": src.height, "count": len(bundle.bands),
            "dtype": "float32", "crs": src.crs, "transform": src.transform, "tiled": True,
            "blockxsize": CHIP, "blockysize": CHIP, "compress": None, "bigtiff": "IF_SAFER",
        }  # fmt: skip
        with rasterio.open(out_scene, "w", **profile) as dst:
            for row in range(0, src.height, CHIP):
                rows = min(CHIP, src.height - row)
                image, valid, _ = read_padded(src, Window(0, row, src.width, rows))
                z = predictor.normalize(image, valid)  # nodata pixels are 0, as rs_seg feeds them
                dst.write(
                    (z * np.float32(255)).astype(np.float32), window=Window(0, row, src.width, rows)
                )
    input_seconds = time.perf_counter() - started

    # the same network with a zero logit prepended: softmax(0, z)[1] == sigmoid(z)
    # (smp imported only now, after rs_seg, whose torchvision fix must come first)
    import segmentation_models_pytorch as smp

    one = bundle.state_dict
    two_net = smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, in_channels=len(bundle.bands), classes=2
    )
    two = two_net.state_dict()
    changed = []
    for key, value in two.items():
        if one[key].shape == value.shape:
            two[key] = one[key].clone()
            continue
        if not key.startswith("segmentation_head") or one[key].shape[0] != 1:
            raise SystemExit(
                f"unexpected shape difference at {key}: {one[key].shape} {value.shape}"
            )
        widened = torch.zeros_like(value)
        widened[1:] = one[key]
        two[key] = widened
        changed.append(key)
    two_net.load_state_dict(two)
    two_net.eval()
    net = bundle.build(torch.device("cpu")).eval()
    with torch.no_grad():
        x = torch.randn(
            2, len(bundle.bands), CHIP, CHIP, generator=torch.Generator().manual_seed(1)
        )
        check = (torch.softmax(two_net(x), 1)[:, 1] - torch.sigmoid(net(x))[:, 0]).abs().max()
    torch.save(two, out_weights)
    return {
        "seconds": input_seconds,
        "scene_mb": round(Path(out_scene).stat().st_size / 1e6, 1),
        "widened_keys": changed,
        "head_check_max_abs": float(check),
    }


def child_rs_seg(scene: str, bundle_path: str, prob: str) -> dict:
    """``bench_infer.child_rs_seg`` on the CPU, with the footprint of the imports beside it."""
    import torch

    import rs_seg.infer.predict  # noqa: F401 - imported before the RSS reading, as the peer's are

    rss = _rss_now_mb()
    result = bench_infer.child_rs_seg(scene, bundle_path, prob, device="cpu")
    result.update(rss_after_imports_mb=rss, torch_threads=torch.get_num_threads())
    return result


def _coverage(length: int) -> np.ndarray:  # noqa: F821 - numpy imported by the caller
    """How many windows of rs_seg's grid cover each index (the peer's grid, less its repeat)."""
    import numpy as np

    from rs_seg.windows import axis_offsets, window_stride

    count = np.zeros(length, dtype=np.int32)
    for start in axis_offsets(length, CHIP, window_stride(CHIP, OVERLAP)):
        count[start : start + CHIP] += 1
    return count


def child_agree(prob: str, peer_prob: str, peer_mask: str) -> dict:
    """rs_seg's levels against the peer's probabilities and mask, on rs_seg's valid pixels."""
    import numpy as np
    import rasterio

    from rs_seg.levels import MAX_LEVEL, NODATA_LEVEL, threshold_to_level

    with rasterio.open(prob) as src:
        levels = src.read(1)
    with rasterio.open(peer_prob) as src:
        p_peer = src.read(2)  # class 1 = softmax(0, z)[1] = sigmoid(z)
    with rasterio.open(peer_mask) as src:
        argmax_peer = src.read(1) == 1
    valid = levels != NODATA_LEVEL
    height, width = levels.shape
    rows, cols = _coverage(height), _coverage(width)
    single = (rows[:, None] == 1) & (cols[None, :] == 1)
    peer_levels = np.rint(np.clip(p_peer * 255, 0, MAX_LEVEL)).astype(np.int16)
    level_diff = np.abs(levels.astype(np.int16) - peer_levels)
    prob_diff = np.abs(levels.astype(np.float32) / 255 - p_peer)

    def stats(where: np.ndarray) -> dict:
        if not where.any():
            return {"pixels": 0}
        return {
            "pixels": int(where.sum()),
            "mean_abs_diff": float(prob_diff[where].mean()),
            "max_abs_diff": float(prob_diff[where].max()),
            "mean_abs_level_diff": float(level_diff[where].mean()),
            "max_abs_level_diff": int(level_diff[where].max()),
            "equal_level_fraction": float((level_diff[where] == 0).mean()),
            "within_1_level_fraction": float((level_diff[where] <= 1).mean()),
        }

    ours = levels >= threshold_to_level(THRESHOLD)

    def masks(peer: np.ndarray) -> dict:
        a, b = ours[valid], peer[valid]
        union = int((a | b).sum())
        return {
            "pixel_agreement": float((a == b).mean()),
            "iou_cropland": float((a & b).sum() / union) if union else 1.0,
            "cropland_fraction_rs_seg": float(a.mean()),
            "cropland_fraction_peer": float(b.mean()),
        }

    p_ours = levels[valid].astype(np.float32) / 255
    return {
        "valid_fraction": float(valid.mean()),
        "prob_mean_rs_seg": float(p_ours.mean()),
        "prob_std_rs_seg": float(p_ours.std()),
        "prob_mean_peer": float(p_peer[valid].mean()),
        "probability": {
            "all": stats(valid),
            "single_window": stats(valid & single),
            "overlaps": stats(valid & ~single),
        },
        "mask_threshold": masks(p_peer >= THRESHOLD),
        "mask_argmax": masks(argmax_peer),
    }


# --- child (the peer's interpreter) --------------------------------------------------------------


def _declare_torchvision_ops() -> None:
    """Where torchvision's compiled ops cannot load against a CPU torch, declare nms/qnms.

    The same fix as ``rs_seg.torchvision_shim`` (see ``../shared/notes/environment.md``),
    inlined because rs_seg is not installed in the peer's environment; a no-op where torchvision
    works.
    """
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec and spec.submodule_search_locations:
        for lib in Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"):
            with contextlib.suppress(OSError, RuntimeError):
                torch.ops.load_library(str(lib))
    try:
        torch.ops.torchvision.nms  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    global _TORCHVISION_LIBRARY
    _TORCHVISION_LIBRARY = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        _TORCHVISION_LIBRARY.define(
            f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        )


_TORCHVISION_LIBRARY = None  # kept alive, or the definitions go again


def child_peer(scene: str, weights: str, mask: str, prob: str, arch: str, encoder: str) -> dict:
    """Geoai's semantic_segmentation on the pre-normalized scene (the peer's interpreter)."""
    import importlib.metadata

    import rasterio
    import torch

    _declare_torchvision_ops()
    from geoai.train import semantic_segmentation

    rss = _rss_now_mb()
    with rasterio.open(scene) as src:
        height, width, count = src.height, src.width, src.count
    started, cpu = time.perf_counter(), time.process_time()
    semantic_segmentation(
        input_path=scene, output_path=mask, model_path=weights, architecture=arch,
        encoder_name=encoder, num_channels=count, num_classes=2, window_size=CHIP,
        overlap=OVERLAP_PX, batch_size=BATCH, device=torch.device("cpu"),
        probability_path=prob, quiet=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    # geoai's loop: range(steps + 1) positions per axis, the last one clamped (so repeated)
    steps = [math.ceil((n - OVERLAP_PX) / (CHIP - OVERLAP_PX)) + 1 for n in (height, width)]
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "megapixels": height * width / 1e6,
        "windows": steps[0] * steps[1],
        "rss_after_imports_mb": rss,
        "torch_threads": torch.get_num_threads(),
        "prob_mb": Path(prob).stat().st_size / 1e6,
        "mask_mb": Path(mask).stat().st_size / 1e6,
        "versions": {name: importlib.metadata.version(name) for name in PEER_PACKAGES},
    }


CHILDREN = {
    "synth": bench_infer.child_synth,
    "bundle": child_bundle,
    "peer_input": child_peer_input,
    "rs_seg": child_rs_seg,
    "agree": child_agree,
    "peer": child_peer,
}


# --- parent --------------------------------------------------------------------------------------


def run_child(kind: str, **arguments) -> dict:
    """A measurement in a fresh process of rs_seg's interpreter (``_harness.run_child``)."""
    return _harness.run_child(__file__, kind, arguments)


def run_peer(peer_python: Path, **arguments) -> dict:
    """The peer's child in a fresh process of the peer's interpreter, measured the same way."""
    command = [str(peer_python), str(Path(__file__).resolve()), "--child", "peer",
               json.dumps(arguments)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of rs_seg's
    env["HF_HUB_OFFLINE"] = "1"
    finished = _harness.run_process(command, env=env)
    result = finished.last_json()
    result["wall_seconds"] = finished.wall_seconds
    result["peak_rss_mb"] = finished.peak_rss_mb
    return result


def summarize(runs: list[dict]) -> dict:
    rates = [r["megapixels"] / r["seconds"] for r in runs]
    return {
        "mpx_per_s": statistics.median(rates),
        # less disturbed by other work on the machine than the clock
        "mpx_per_cpu_s": statistics.median(r["megapixels"] / r["cpu_seconds"] for r in runs),
        "load_average_max": max(r["load_average"] for r in runs),
        "seconds": _harness.median_of(runs, "seconds"),
        "cpu_seconds": _harness.median_of(runs, "cpu_seconds"),
        "wall_seconds": _harness.median_of(runs, "wall_seconds"),
        "peak_rss_mb": _harness.peak_of(runs),
        "rss_after_imports_mb": _harness.median_of(runs, "rss_after_imports_mb"),
        "windows": runs[0]["windows"],
        "torch_threads": runs[0]["torch_threads"],
        "mpx_per_s_runs": rates,
        "peak_rss_mb_runs": _harness.rss_runs(runs),
    }


def bench_size(size: int, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    scene = bench_infer.scene_for(size, args.workdir)  # generates with bench_infer's child
    data = args.workdir / f"synth_{size}"
    tag = f"{args.arch}-{args.encoder}".replace("/", "_")
    bundle = str(data / f"bundle-{tag}.pt")
    model_info = run_child(
        "bundle", scene=scene["scene"], out=bundle, arch=args.arch, encoder=args.encoder
    )
    peer_scene, weights = data / f"peer-input-{tag}.tif", data / f"peer-weights-{tag}.pth"
    print(f"[{size}] writing the peer's pre-normalized scene and 2-class weights ...", flush=True)
    peer_input = run_child(
        "peer_input", scene=scene["scene"], bundle_path=bundle, out_scene=str(peer_scene),
        out_weights=str(weights), arch=args.arch, encoder=args.encoder,
    )  # fmt: skip
    run_dir = args.workdir / f"runs_{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    prob, peer_prob, peer_mask = (
        run_dir / "prob.tif",
        run_dir / "peer_prob.tif",
        run_dir / "peer_mask.tif",
    )
    runs: dict[str, list[dict]] = {"rs_seg": [], "peer": []}
    for attempt in range(1, args.repeats + 1):
        order = (
            ("rs_seg", "peer") if attempt % 2 else ("peer", "rs_seg")
        )  # alternate who goes first
        for kind in order:
            print(f"[{size}] run {attempt}/{args.repeats}: {kind} ...", flush=True)
            load = os.getloadavg()[0]
            if kind == "rs_seg":
                prob.unlink(missing_ok=True)
                result = run_child(
                    "rs_seg", scene=scene["scene"], bundle_path=bundle, prob=str(prob)
                )
            else:
                peer_prob.unlink(missing_ok=True)
                peer_mask.unlink(missing_ok=True)
                result = run_peer(
                    args.peer_python, scene=str(peer_scene), weights=str(weights),
                    mask=str(peer_mask), prob=str(peer_prob), arch=args.arch, encoder=args.encoder,
                )  # fmt: skip
            result["load_average"] = load
            runs[kind].append(result)
            print(
                f"[{size}]   {kind}: {result['megapixels'] / result['seconds']:.2f} Mpx/s, "
                f"{result['seconds']:.1f} s ({result['wall_seconds']:.1f} s wall), "
                f"peak RSS {result['peak_rss_mb']:.0f} MB, load {load:.2f}",
                flush=True,
            )
    agreement = run_child(
        "agree", prob=str(prob), peer_prob=str(peer_prob), peer_mask=str(peer_mask)
    )
    agreement.pop("wall_seconds", None)
    agreement.pop("peak_rss_mb", None)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    medians = {kind: summarize(kind_runs) for kind, kind_runs in runs.items()}
    ours, peer = medians["rs_seg"], medians["peer"]
    row = {
        "size": size,
        "megapixels": size * size / 1e6,
        "scene_mb": round(Path(scene["scene"]).stat().st_size / 1e6, 1),
        "repeats": args.repeats,
        "peer_input": {k: v for k, v in peer_input.items() if k not in ("wall_seconds",)},
        "medians": medians,
        "speedup_rs_seg_vs_peer": ours["mpx_per_s"] / peer["mpx_per_s"],
        "rss_peer_vs_rs_seg": peer["peak_rss_mb"] / ours["peak_rss_mb"],
        "agreement": agreement,
        "runs": runs,
    }
    return row, model_info, runs["peer"][-1]["versions"]


def print_table(report: dict) -> None:
    table = _harness.Table(
        ("size", ">6"), ("tool", "<8"), ("Mpx/s", ">7.3f"), ("s", ">7.1f"), ("wall s", ">7.1f"),
        ("windows", ">8"), ("peak RSS MB", ">12.0f"), ("after imports", ">14.0f"),
    )  # fmt: skip
    print("\n" + table.header())
    for row in report["rows"]:
        for kind in ("rs_seg", "peer"):
            m = row["medians"][kind]
            print(table.row(
                row["size"], kind, m["mpx_per_s"], m["seconds"], m["wall_seconds"],
                str(m["windows"]), m["peak_rss_mb"], m["rss_after_imports_mb"],
            ))  # fmt: skip
        a = row["agreement"]
        p = a["probability"]
        print(
            f"{'':>6} rs_seg/peer speed {row['speedup_rs_seg_vs_peer']:.2f}x, peer/rs_seg RSS "
            f"{row['rss_peer_vs_rs_seg']:.2f}x; |dp| mean {p['all']['mean_abs_diff']:.4f} "
            f"(single-window {p['single_window'].get('mean_abs_diff', float('nan')):.4f}, "
            f"overlaps {p['overlaps'].get('mean_abs_diff', float('nan')):.4f}); mask agreement "
            f"{a['mask_threshold']['pixel_agreement']:.4f}, "
            f"IoU {a['mask_threshold']['iou_cropland']:.4f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs_seg_bench_peer"))
    parser.add_argument("--out", type=Path, default=_harness.RESULTS)
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--keep", action="store_true", help="keep the outputs in --workdir")
    parser.add_argument("--quick", action="store_true", help="smoke run: --sizes 1024 --repeats 1")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats = [1024], 1
    if not args.peer_python.exists():
        print(
            f"peer interpreter {args.peer_python} not found: nothing to compare, nothing run. "
            "Make one with: python3.11 -m venv /tmp/peer-venv && /tmp/peer-venv/bin/pip install "
            "-c constraints-base.txt geoai-py"
        )
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows, model_info, versions = [], {}, {}
    for size in args.sizes:
        row, model_info, versions = bench_size(size, args)
        rows.append(row)
    import rs_seg  # the checkout that ran (PYTHONPATH may point at a clean worktree)

    report = _harness.report(
        "peer",
        bench_infer.machine(model_info),
        rs_seg_source=str(Path(rs_seg.__file__).parent.parent),
        peer={
            "python": str(args.peer_python),
            "versions": versions,
            "function": "geoai.train.semantic_segmentation",
        },
        model={
            "arch": args.arch,
            "encoder": args.encoder,
            "parameters": model_info["parameters"],
            "weights": "random (seeded), head bias shifted so the median logit on the scene is 0 "
            "(about half cropland); the peer gets the same weights with a zero logit prepended "
            "to the head (softmax(0, z)[1] = sigmoid(z))",
            "head_bias_shift": model_info["head_bias_shift"],
            "window": CHIP,
            "overlap": OVERLAP,
            "overlap_px": OVERLAP_PX,
            "batch_size": BATCH,
            "bands": BANDS,
            "device": "cpu",
            "normalization": "bundle mean/std (16 sample windows of the scene); rs_seg applies "
            "it itself, the peer reads a float32 copy holding 255 * z (geoai divides by 255)",
        },
        timed={
            "rs_seg": "the predict_scene call (network rebuild, all windows, Hann blending, strip "
            "writes, COG copy with overviews)",
            "peer": "the geoai semantic_segmentation call (network build, weight load, all "
            "windows, blending, argmax, uint8 class GeoTIFF + 2-band float32 probability GeoTIFF)",
            "peer_input": "writing the pre-normalized float32 scene, once per size, not in the "
            "peer's figures",
        },
        rows=rows,
    )
    _harness.write_json(args.out / "peer.json", report)
    print_table(report)
    print(f"results: {args.out / 'peer.json'}")
    return 0


if __name__ == "__main__":
    _harness.entry(main, CHILDREN)
