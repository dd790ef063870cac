"""Pixel metrics from confusion counts, and the threshold sweep over the 256 probability levels.

Training (per-epoch validation IoU) and evaluation (threshold tuning, test scores) both use these,
so a metric means the same at every stage. Probabilities are quantized to the uint8 levels the
probability rasters store before any threshold is applied.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rs_seg.config import MASK_BOUNDARY, MASK_CROPLAND, MASK_IGNORE
from rs_seg.levels import LEVELS
from rs_seg.records import PixelMetrics


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN where nothing was counted ("no data" is not "bad")."""
    return numerator / denominator if denominator else math.nan


def metrics_from_counts(tp: float, fp: float, tn: float, fn: float) -> PixelMetrics:
    """All reported pixel metrics from one confusion matrix (cropland = positive class)."""
    cropland_iou = ratio(tp, tp + fp + fn)
    background_iou = ratio(tn, tn + fn + fp)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "cropland_iou": cropland_iou,
        "background_iou": background_iou,
        "mean_iou": float(np.nanmean([cropland_iou, background_iou]))
        if not (math.isnan(cropland_iou) and math.isnan(background_iou))
        else math.nan,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
    }


def extent_target(target: torch.Tensor) -> torch.Tensor:
    """The 0/1/255 cropland target of a mask: a field boundary (2) is cropland too."""
    return torch.where(target == MASK_BOUNDARY, MASK_CROPLAND, target)


def quantize(probabilities: torch.Tensor) -> torch.Tensor:
    """Probabilities in [0, 1] -> uint8 levels 0-255, as the probability rasters store them."""
    return torch.round(probabilities.float().clamp(0, 1) * 255).to(torch.uint8)


class ThresholdSweep:
    """Confusion matrices for every uint8 threshold at once, from two 256-bin histograms."""

    def __init__(self) -> None:
        self.positive = torch.zeros(LEVELS, dtype=torch.float64)
        self.negative = torch.zeros(LEVELS, dtype=torch.float64)

    def update(self, levels: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of quantized probabilities and 0/1/255 (or 0/1/2/255) targets."""
        levels, target = levels.cpu().long(), extent_target(target.cpu())
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
        """The level (1-254) with the best mean IoU; ties go to the level nearest the middle.

        Level 255 is the probability rasters' nodata value, so no threshold maps to it
        (:func:`rs_seg.levels.threshold_to_level`); a tuned 255 would quietly become 254.
        """
        pos_above = self.positive.flip(0).cumsum(0).flip(0)
        neg_above = self.negative.flip(0).cumsum(0).flip(0)
        tp, fp = pos_above[1:255], neg_above[1:255]
        fn, tn = self.positive.sum() - tp, self.negative.sum() - fp
        crop = tp / (tp + fp + fn).clamp(min=1)
        back = tn / (tn + fn + fp).clamp(min=1)
        score = (crop + back) / 2
        best = score.max()
        candidates = torch.nonzero(score >= best - 1e-12).flatten() + 1
        return int(candidates[torch.argmin((candidates - 128).abs())])
