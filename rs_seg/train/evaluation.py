"""Evaluation: pixel metrics, the decision threshold, per-chip scores on the test split.

Probabilities are quantized to 0-255 before thresholding, exactly as the probability rasters of
scene inference store them, so the threshold tuned here means the same thing on a saved raster.
The threshold is the one with the best mean IoU (cropland and background) on the validation split:
tuning cropland IoU alone rewards painting everything cropland in cropland-rich regions.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryStatScores

from rs_seg.bundle import BUNDLE_FILE, ModelBundle, now_iso, package_versions, weights_id
from rs_seg.config import MASK_IGNORE, TrainConfig
from rs_seg.errors import RsSegError
from rs_seg.levels import LEVELS, level_to_threshold, threshold_to_level
from rs_seg.staging import staged_dir, write_json
from rs_seg.train.dataset import (
    ChipDataModule,
    ChipDataset,
    ChipSplits,
    Normalization,
    chip_metadata,
    load_chip_splits,
    read_chip,
)
from rs_seg.train.report import ChipExample, write_report

log = logging.getLogger(__name__)

METRIC_NAMES = (
    "cropland_iou", "background_iou", "mean_iou", "f1", "precision", "recall", "accuracy",
)  # fmt: skip


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def metrics_from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    """All reported pixel metrics from one confusion matrix (cropland = positive class)."""
    cropland_iou = _ratio(tp, tp + fp + fn)
    background_iou = _ratio(tn, tn + fn + fp)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "cropland_iou": cropland_iou,
        "background_iou": background_iou,
        "mean_iou": float(np.nanmean([cropland_iou, background_iou]))
        if not (math.isnan(cropland_iou) and math.isnan(background_iou))
        else math.nan,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
    }


def quantize(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities in [0, 1] -> uint8 levels 0-255, as the probability rasters store them."""
    return torch.round(probabilities.float().clamp(0, 1) * 255).to(torch.uint8)


class ThresholdSweep:
    """Confusion matrices for every uint8 threshold at once, from two 256-bin histograms."""

    def __init__(self) -> None:
        self.positive = torch.zeros(LEVELS, dtype=torch.float64)
        self.negative = torch.zeros(LEVELS, dtype=torch.float64)

    def update(self, levels: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of quantized probabilities and 0/1/255 targets."""
        levels, target = levels.cpu().long(), target.cpu()
        valid = target != MASK_IGNORE
        crop = valid & (target == 1)
        self.positive += torch.bincount(levels[crop], minlength=LEVELS).double()
        self.negative += torch.bincount(levels[valid & ~crop], minlength=LEVELS).double()

    def counts(self, level: int) -> tuple[float, float, float, float]:
        """(tp, fp, tn, fn) when pixels at ``level`` or above are called cropland."""
        tp = float(self.positive[level:].sum())
        fp = float(self.negative[level:].sum())
        return tp, fp, float(self.negative.sum()) - fp, float(self.positive.sum()) - tp

    def best_level(self) -> int:
        """The level (1-255) with the best mean IoU; ties go to the level nearest the middle."""
        pos_above = self.positive.flip(0).cumsum(0).flip(0)
        neg_above = self.negative.flip(0).cumsum(0).flip(0)
        tp, fp = pos_above[1:], neg_above[1:]
        fn, tn = self.positive.sum() - tp, self.negative.sum() - fp
        crop = tp / (tp + fp + fn).clamp(min=1)
        back = tn / (tn + fn + fp).clamp(min=1)
        score = (crop + back) / 2
        best = score.max()
        candidates = torch.nonzero(score >= best - 1e-12).flatten() + 1
        return int(candidates[torch.argmin((candidates - 128).abs())])


@dataclass
class Batch:
    """Predictions of one batch with their targets and positions in the dataset."""

    levels: torch.Tensor  # (N, H, W) uint8
    target: torch.Tensor  # (N, H, W) uint8
    start: int


@torch.no_grad()
def predict_levels(
    model: nn.Module,
    dataset: ChipDataset,
    device: torch.device,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> Iterator[Batch]:
    """Quantized cropland probabilities for every chip of ``dataset``, batch by batch."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for images, target in loader:
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        yield Batch(quantize(torch.sigmoid(logits.float()[:, 0])).cpu(), target, start)
        start += len(images)


def sweep(batches: Iterator[Batch]) -> ThresholdSweep:
    """Collect the threshold histograms over all batches (validation)."""
    result = ThresholdSweep()
    for batch in batches:
        result.update(batch.levels, batch.target)
    return result


@dataclass
class SplitScores:
    """Pixel metrics of a split at one threshold, plus per-chip scores."""

    metrics: dict[str, float]
    chips: pd.DataFrame


def score_split(batches: Iterator[Batch], level: int, chip_ids: list[str]) -> SplitScores:
    """Metrics over all pixels and per chip, with torchmetrics' stat scores at ``level``."""
    stats = BinaryStatScores(ignore_index=MASK_IGNORE, multidim_average="samplewise")
    rows = []
    for batch in batches:
        predicted = (batch.levels >= level).long()
        # (N, 5): tp fp tn fn support; torchmetrics drops the batch axis when N == 1
        counts = stats(predicted, batch.target.long()).reshape(-1, 5)
        for offset, (tp, fp, tn, fn, _) in enumerate(counts.tolist()):
            chip = metrics_from_counts(tp, fp, tn, fn)
            rows.append(
                {
                    "chip_id": chip_ids[batch.start + offset],
                    "iou": chip["cropland_iou"],
                    "mean_iou": chip["mean_iou"],
                    "label_fraction": _ratio(tp + fn, tp + fp + tn + fn),
                    "predicted_fraction": _ratio(tp + fp, tp + fp + tn + fn),
                    "tp": tp,
                    "fp": fp,
                    "tn": tn,
                    "fn": fn,
                }
            )
    table = pd.DataFrame(rows)
    totals = (
        table[["tp", "fp", "tn", "fn"]].sum() if rows else pd.Series(0, ["tp", "fp", "tn", "fn"])
    )
    metrics = metrics_from_counts(*(float(totals[k]) for k in ("tp", "fp", "tn", "fn")))
    metrics["pixels"] = int(totals.sum())
    metrics["chips"] = len(table)
    return SplitScores(metrics, table)


# --- Evaluating a finished training run -------------------------------------------------------

WORST_BEST = 6
METRICS_FILE = "metrics.json"
REPORT_DIR = "report"


@dataclass(frozen=True)
class EvaluationOutcome:
    """Where the bundle, metrics and report of an evaluated run are, and the test metrics."""

    run: Path
    bundle: Path
    metrics: dict[str, Any]
    report: Path

    def summary(self) -> str:
        """A short text for terminals: test metrics, threshold and where things are."""
        test = self.metrics["test"]
        return "\n".join(
            [
                f"test ({test['chips']} chips): cropland IoU {test['cropland_iou']:.4f}, "
                f"background IoU {test['background_iou']:.4f}, mean IoU {test['mean_iou']:.4f}, "
                f"F1 {test['f1']:.4f}",
                f"threshold (tuned on validation): {self.metrics['threshold']:.3f}",
                f"model bundle: {self.bundle}",
                f"report: {self.report / 'README.md'}",
            ]
        )


def rgb_band_indices(band_names: list[str]) -> tuple[int, int, int]:
    """0-based model bands to show as red, green, blue in previews."""
    names = [n.lower() for n in band_names]
    if {"red", "green", "blue"} <= set(names):
        return (names.index("red"), names.index("green"), names.index("blue"))
    if len(names) >= 3:
        return (0, 1, 2)
    return (0, 0, 0)


def _examples(
    net: nn.Module,
    dataset: ChipDataset,
    scores: pd.DataFrame,
    level: int,
    rgb: tuple[int, int, int],
    device: torch.device,
) -> tuple[list[ChipExample], list[ChipExample]]:
    """Re-predict the worst and best test chips (by cropland IoU) for the report grids."""
    ranked = scores.reset_index(drop=True).dropna(subset=["iou"]).sort_values("iou", kind="stable")
    worst = list(ranked.index[:WORST_BEST])
    best = list(ranked.index[::-1][:WORST_BEST])

    def example(position: int) -> ChipExample:
        image, label = dataset[position]
        raw, _ = read_chip(dataset.images[position], dataset.bands)
        with torch.no_grad():
            logits = net(image[None].to(device).contiguous(memory_format=torch.channels_last))
        levels = quantize(torch.sigmoid(logits.float()[0, 0])).cpu().numpy()
        return ChipExample(
            chip_id=str(scores.iloc[position]["chip_id"]),
            image=raw,
            label=label.numpy(),
            prediction=(levels >= level).astype(np.uint8),
            probability=levels.astype(np.float32) / 255,
            iou=float(scores.iloc[position]["iou"]),
            rgb_bands=rgb,
        )

    return [example(i) for i in worst], [example(i) for i in best]


def _load_run(run: Path) -> tuple[TrainConfig, ChipSplits, Normalization]:
    from rs_seg.train.fit import CONFIG_FILE, NORMALIZATION_FILE

    if not (run / CONFIG_FILE).exists():
        raise RsSegError(f"not a training run folder (no {CONFIG_FILE})", run)
    cfg = TrainConfig.model_validate(yaml.safe_load((run / CONFIG_FILE).read_text())["train"])
    stats = json.loads((run / NORMALIZATION_FILE).read_text())
    splits = load_chip_splits(cfg.chips, stats["bands"])
    return cfg, splits, Normalization(tuple(stats["mean"]), tuple(stats["std"]))


def evaluate_run(run: Path, checkpoint: Path | None = None) -> EvaluationOutcome:
    """Tune the threshold on validation, score the test split, write bundle, metrics and report.

    Runs in one process on one device in fp32, so results do not depend on how training was
    distributed, and a bundle reproduces exactly the predictions scored here.
    """
    from rs_seg.train.fit import (
        CHECKPOINTS,
        HISTORY_FILE,
        CroplandModule,
        publish_replacement,
        write_status,
    )

    run = Path(run)
    cfg, splits, normalization = _load_run(run)
    checkpoint = checkpoint or run / CHECKPOINTS / "best.ckpt"
    if not checkpoint.exists():
        raise RsSegError("no best.ckpt: has this run finished an epoch?", run)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu"
    )
    module = CroplandModule.load_from_checkpoint(checkpoint, map_location="cpu", load_weights=False)
    net = module.net.to(device).eval()
    data = ChipDataModule(splits, normalization, cfg.augment, cfg.batch_size, 0, cfg.seed)
    val, test = data.dataset("val"), data.dataset("test")
    log.info("tuning the threshold on %d validation chips ...", len(val))
    level = sweep(predict_levels(net, val, device, cfg.batch_size)).best_level()
    val_scores = score_split(
        predict_levels(net, val, device, cfg.batch_size), level, _ids(splits, "val")
    )
    log.info("scoring %d test chips ...", len(test))
    test_ids = _ids(splits, "test")
    test_scores = score_split(predict_levels(net, test, device, cfg.batch_size), level, test_ids)
    history = json.loads((run / HISTORY_FILE).read_text()) if (run / HISTORY_FILE).exists() else []
    metrics = _metrics_document(cfg, splits, level, val_scores, test_scores, history, checkpoint)
    meta = chip_metadata(Path(splits.paths("train")[0][0]), splits.bands)
    bundle = _bundle(cfg, splits, normalization, net, meta, metrics, history)
    metrics["model_id"] = bundle.model_id
    bundle_path = bundle.save(run / BUNDLE_FILE, overwrite=True)
    _write_metrics(run, metrics)
    worst, best = _examples(
        net, test, test_scores.chips, level, rgb_band_indices(meta["band_names"]), device
    )
    report = _write_report(run, history, metrics, test_scores.chips, splits, worst, best)
    write_status(run, "evaluated", model_id=bundle.model_id, bundle=BUNDLE_FILE)
    final = publish_replacement(run)  # a run replacing an earlier one takes its place only now
    if final != run:
        bundle_path, report = final / BUNDLE_FILE, final / REPORT_DIR
    return EvaluationOutcome(final, bundle_path, metrics, report)


def _ids(splits: ChipSplits, split: str) -> list[str]:
    return [str(c) for c in splits.rows(split)["chip_id"]]


def _metrics_document(
    cfg: TrainConfig,
    splits: ChipSplits,
    level: int,
    val: SplitScores,
    test: SplitScores,
    history: list[dict[str, float]],
    checkpoint: Path,
) -> dict[str, Any]:
    from rs_seg.train.fit import best_epoch_of

    best_epoch = best_epoch_of(history)
    counts = splits.counts()
    return {
        "threshold": level_to_threshold(level),
        "threshold_level": level,
        "threshold_rule": "best validation mean IoU over uint8 probability levels",
        "validation": val.metrics,
        "test": test.metrics,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "checkpoint": checkpoint.name,
        "chip_index_fingerprint": splits.fingerprint,
        "model": {
            "arch": cfg.model.arch,
            "encoder": cfg.model.encoder,
            "bands": list(splits.bands),
            "chip_size": splits.chip_size,
        },
        "data": {f"{k}_chips": v for k, v in counts.items()},
        "bundle": BUNDLE_FILE,
    }


def _bundle(
    cfg: TrainConfig,
    splits: ChipSplits,
    normalization: Normalization,
    net: nn.Module,
    meta: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, float]],
) -> ModelBundle:
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return ModelBundle(
        model=cfg.model.model_dump(mode="json"),
        bands=list(splits.bands),
        band_names=meta["band_names"],
        normalization=normalization,
        chip_size=splits.chip_size,
        threshold=metrics["threshold"],
        pixel_size=meta["pixel_size"],
        band_count=splits.band_count,
        crs=meta["crs"],
        dtype=meta["dtype"],
        nodata=meta["nodata"],
        metrics={k: metrics[k] for k in ("validation", "test", "threshold_rule")},
        provenance={
            "model_id": weights_id(state),
            "chip_index_fingerprint": splits.fingerprint,
            "chips_dir": str(splits.chips_dir),
            "config": cfg.model_dump(mode="json"),
            "versions": package_versions(),
            "created": now_iso(),
            "epochs_run": len(history),
            "best_epoch": metrics["best_epoch"],
        },
        state_dict=state,
    )


def _write_metrics(run: Path, metrics: dict[str, Any]) -> None:
    write_json(run / METRICS_FILE, metrics)


def _write_report(
    run: Path,
    history: list[dict[str, float]],
    metrics: dict[str, Any],
    chips: pd.DataFrame,
    splits: ChipSplits,
    worst: list[ChipExample],
    best: list[ChipExample],
) -> Path:
    scenes = splits.table.set_index("chip_id")["scene"]
    table = chips.assign(scene=[str(scenes.get(c, "")) for c in chips["chip_id"]])
    columns = ["chip_id", "scene", "iou", "mean_iou", "label_fraction", "predicted_fraction"]
    with staged_dir(run / REPORT_DIR, overwrite=True) as folder:
        write_report(
            folder,
            history=history,
            metrics={**metrics, "bundle": f"../{metrics['bundle']}"},  # relative to report/
            chip_scores=table[columns] if len(table) else pd.DataFrame(columns=columns),
            worst=worst,
            best=best,
        )
    return run / REPORT_DIR


def score_bundle(bundle: ModelBundle, chips_dir: Path, split: str = "test") -> SplitScores:
    """Score a saved model on one split of a chip folder at the bundle's own threshold.

    Used to compare a registered model with a new one on the new model's test split.
    """
    splits = load_chip_splits(chips_dir, bundle.bands)  # refuses bands the chips lack
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = bundle.build(device)
    images, masks = splits.paths(split)
    dataset = ChipDataset(images, masks, bundle.bands, bundle.normalization)
    level = threshold_to_level(bundle.threshold)
    return score_split(predict_levels(net, dataset, device), level, _ids(splits, split))
