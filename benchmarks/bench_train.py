"""Training-throughput benchmark: rs_seg's training loop against the bare model train step.

Both sides train the same network (Unet/resnet18 by default, 256 px chips, batch 8, channels_last,
fp32 or bf16 autocast with ``--precision bf16-mixed``) on the same synthetic chips, alternating in
one process so they see the same machine state:

* ``bare``: the lower bound: batches already normalized and in memory; each step is forward,
  BCE + Dice loss, backward and an AdamW step, nothing else.
* ``rs_seg``: ``lightning.Trainer.fit`` with :class:`rs_seg.train.module.CroplandModule` and
  :class:`rs_seg.train.dataset.ChipDataModule` as ``rs-seg train`` builds them (chips decoded once
  into the chip cache, normalized, flipped and rotated by albumentations, batched by the
  DataLoader, Lightning's loop, logging and LR schedule). The data pipeline alone is timed too,
  from the cache and from the chip files.
  Only the training epoch is timed (from the first to the last batch), not trainer set-up.

Overhead is ``1 - rs_seg / bare`` in chips per second, the median of ``--repeats`` alternating
pairs. Results: ``benchmarks/results/train.json`` and ``train.png``.

    python benchmarks/bench_train.py [--batches 12] [--repeats 3] [--encoder resnet18]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import _harness

import rs_seg  # noqa: F401 - arms the torchvision shim


def make_chips(workdir: Path) -> Path:
    from rs_seg.config import PrepareConfig, SplitConfig, SynthConfig
    from rs_seg.prepare.run import prepare
    from rs_seg.synthetic import generate_scenes

    scenes = generate_scenes(
        SynthConfig(out=workdir / "synth", size=2048, bands=4, seed=5, scenes=3)
    )
    cfg = PrepareConfig(
        scenes=[str(p) for p in scenes.scenes],
        labels=scenes.labels,
        out=workdir / "chips",
        split=SplitConfig(method="random", seed=0),
    )
    return prepare(cfg).out


def build(chips: Path, encoder: str, batch: int, workers: int, cache: Path | None):
    """Data module and network as ``rs-seg train`` builds them (chip cache in ``cache``)."""
    from rs_seg.config import AugmentConfig, LossConfig, ModelConfig, OptimizerConfig
    from rs_seg.train.chip_cache import training_caches
    from rs_seg.train.dataset import ChipDataModule, band_statistics, load_chip_splits
    from rs_seg.train.module import CroplandModule

    splits = load_chip_splits(chips)
    norm = band_statistics(splits.paths("train")[0], splits.bands)
    caches = training_caches(splits, True, cache) if cache else None
    data = ChipDataModule(splits, norm, AugmentConfig(), batch, workers, seed=0, caches=caches)
    module = CroplandModule(
        model=ModelConfig(encoder=encoder).model_dump(mode="json"),
        in_channels=len(splits.bands),
        loss=LossConfig().model_dump(),
        optimizer=OptimizerConfig(warmup_epochs=0).model_dump(),
    )
    return data, module


def bare_steps(data, module, batches: int, precision: str = "32-true") -> float:
    """Chips per second of forward + loss + backward + AdamW on batches already in memory.

    ``bf16-mixed``: the forward pass and the loss under CPU autocast, as Lightning runs them.
    """
    import torch

    from rs_seg.train.module import task_loss

    loader = iter(data.train_dataloader())
    cached = [next(loader) for _ in range(batches)]
    net = module.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step(images, target):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = net(images.contiguous(memory_format=torch.channels_last))
            loss = task_loss(logits, target, module.loss_cfg)  # the loss training uses
        loss.backward()
        optimizer.step()

    step(*cached[0])  # warm-up (allocator, kernels)
    started = time.perf_counter()
    for images, target in cached:
        step(images, target)
    return sum(len(images) for images, _ in cached) / (time.perf_counter() - started)


class EpochClock:
    """Lightning callback timing the training batches of one epoch (set-up excluded)."""

    def __new__(cls):
        import lightning as L

        class _Clock(L.Callback):
            def __init__(self) -> None:
                self.first = self.last = 0.0
                self.chips = 0

            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                if batch_idx == 1:  # the first batch warms up like the bare loop's extra step
                    self.first = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                if batch_idx >= 1:
                    self.chips += len(batch[0])
                    self.last = time.perf_counter()

        return _Clock()


def rs_seg_fit(data, module, batches: int, precision: str = "32-true") -> float:
    """Chips per second of rs_seg's Lightning training loop reading chips from disk."""
    import lightning as L

    clock = EpochClock()
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=1,
        limit_train_batches=batches + 1,
        limit_val_batches=0,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    return clock.chips / (clock.last - clock.first)


def loader_only(data, batches: int) -> float:
    """Chips per second of the data pipeline alone (read, normalize, augment, collate)."""
    loader = iter(data.train_dataloader())
    next(loader)
    started = time.perf_counter()
    chips = sum(len(next(loader)[0]) for _ in range(batches))
    return chips / (time.perf_counter() - started)


def plot(result: dict, path: Path) -> None:
    plt = _harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = ["bare train step", "rs_seg training loop", "data pipeline alone"]
    values = [
        result["bare_chips_per_s"],
        result["rs_seg_chips_per_s"],
        result["loader_chips_per_s"],
    ]
    ax.barh(names, values, color=["#888888", "#2b8a3e", "#4c6ef5"])
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center")
    ax.set_xlabel("chips per second (median)")
    ax.set_title(
        f"Training throughput, {result['model']}, batch {result['batch_size']}, "
        f"{result['precision']}: "
        f"overhead {result['overhead_percent']:.1f} %",
        fontsize=9,
    )
    ax.set_xlim(0, max(values) * 1.25)
    fig.tight_layout()
    _harness.save_figure(fig, path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for rs_seg")
    parser.add_argument(
        "--precision", choices=["32-true", "bf16-mixed"], default="32-true",
        help="bf16-mixed: CPU autocast on both sides (results in train_bf16-mixed.json)",
    )  # fmt: skip
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="rs_seg_bench_train_") as tmp:
        chips = make_chips(Path(tmp))
        bare, ours, loader, files = [], [], [], []
        cache = Path(tmp) / "run"
        for repeat in range(args.repeats):
            data, module = build(chips, args.encoder, args.batch_size, args.workers, None)
            bare.append(bare_steps(data, module, args.batches, args.precision))
            files.append(loader_only(data, args.batches))
            data, module = build(chips, args.encoder, args.batch_size, args.workers, cache)
            ours.append(rs_seg_fit(data, module, args.batches, args.precision))
            loader.append(loader_only(data, args.batches))
            print(
                f"repeat {repeat + 1}: bare {bare[-1]:.2f}, rs_seg {ours[-1]:.2f}, "
                f"loader alone {loader[-1]:.1f} chips/s (from the chip files {files[-1]:.1f})",
                flush=True,
            )
    result = _harness.report(
        "train",
        _harness.machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device="cpu",
        model=f"Unet/{args.encoder}",
        chip_size=256,
        bands=4,
        batch_size=args.batch_size,
        precision=args.precision,
        batches_timed=args.batches,
        repeats=args.repeats,
        bare_runs=bare,
        rs_seg_runs=ours,
        loader_runs=loader,
        loader_files_runs=files,
        bare_chips_per_s=statistics.median(bare),
        rs_seg_chips_per_s=statistics.median(ours),
        loader_chips_per_s=statistics.median(loader),
        loader_files_chips_per_s=statistics.median(files),
    )
    result["overhead_percent"] = 100 * (
        1 - result["rs_seg_chips_per_s"] / result["bare_chips_per_s"]
    )
    name = "train" if args.precision == "32-true" else f"train_{args.precision}"
    _harness.write_json(_harness.RESULTS / f"{name}.json", result)
    plot(result, _harness.RESULTS / f"{name}.png")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=2))


if __name__ == "__main__":
    main()
