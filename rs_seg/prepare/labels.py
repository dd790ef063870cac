"""Label sources: vector polygons or label rasters, turned into 0/1/255 masks window by window.

What chip preparation needs to know of labels whatever their kind: the :class:`WindowMasks`
protocol both kinds implement, and which kind a label path is. Vector labels (polygon layers,
geometry checks and repair, rasterization) are in :mod:`rs_seg.prepare.vector_labels`, label
rasters (label maps, value counts, warped reads) in :mod:`rs_seg.prepare.raster_labels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from rasterio.windows import Window

from rs_seg.prepare.raster_labels import LabelValueCounts

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite"}


class WindowMasks(Protocol):
    """Labels bound to one scene: a 0/1/255 mask for any window of it."""

    def load_strip(self, window: Window) -> None:
        """Fetch what the windows inside ``window`` (a strip of the scene) will need."""

    def mask(self, window: Window) -> np.ndarray:
        """uint8 mask of ``window``: 0 background, 1 cropland, 255 ignore."""

    def label_values(self) -> LabelValueCounts | None:
        """Raw label values read so far, value by value (label rasters); None for polygons."""


def is_vector_path(path: Path) -> bool:
    """Guess from the suffix whether a label path is vector data (else it is a raster)."""
    return Path(path).suffix.lower() in VECTOR_SUFFIXES
