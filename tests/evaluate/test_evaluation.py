"""Metrics and the decision threshold: exact confusion counts at every uint8 level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rs_seg.evaluate.evaluation import Batch, chip_fields, score_split, tune_fields
from rs_seg.field_rule import FieldRule
from rs_seg.levels import level_to_threshold, threshold_to_level
from rs_seg.model.fields import FieldSettings
from rs_seg.train.metrics import ThresholdSweep, metrics_from_counts, quantize


def test_metrics_from_a_known_confusion_matrix() -> None:
    m = metrics_from_counts(tp=6, fp=2, tn=10, fn=2)
    assert m["cropland_iou"] == pytest.approx(0.6)
    assert m["background_iou"] == pytest.approx(10 / 14)
    assert m["mean_iou"] == pytest.approx((0.6 + 10 / 14) / 2)
    assert m["f1"] == pytest.approx(0.75) and m["precision"] == m["recall"] == 0.75
    assert m["accuracy"] == pytest.approx(0.8)
    assert math.isnan(metrics_from_counts(0, 0, 5, 0)["cropland_iou"])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    level=st.integers(1, 255),
    ignore=st.floats(0, 0.5),
)
def test_sweep_counts_equal_brute_force_at_every_level(seed: int, level: int, ignore: float):
    rng = np.random.default_rng(seed)
    levels = torch.from_numpy(rng.integers(0, 256, size=(3, 9, 9)).astype(np.uint8))
    target = torch.from_numpy(rng.integers(0, 2, size=(3, 9, 9)).astype(np.uint8))
    target[torch.from_numpy(rng.random((3, 9, 9)) < ignore)] = 255
    sweep = ThresholdSweep()
    sweep.update(levels, target)
    valid = target != 255
    pred, truth = (levels >= level)[valid], (target == 1)[valid]
    expected = (
        int((pred & truth).sum()), int((pred & ~truth).sum()),
        int((~pred & ~truth).sum()), int((~pred & truth).sum()),
    )  # fmt: skip
    assert sweep.counts(level) == expected
    connected = FieldRule(level, None)
    scores = score_split(iter([Batch(levels, target, 0)]), level, ["a", "b", "c"], connected)
    totals = tuple(int(scores.chips[k].sum()) for k in ("tp", "fp", "tn", "fn"))
    assert totals == expected, "torchmetrics per-chip counts agree with the sweep"


def test_best_level_maximises_mean_iou() -> None:
    levels = torch.tensor([[10, 60, 100, 200, 220, 250]], dtype=torch.uint8)
    target = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.uint8)
    sweep = ThresholdSweep()
    sweep.update(levels, target)
    best = sweep.best_level()
    assert 61 <= best <= 100
    assert sweep.counts(best) == (4, 0, 2, 0)


def test_threshold_and_level_round_trip() -> None:
    for level in range(1, 255):
        assert threshold_to_level(level_to_threshold(level)) == level
    assert threshold_to_level(level_to_threshold(255)) == 254, "255 is the rasters' nodata"
    assert quantize(torch.tensor([0.0, 0.5, 1.0, 1.2])).tolist() == [0, 128, 255, 255]


# --- field settings tuned on validation --------------------------------------------------------


def _two_touching_fields(boundary_probability: float) -> Batch:
    """Two labelled fields sharing an edge, a predicted boundary of the given probability along
    it, and a 4 x 4 px speck of predicted cropland that is no field."""
    target = np.zeros((1, 32, 32), dtype=np.uint8)
    target[0, 4:28, 2:30] = 1
    target[0, 4:28, 15:17] = 2  # the burned shared outline
    extent = np.where(target > 0, 230, 10).astype(np.uint8)
    extent[0, 29:32, 0:5] = 230  # a speck: 15 px of predicted cropland outside every field
    boundary = np.full_like(extent, 5)
    boundary[0, 4:28, 15:17] = round(boundary_probability * 255)
    return Batch(torch.from_numpy(extent), torch.from_numpy(target), 0, torch.from_numpy(boundary))


def test_tuning_finds_the_boundary_and_minimum_area_that_give_the_labelled_fields() -> None:
    batch = _two_touching_fields(0.35)
    tuned = tune_fields([batch], threshold_to_level(0.5), pixel_area=1.0)
    assert tuned is not None and tuned.validation_object_f1 == 1.0
    settings = tuned.settings
    assert settings.boundary_threshold is not None
    assert settings.boundary_threshold <= 0.3  # a weaker boundary would merge the two
    assert settings.min_area > 15  # and the speck is dropped
    assert chip_fields(batch, settings.rule(1.0)).tp == 2
    untuned = FieldRule(threshold_to_level(0.5), threshold_to_level(0.5))
    counts = chip_fields(batch, untuned)
    assert (counts.tp, counts.predicted) == (0, 2)  # merged field and the speck


def test_a_cropland_model_has_no_field_settings() -> None:
    batch = _two_touching_fields(0.35)
    cropland = Batch(batch.levels, batch.target, 0)
    assert tune_fields([cropland], 128, 1.0) is None
    connected = FieldSettings(threshold=0.5, boundary_threshold=None).rule(1.0)
    counts = chip_fields(cropland, connected)  # a cropland model's fields: connected cropland
    assert (counts.tp, counts.predicted) == (0, 2)
