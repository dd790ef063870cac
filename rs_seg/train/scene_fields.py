"""Test chips put back together into their scenes, so fields can be scored and shown whole.

Chip-by-chip object metrics cut every field at a chip edge; a user judges fields on a map. Each
test scene's chips are laid out at their offsets in the scene (the chip index's
``row_off``/``col_off``), predicted with overlapping, blended windows as scene inference does,
then split into fields with the rule tuned on validation
(:class:`rs_seg.field_rule.FieldRule`, the rule vectorizing applies), so fields that cross chip
edges are whole again. Pixels no test chip covers are ignored. Scenes are handled one at a time
and a mosaic is cropped to ``MAX_MOSAIC_SIDE`` pixels a side, so memory stays bounded by one
cropped scene whatever the size of the test split; only the worst and best scenes are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from rs_seg.config import MASK_CROPLAND, MASK_IGNORE
from rs_seg.field_rule import FieldRule
from rs_seg.records import ObjectMetrics
from rs_seg.train.dataset import ChipDataset, read_chip, read_mask
from rs_seg.train.field_figure import SceneFields
from rs_seg.train.metrics import quantize
from rs_seg.train.object_metrics import label_components, object_metrics, raster_object_counts
from rs_seg.windows import grid_windows, hann_weight, window_stride

MAX_MOSAIC_SIDE = 4096  # pixels: bounds a mosaic's memory (about 40 bytes a pixel)
OVERLAP = 0.25  # window overlap, as scene inference uses by default
BATCH = 8


@dataclass
class SceneScores:
    """Object metrics of every test scene, and the worst and best scenes to draw."""

    metrics: dict[str, ObjectMetrics] = field(default_factory=dict)
    worst: SceneFields | None = None
    best: SceneFields | None = None

    def keep(self, scene: SceneFields, scores: ObjectMetrics) -> None:
        """Record a scene's scores; keep it if it is the worst or best so far (by object F1)."""
        self.metrics[scene.name] = scores
        f1 = _f1(scores)
        if self.worst is None or f1 < _f1(self.metrics[self.worst.name]):
            self.worst = scene
        if self.best is None or f1 > _f1(self.metrics[self.best.name]):
            self.best = scene

    def table(self) -> list[str]:
        """The report's Markdown section: one row per test scene, worst object F1 first."""
        lines = [
            "## Fields on whole test scenes",
            "",
            "Test chips laid out at their places in each scene and split into fields as "
            "vectorizing does, so fields crossing chip edges are whole; pixels no test chip "
            f"covers are ignored (mosaics cropped to {MAX_MOSAIC_SIDE} px).",
            "",
            "| test scene | object F1 | precision | recall | fields predicted / labelled |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, m in sorted(self.metrics.items(), key=lambda item: _f1(item[1])):
            lines.append(
                f"| {name} | {m['object_f1']:.3f} | {m['object_precision']:.3f} | "
                f"{m['object_recall']:.3f} | {m['fields_predicted']} / {m['fields_labelled']} |"
            )
        return lines

    def shown(self) -> list[SceneFields]:
        """Worst then best; one scene when the test split has one."""
        scenes = [s for s in (self.worst, self.best) if s is not None]
        return scenes[:1] if len(scenes) == 2 and scenes[0] is scenes[1] else scenes


def _f1(scores: ObjectMetrics) -> float:
    value = scores["object_f1"]
    return value if math.isfinite(value) else -1.0


def score_test_scenes(
    net: nn.Module,
    dataset: ChipDataset,
    rows: pd.DataFrame,
    level: int,
    rule: FieldRule | None,
    rgb: tuple[int, int, int],
    device: torch.device,
) -> SceneScores:
    """Every test scene mosaicked, split into fields and scored; ``rows`` index ``dataset``.

    A cropland model (``rule`` None, or no boundary output) has the connected cropland at
    ``level`` as its fields.
    """
    scores = SceneScores()
    positions = rows.reset_index(drop=True)
    for name, chips in positions.groupby("scene", sort=True):
        scene = _mosaic(net, dataset, chips, level, rule, rgb, device, str(name))
        scores.keep(scene, object_metrics(raster_object_counts(
            scene.predicted, scene.labelled, scene.ignore
        )))  # fmt: skip
    return scores


def _mosaic(
    net: nn.Module,
    dataset: ChipDataset,
    chips: pd.DataFrame,
    level: int,
    rule: FieldRule | None,
    rgb: tuple[int, int, int],
    device: torch.device,
    name: str,
) -> SceneFields:
    """One scene's test chips at their offsets, predicted as a scene, fields on both sides."""
    top, left = int(chips["row_off"].min()), int(chips["col_off"].min())
    bottom = min(int((chips["row_off"] + chips["size"]).max()), top + MAX_MOSAIC_SIDE)
    right = min(int((chips["col_off"] + chips["size"]).max()), left + MAX_MOSAIC_SIDE)
    shape = (bottom - top, right - left)
    target = np.full(shape, MASK_IGNORE, dtype=np.uint8)
    valid = np.zeros(shape, dtype=bool)
    image: np.ndarray | None = None
    for position, chip in chips.iterrows():
        r0, c0 = int(chip["row_off"]) - top, int(chip["col_off"]) - left
        if r0 >= shape[0] or c0 >= shape[1]:
            continue  # beyond the cropped mosaic
        index = int(str(position))
        raw, chip_valid = read_chip(dataset.images[index], dataset.bands)
        mask = read_mask(dataset.masks[index])
        if image is None:
            image = np.zeros((raw.shape[0], *shape), dtype=raw.dtype)
        rows, cols = min(mask.shape[0], shape[0] - r0), min(mask.shape[1], shape[1] - c0)
        window = np.s_[r0 : r0 + rows, c0 : c0 + cols]
        target[window] = mask[:rows, :cols]
        valid[window] = chip_valid[:rows, :cols]
        image[(slice(None), *window)] = raw[:, :rows, :cols]
    assert image is not None
    size = int(chips["size"].max())
    levels = _blended_levels(net, dataset.normalization.apply(image, valid), size, device)
    ignore = target == MASK_IGNORE
    if rule is not None and len(levels) > 1:
        predicted = rule.split(levels[0], levels[1], valid=~ignore)
    else:
        predicted = label_components((levels[0] >= level) & ~ignore)
    labelled = label_components(target == MASK_CROPLAND)
    return SceneFields(name, image, labelled, predicted, ignore, rgb)


@torch.no_grad()
def _blended_levels(
    net: nn.Module, image: np.ndarray, size: int, device: torch.device
) -> np.ndarray:
    """uint8 probability levels ``(outputs, H, W)`` of a normalized mosaic.

    Windows of the chip size overlap by :data:`OVERLAP` and are blended with the Hann weight of
    scene inference, so chip edges leave no seams (a network sees less context near a window's
    edge, and a fields model would draw boundaries along them).
    """
    height, width = image.shape[1:]
    padded = np.zeros((image.shape[0], max(height, size), max(width, size)), dtype=np.float32)
    padded[:, :height, :width] = image
    weight = torch.from_numpy(hann_weight(size)).to(device)
    windows = grid_windows(padded.shape[1], padded.shape[2], size, window_stride(size, OVERLAP))
    total: torch.Tensor | None = None
    weights = torch.zeros(padded.shape[1:], device=device)
    for start in range(0, len(windows), BATCH):
        batch = windows[start : start + BATCH]
        crops = np.stack([padded[:, w.row_off : w.row_off + size, w.col_off : w.col_off + size]
                          for w in batch])  # fmt: skip
        tensor = torch.from_numpy(crops).to(device).contiguous(memory_format=torch.channels_last)
        prob = torch.sigmoid(net(tensor).float())
        if total is None:
            total = torch.zeros((prob.shape[1], *padded.shape[1:]), device=device)
        for w, window_prob in zip(batch, prob, strict=True):
            rows = slice(w.row_off, w.row_off + size)
            cols = slice(w.col_off, w.col_off + size)
            total[:, rows, cols] += window_prob * weight
            weights[rows, cols] += weight
    assert total is not None
    blended = (total / weights)[:, :height, :width]
    return np.asarray(quantize(blended).cpu().numpy())
