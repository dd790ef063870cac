"""Probability levels: thresholds map to 1-254, never to 255, which only nodata holds."""

from __future__ import annotations

import numpy as np
import pytest

from rs_seg.levels import (
    MAX_LEVEL,
    NODATA_LEVEL,
    SCALE,
    level_to_threshold,
    threshold_to_level,
)

THRESHOLDS = np.linspace(0.0, 1.0, 20_001)


def test_every_threshold_maps_to_a_level_a_valid_pixel_can_reach() -> None:
    levels = {threshold_to_level(float(t)) for t in THRESHOLDS}
    assert min(levels) == 1 and max(levels) == MAX_LEVEL == 254
    assert NODATA_LEVEL not in levels


@pytest.mark.parametrize("level", range(1, MAX_LEVEL + 1))
def test_stored_thresholds_round_trip(level: int) -> None:
    assert threshold_to_level(level_to_threshold(level)) == level


@pytest.mark.parametrize(
    ("threshold", "level"),
    [(1.0, 254), (0.999, 254), (254 / 255, 254), (253.5 / 255, 254), (0.5, 128), (0.0, 1)],
)
def test_threshold_one_means_the_most_confident_stored_level(threshold: float, level: int) -> None:
    # Before 255 became nodata, thresholds above 254/255 asked for level 255 (p >= 0.998); on a
    # raster that clips p to 254 that would select nothing, so they select the top level instead.
    assert threshold_to_level(threshold) == level


def test_old_and_new_rasters_give_the_same_cropland_for_every_threshold() -> None:
    # An earlier raster stores round(p * 255) with 255 valid; a current one caps it at 254.
    old = np.arange(256)
    new = np.minimum(old, MAX_LEVEL)
    for level in {threshold_to_level(float(t)) for t in THRESHOLDS}:
        assert ((old >= level) == (new >= level)).all(), level


def test_scale_reads_levels_as_probabilities() -> None:
    assert abs(SCALE * 255 - 1.0) < 1e-15
    assert round(MAX_LEVEL * SCALE, 3) == 0.996
