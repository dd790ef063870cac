"""Evaluation: pixel metrics, the decision threshold, field settings, scores on the test split.

The model is applied through :class:`rs_seg.model.predictor.WindowPredictor`, the predictor of scene
inference, and the tuned settings are the :class:`rs_seg.model.fields.FieldSettings` ``rs-seg
infer`` applies. Probabilities are quantized to 0-255 before thresholding, exactly as the
probability rasters of scene inference store them, so the threshold tuned here means the same thing
on a saved raster. The threshold is the one with the best mean IoU (cropland and background) on the
validation split: tuning cropland IoU alone rewards painting everything cropland in cropland-rich
regions.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryStatScores

from rs_seg.config import MASK_CROPLAND, MASK_IGNORE, TrainConfig
from rs_seg.errors import RsSegError
from rs_seg.evaluate.scene_fields import SceneMapping, SceneScores, score_test_scenes
from rs_seg.field_rule import FieldRule, drop_small
from rs_seg.levels import level_to_threshold, threshold_to_level
from rs_seg.model.bundle import BUNDLE_FILE, ModelBundle, now_iso, package_versions, weights_id
from rs_seg.model.fields import FieldSettings
from rs_seg.model.normalization import Normalization
from rs_seg.model.predictor import WindowPredictor
from rs_seg.records import BundleMetrics, DataSummary, RunMetrics, SplitMetrics
from rs_seg.run_folder import RunFolder, best_epoch_of, write_status
from rs_seg.staging import staged_dir, write_json
from rs_seg.train.dataset import (
    ChipDataModule,
    ChipDataset,
    ChipSplits,
    chip_metadata,
    load_chip_splits,
    read_chip,
)
from rs_seg.train.field_figure import plot_scene_fields
from rs_seg.train.metrics import (
    ThresholdSweep,
    extent_target,
    metrics_from_counts,
    quantize,
    ratio,
)
from rs_seg.train.module import CroplandModule
from rs_seg.train.object_metrics import (
    ObjectCounts,
    chip_object_counts,
    label_components,
    object_metrics,
    sum_counts,
)
from rs_seg.train.report import ChipExample, FieldsSection, write_report

log = logging.getLogger(__name__)
# Field settings tried on validation for a fields model (the best object F1 is kept): extent
# thresholds (with the pixel-tuned one), boundary thresholds, minimum field areas (m²).
EXTENT_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
BOUNDARY_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_AREA_CANDIDATES = (0.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
FIELD_RULE = "best validation object F1 over extent, boundary and minimum-area candidates"


@dataclass
class Batch:
    """Predictions of one batch with their targets and positions in the dataset."""

    levels: torch.Tensor  # (N, H, W) uint8
    target: torch.Tensor  # (N, H, W) uint8
    start: int
    boundary: torch.Tensor | None = None  # (N, H, W) uint8 levels of a fields model


def predict_levels(
    predictor: WindowPredictor, dataset: ChipDataset, batch_size: int = 16
) -> Iterator[Batch]:
    """Quantized probabilities for every chip of ``dataset``, batch by batch.

    The chips come normalized by the dataset (:meth:`Normalization.apply`, as scene inference
    normalizes windows) and go through the predictor scene inference uses.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for images, target in loader:
        prob = torch.from_numpy(predictor(images.numpy()))
        boundary = quantize(prob[:, 1]) if prob.shape[1] > 1 else None
        yield Batch(quantize(prob[:, 0]), target, start, boundary)
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

    metrics: SplitMetrics
    chips: pd.DataFrame


def chip_fields(batch: Batch, rule: FieldRule) -> ObjectCounts:
    """Field-level counts of a batch: predicted and labelled fields matched chip by chip.

    Labelled fields are the connected interiors (mask 1) the burned boundaries keep apart; on
    chips without boundaries touching fields are one object, as the masks cannot tell them apart.
    Predicted fields are those ``rule`` (:meth:`FieldSettings.rule`, the rule vectorizing
    applies to a scene) makes of the batch. Objects cut by a chip's edge are objects of that
    chip.
    """
    return _counts(_split(batch, rule), _labelled(batch))


def _labelled(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """A batch's labelled field ids ``(N, H, W)`` and its ignored pixels."""
    target = batch.target.numpy()
    return label_components(target == MASK_CROPLAND), target == MASK_IGNORE


def _counts(predicted: np.ndarray, labelled: tuple[np.ndarray, np.ndarray]) -> ObjectCounts:
    """Object counts of predicted field ids ``(N, H, W)`` against :func:`_labelled` fields."""
    return chip_object_counts(predicted, *labelled)


def _split(batch: Batch, rule: FieldRule) -> np.ndarray:
    """Field ids of every chip of a batch, ``(N, H, W)``."""
    extents = batch.levels.numpy()
    boundaries = batch.boundary.numpy() if batch.boundary is not None else [None] * len(extents)
    return np.stack([rule.split(e, b) for e, b in zip(extents, boundaries, strict=True)])


@dataclass(frozen=True)
class TunedFields:
    """The field settings with the best validation object F1, and that F1."""

    settings: FieldSettings
    validation_object_f1: float


def tune_fields(batches: list[Batch], level: int, pixel_area: float | None) -> TunedFields | None:
    """Extent threshold, boundary threshold and minimum area with the best validation object F1.

    The fields are the ones vectorizing gives (:func:`rs_seg.field_rule.split_labels`, growth
    :data:`rs_seg.field_rule.GROW`), fields smaller than the minimum area dropped by pixel count
    (vectorizing measures the polygon after filling holes of that size: nearly the same). Every
    combination of the candidates is scored; ties go to the pixel-tuned extent ``level``, then
    the boundary threshold nearest 0.5, then the minimum area nearest 500 m². None for a cropland
    model.
    """
    if not batches or batches[0].boundary is None:
        return None
    area = pixel_area or 1.0
    pixel_threshold = level_to_threshold(level)
    extents = sorted({pixel_threshold, *EXTENT_CANDIDATES})
    truths = [_labelled(b) for b in batches]  # the same for every candidate
    best: tuple[tuple[float, ...], TunedFields] | None = None
    for extent, boundary in itertools.product(extents, BOUNDARY_CANDIDATES):
        rule = FieldSettings.checked(threshold=extent, boundary_threshold=boundary).rule(area)
        split = [_split(b, rule) for b in batches]  # split once, filter by each area
        for min_area in MIN_AREA_CANDIDATES:
            counts = sum_counts(
                _counts(np.stack([drop_small(i, min_area / area) for i in ids]), truth)
                for ids, truth in zip(split, truths, strict=True)
            )
            f1 = object_metrics(counts)["object_f1"]
            key = (
                f1 if math.isfinite(f1) else -1.0,
                -abs(extent - pixel_threshold),
                -abs(boundary - 0.5),
                -abs(min_area - 500.0),
            )
            if best is None or key > best[0]:
                settings = FieldSettings.checked(
                    threshold=extent, boundary_threshold=boundary, min_area=min_area
                )
                best = (key, TunedFields(settings, key[0]))
    assert best is not None
    return best[1]


def score_split(
    batches: Iterable[Batch], level: int, chip_ids: list[str], fields: FieldRule
) -> SplitScores:
    """Metrics over all pixels and per chip, with torchmetrics' stat scores at ``level``.

    Field-level counts are those of the ``fields`` rule (:meth:`FieldSettings.rule`).
    """
    stats = BinaryStatScores(ignore_index=MASK_IGNORE, multidim_average="samplewise")
    rows = []
    objects = ObjectCounts()
    for batch in batches:
        objects += chip_fields(batch, fields)
        predicted = (batch.levels >= level).long()
        # (N, 5): tp fp tn fn support; torchmetrics drops the batch axis when N == 1
        counts = stats(predicted, extent_target(batch.target).long()).reshape(-1, 5)
        for offset, (tp, fp, tn, fn, _) in enumerate(counts.tolist()):
            chip = metrics_from_counts(tp, fp, tn, fn)
            rows.append(
                {
                    "chip_id": chip_ids[batch.start + offset],
                    "iou": chip["cropland_iou"],
                    "mean_iou": chip["mean_iou"],
                    "label_fraction": ratio(tp + fn, tp + fp + tn + fn),
                    "predicted_fraction": ratio(tp + fp, tp + fp + tn + fn),
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
    pixel = metrics_from_counts(*(float(totals[k]) for k in ("tp", "fp", "tn", "fn")))
    metrics: SplitMetrics = {
        **pixel, "pixels": int(totals.sum()), "chips": len(table),
        "objects": object_metrics(objects),
    }  # fmt: skip
    return SplitScores(metrics, table)


# --- Evaluating a finished training run -------------------------------------------------------

WORST_BEST = 6
FIELDS_PNG = "fields_scenes.png"  # the report's figure of fields on whole test scenes
FIELDS_TITLE = "Fields on the worst and best test scenes (by object F1)"
TEST_SCENES = "test_scenes"  # the report's folder of test scene field layers


@dataclass(frozen=True)
class EvaluationOutcome:
    """Where the bundle, metrics and report of an evaluated run are, and the test metrics."""

    run: Path
    bundle: Path
    metrics: RunMetrics
    report: Path

    def summary(self) -> str:
        """A short text for terminals: test metrics, threshold and where things are."""
        test = self.metrics["test"]
        fields = test.get("objects")
        return "\n".join(
            [
                f"test ({test['chips']} chips): cropland IoU {test['cropland_iou']:.4f}, "
                f"background IoU {test['background_iou']:.4f}, mean IoU {test['mean_iou']:.4f}, "
                f"F1 {test['f1']:.4f}",
                *(
                    [
                        f"test fields: object F1 {fields['object_f1']:.4f} "
                        f"({fields['fields_predicted']} predicted, {fields['fields_labelled']} "
                        "labelled, chip by chip)"
                    ]
                    if fields
                    else []
                ),
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
    predictor: WindowPredictor,
    dataset: ChipDataset,
    scores: pd.DataFrame,
    level: int,
    rgb: tuple[int, int, int],
) -> tuple[list[ChipExample], list[ChipExample]]:
    """Re-predict the worst and best test chips (by cropland IoU) for the report grids."""
    ranked = scores.reset_index(drop=True).dropna(subset=["iou"]).sort_values("iou", kind="stable")
    worst = list(ranked.index[:WORST_BEST])
    best = list(ranked.index[::-1][:WORST_BEST])

    def example(position: int) -> ChipExample:
        image, label = dataset[position]
        raw, _ = read_chip(dataset.images[position], dataset.bands)
        prob = torch.from_numpy(predictor(image[None].numpy()))
        levels = quantize(prob[0, 0]).numpy()
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
    folder = RunFolder(run)
    if not folder.config.exists():
        raise RsSegError(f"not a training run folder (no {folder.config.name})", run)
    cfg = TrainConfig.model_validate(yaml.safe_load(folder.config.read_text())["train"])
    stats = json.loads(folder.normalization.read_text())
    splits = load_chip_splits(cfg.chips, stats["bands"])
    return cfg, splits, Normalization.from_dict(stats)


def evaluate_run(run: Path, checkpoint: Path | None = None) -> EvaluationOutcome:
    """Tune the thresholds on validation, score the test split, write bundle, metrics and report.

    Runs in one process on one device in fp32, so results do not depend on how training was
    distributed. The model is applied by the predictor scene inference uses, and the test
    scenes are mapped by ``rs-seg infer``'s own function with the bundle written here, so the
    scores are those of what users get. A replacement run is published by the caller
    (:func:`rs_seg.evaluate.run.train_and_evaluate`) once this has finished.
    """
    run = Path(run)
    cfg, splits, normalization = _load_run(run)
    checkpoint = checkpoint or RunFolder(run).best_checkpoint
    if not checkpoint.exists():
        raise RsSegError("no best.ckpt: has this run finished an epoch?", run)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "cpu"
    )
    module = CroplandModule.load_from_checkpoint(checkpoint, map_location="cpu", load_weights=False)
    meta = chip_metadata(Path(splits.paths("train")[0][0]), splits.bands)
    history = (
        json.loads(RunFolder(run).history.read_text()) if RunFolder(run).history.exists() else []
    )
    bundle = _bundle(cfg, splits, normalization, module.net, meta, history)
    predictor = WindowPredictor(bundle, device, tta=False, precision="fp32")
    data = ChipDataModule(splits, normalization, cfg.augment, cfg.batch_size, 0, cfg.seed)
    val, test = data.dataset("val"), data.dataset("test")
    log.info("tuning the thresholds on %d validation chips ...", len(val))
    val_batches = list(predict_levels(predictor, val, cfg.batch_size))
    level = sweep(iter(val_batches)).best_level()
    pixel_area = _pixel_area(meta["pixel_size"])
    tuned = tune_fields(val_batches, level, pixel_area)
    bundle = replace(bundle, threshold=level_to_threshold(level),
                     fields=tuned.settings if tuned else None)  # fmt: skip
    rule = bundle.field_settings.rule(pixel_area)
    val_scores = score_split(val_batches, level, _ids(splits, "val"), rule)
    del val_batches
    log.info("scoring %d test chips ...", len(test))
    test_scores = score_split(
        predict_levels(predictor, test, cfg.batch_size), level, _ids(splits, "test"), rule
    )
    metrics = _metrics_document(cfg, splits, level, val_scores, test_scores, history, checkpoint)
    metrics["fields"] = bundle.field_settings.model_dump()
    bundle.metrics = BundleMetrics(
        validation=metrics["validation"], test=metrics["test"],
        threshold_rule=metrics["threshold_rule"], **({"fields_rule": FIELD_RULE} if tuned else {}),
    )  # fmt: skip
    bundle_path = bundle.save(run / BUNDLE_FILE, overwrite=True)
    metrics["model_id"] = bundle.model_id
    rgb = rgb_band_indices(meta["band_names"])
    examples = _examples(predictor, test, test_scores.chips, level, rgb)
    with tempfile.TemporaryDirectory(prefix=".test-scenes-", dir=run) as scratch:
        scenes = _map_test_scenes(
            splits, SceneMapping(bundle_path, Path(scratch), device.type, rgb)
        )
        metrics["test_scenes"] = scenes.metrics
        _write_metrics(run, metrics)
        report = _write_report(run, history, metrics, test_scores.chips, splits, examples, scenes)
    write_status(run, "evaluated", model_id=bundle.model_id, bundle=BUNDLE_FILE)
    return EvaluationOutcome(run, bundle_path, metrics, report)


def _map_test_scenes(splits: ChipSplits, mapping: SceneMapping) -> SceneScores:
    """The test scenes mapped as ``rs-seg infer`` maps a scene, in the caller's scratch folder."""
    rows = splits.rows("test")
    log.info("mapping fields on %d whole test scenes ...", rows["scene"].nunique())
    images, masks = splits.paths("test")
    return score_test_scenes(
        [Path(p) for p in images], [Path(p) for p in masks], rows, splits.band_count, mapping
    )


def _pixel_area(pixel_size: list[float] | None) -> float | None:
    """Area of one pixel in CRS units squared (m² in a metric CRS); None without a CRS."""
    return float(pixel_size[0] * pixel_size[1]) if pixel_size else None


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
) -> RunMetrics:
    best_epoch = best_epoch_of(history)
    counts = splits.counts()
    data: DataSummary = {
        "train_chips": counts["train"],
        "val_chips": counts["val"],
        "test_chips": counts["test"],
    }
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
        "data": data,
        "bundle": BUNDLE_FILE,
    }


def _bundle(
    cfg: TrainConfig,
    splits: ChipSplits,
    normalization: Normalization,
    net: nn.Module,
    meta: dict[str, Any],
    history: list[dict[str, float]],
) -> ModelBundle:
    """The run's bundle before tuning: evaluation then sets its thresholds and metrics."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return ModelBundle(
        model=cfg.model,
        bands=list(splits.bands),
        band_names=meta["band_names"],
        normalization=normalization,
        chip_size=splits.chip_size,
        threshold=0.5,
        pixel_size=meta["pixel_size"],
        band_count=splits.band_count,
        crs=meta["crs"],
        dtype=meta["dtype"],
        nodata=meta["nodata"],
        provenance={
            "model_id": weights_id(state),
            "chip_index_fingerprint": splits.fingerprint,
            "chips_dir": str(splits.chips_dir),
            "config": cfg.model_dump(mode="json"),
            "versions": package_versions(),
            "created": now_iso(),
            "epochs_run": len(history),
            "best_epoch": best_epoch_of(history),
        },
        state_dict=state,
    )


def _write_metrics(run: Path, metrics: RunMetrics) -> None:
    write_json(RunFolder(run).metrics, metrics)


def _write_report(
    run: Path,
    history: list[dict[str, float]],
    metrics: RunMetrics,
    chips: pd.DataFrame,
    splits: ChipSplits,
    examples: tuple[list[ChipExample], list[ChipExample]],
    test_scenes: SceneScores,
) -> Path:
    scenes = splits.table.set_index("chip_id")["scene"]
    table = chips.assign(scene=[str(scenes.get(c, "")) for c in chips["chip_id"]])
    columns = ["chip_id", "scene", "iou", "mean_iou", "label_fraction", "predicted_fraction"]
    worst, best = examples
    with staged_dir(RunFolder(run).report, overwrite=True) as folder:
        figure = folder / FIELDS_PNG if test_scenes.shown() else None
        _move_layers(test_scenes, folder / TEST_SCENES)
        if figure is not None:
            plot_scene_fields(test_scenes.shown(), FIELDS_TITLE, figure)
        write_report(
            folder,
            history=history,
            metrics={**metrics, "bundle": f"../{metrics['bundle']}"},  # relative to report/
            chip_scores=table[columns] if len(table) else pd.DataFrame(columns=columns),
            worst=worst,
            best=best,
            fields=FieldsSection(figure, test_scenes.table()),
        )
    return RunFolder(run).report


def _move_layers(scenes: SceneScores, folder: Path) -> None:
    """Each test scene's field layer into the report, numbered (scene names are the index's)."""
    if not scenes.layers:
        return
    folder.mkdir()
    for name, file in scenes.layer_names().items():
        scenes.layers[name].rename(folder / file)


def score_bundle(bundle: ModelBundle, chips_dir: Path, split: str = "test") -> SplitScores:
    """Score a saved model on one split of a chip folder at the bundle's own threshold.

    Used to compare a registered model with a new one on the new model's test split.
    """
    splits = load_chip_splits(chips_dir, bundle.bands)  # refuses bands the chips lack
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    predictor = WindowPredictor(bundle, device, tta=False, precision="fp32")
    images, masks = splits.paths(split)
    dataset = ChipDataset(images, masks, bundle.bands, bundle.normalization)
    level = threshold_to_level(bundle.threshold)
    pixel_area = _pixel_area(bundle.pixel_size)
    rule = bundle.field_settings.rule(pixel_area)
    return score_split(predict_levels(predictor, dataset), level, _ids(splits, split), rule)
