"""Test chips laid out as scenes: blended windows leave no seams, the worst and best are kept."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rs_seg.train.field_figure import SceneFields
from rs_seg.train.metrics import quantize
from rs_seg.train.scene_fields import SceneScores, _blended_levels


class _FirstBand(nn.Module):
    """Logits = the first input band and its negation: the output depends on the pixel alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


class _EdgeBoundary(nn.Module):
    """A network that draws a boundary along every window edge, as a fields model tends to."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0], 2, *x.shape[2:]), -4.0)
        out[:, 1, :2] = out[:, 1, -2:] = out[:, 1, :, :2] = out[:, 1, :, -2:] = 4.0
        return out


def test_blended_windows_give_each_pixel_its_own_prediction_whatever_the_window() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 50, 70)).astype(np.float32)
    levels = _blended_levels(_FirstBand(), image, 16, torch.device("cpu"))
    assert levels.shape == (2, 50, 70) and levels.dtype == np.uint8
    expected = quantize(torch.sigmoid(torch.from_numpy(image[0]))).numpy()
    assert np.abs(levels[0].astype(int) - expected).max() <= 1  # float sums of weights


def test_blending_keeps_window_edges_from_cutting_the_mosaic() -> None:
    levels = _blended_levels(
        _EdgeBoundary(), np.zeros((1, 64, 64), np.float32), 16, torch.device("cpu")
    )
    inner = levels[1, 8:-8, 8:-8]
    assert inner.max() < 128  # edges of one window lie where others are weighted most


def test_a_mosaic_smaller_than_a_window_is_padded() -> None:
    levels = _blended_levels(_FirstBand(), np.zeros((3, 5, 9), np.float32), 16, torch.device("cpu"))
    assert levels.shape == (2, 5, 9) and (levels[0] == 128).all()


def _scene(name: str) -> SceneFields:
    ids = np.zeros((4, 4), dtype=np.int32)
    return SceneFields(name, np.zeros((3, 4, 4), np.uint8), ids, ids)


def test_the_worst_and_best_scenes_are_kept_and_tabled_worst_first() -> None:
    scores = SceneScores()
    metrics = {"object_precision": 0.5, "object_recall": 0.5, "fields_predicted": 2}
    for name, f1 in (("b", 0.5), ("a", 0.2), ("c", 0.9)):
        scores.keep(_scene(name), {**metrics, "object_f1": f1, "fields_labelled": 3})  # type: ignore[typeddict-item]
    assert [s.name for s in scores.shown()] == ["a", "c"]
    rows = [line for line in scores.table() if line.startswith("| a") or line.startswith("| c")]
    assert rows[0].startswith("| a") and "0.200" in rows[0]
    single = SceneScores()
    single.keep(_scene("only"), {**metrics, "object_f1": 0.4, "fields_labelled": 3})  # type: ignore[typeddict-item]
    assert [s.name for s in single.shown()] == ["only"]
