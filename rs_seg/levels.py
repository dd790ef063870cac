"""Probabilities as uint8 levels: how thresholds map onto the values probability rasters store.

A probability raster stores ``round(p * 255)`` as uint8 with the GDAL band scale ``1/255`` (offset
0), so a GIS that applies scale/offset (QGIS, GDAL's ``-unscale``, rasterio's ``scales``) reads
probabilities 0-1. Level 255 is reserved for nodata (the raster's nodata value, which GIS
statistics honour): valid probabilities are clipped to levels 0-254, so ``p = 1`` reads back as
254/255 = 0.996, and a stored 254 means ``p >= 253.5/255``.

Thresholds therefore map to levels 1-254 (:func:`threshold_to_level`): a level of 255 could only be
met by nodata, so it would turn every pixel into background on a raster with a nodata value,
while a raster with an internal mask instead (255 a valid level) would still count its 255s.
Capping at 254 makes both formats give the same cropland for every threshold: ``value >= level``
is the same test on 254 and on 255 when the level is at most 254.

Kept free of heavy imports (no torch, no numpy), so polygonizing a saved raster stays light.
"""

from __future__ import annotations

import math

LEVELS = 256  # uint8 values; histograms over levels keep 256 bins (255 holds nothing valid)
NODATA_LEVEL = 255  # what masked pixels store, and the rasters' nodata value
MAX_LEVEL = 254  # the highest level a probability is stored as (p = 1 included)
SCALE = 1 / 255  # GDAL band scale: value * SCALE + OFFSET = probability
OFFSET = 0.0
# Band descriptions of the probability raster: band 1 is what every model predicts, fields models
# add band 2. Vectorize checks a two-band raster's names against them, so swapped bands are never
# split by the extent; the short names "cropland", "boundary" are accepted as well.
BAND_DESCRIPTIONS = ("cropland probability", "boundary probability")


def level_to_threshold(level: int) -> float:
    """A uint8 level as the probability threshold stored in bundles (level / 255)."""
    return round(level / 255, 6)


def threshold_to_level(threshold: float) -> int:
    """The uint8 level for a probability threshold (inverse of :func:`level_to_threshold`).

    Always 1-254: a threshold of 0 still needs ``p >= 0.5/255`` (level 1), and one of 1.0 (or
    anything above 253.5/255 that rounds up to 255) means the most confident level a raster
    stores, 254, never 255, which only nodata holds (see the module docstring).
    """
    value = threshold * 255
    nearest = round(value)  # stored thresholds are level / 255 rounded to 6 decimals
    level = nearest if abs(value - nearest) < 1e-3 else math.ceil(value)
    return max(1, min(MAX_LEVEL, level))
