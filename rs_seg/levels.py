"""Probabilities as uint8 levels: how thresholds map onto the 0-255 values rasters store.

Kept free of heavy imports (no torch), so polygonizing a saved probability raster stays light.
"""

from __future__ import annotations

import math

LEVELS = 256


def level_to_threshold(level: int) -> float:
    """A uint8 level as the probability threshold stored in bundles (level / 255)."""
    return round(level / 255, 6)


def threshold_to_level(threshold: float) -> int:
    """The uint8 level for a probability threshold (inverse of :func:`level_to_threshold`)."""
    value = threshold * 255
    nearest = round(value)  # stored thresholds are level / 255 rounded to 6 decimals
    level = nearest if abs(value - nearest) < 1e-3 else math.ceil(value)
    return max(1, min(255, level))
