"""Cutting one scene into georeferenced image/mask chip pairs, one strip of chips at a time.

Only one strip of windows is in memory at once (plus GDAL's bounded block cache), so memory does not
grow with the scene. Every chip records what the index needs: where it is, how much of it is nodata,
how many pixels are labelled and how many are cropland.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rs_seg.config import MASK_BOUNDARY, MASK_CROPLAND, MASK_IGNORE, LabelMap
from rs_seg.errors import RsSegError
from rs_seg.prepare.labels import WindowMasks
from rs_seg.prepare.raster_labels import LabelValueCounts, check_label_raster, open_raster_labels
from rs_seg.prepare.vector_labels import (
    FeatureCounts,
    VectorLayer,
    VectorWindowMasks,
    boundary_width_units,
)
from rs_seg.rasters import (
    GDAL_ENV,
    RasterInfo,
    large_blocks_off_the_heap,
    open_raster,
)
from rs_seg.windows import GridWindow, grid_rows, grid_windows, read_padded


@dataclass(frozen=True)
class SceneInput:
    """One raster to cut into chips; ``mask`` is its own label raster when labels are rasters."""

    name: str
    image: Path
    mask: Path | None = None


class LabelSource(Protocol):
    """Where a scene's labels come from; binds to one scene at a time."""

    def bind(
        self, scene: SceneInput, info: RasterInfo
    ) -> contextlib.AbstractContextManager[WindowMasks]:
        """Open the labels of ``scene`` as per-window masks."""

    def feature_counts(self) -> FeatureCounts | None:
        """What became of the label features (whole layer, each feature once); None for rasters."""

    def check(self, scenes: list[SceneInput]) -> None:
        """Check what can be checked from headers for ``scenes``; raises :class:`RsSegError`."""


@dataclass
class VectorLabels:
    """Polygons (any CRS), one per field; everything else in the scene is background.

    ``boundary_width`` (metres; None: 2 pixels of each scene; 0: none) is the band burned along
    every outline (:data:`rs_seg.config.MASK_BOUNDARY`), which keeps touching fields apart.
    """

    layer: VectorLayer
    boundary_width: float | None = None

    def bind(
        self, scene: SceneInput, info: RasterInfo
    ) -> contextlib.AbstractContextManager[WindowMasks]:
        """Polygons are fetched per strip; nothing stays open."""
        width = 0.0 if self.boundary_width == 0 else boundary_width_units(self.boundary_width, info)
        return contextlib.nullcontext(VectorWindowMasks(self.layer, info, width))

    def feature_counts(self) -> FeatureCounts:
        """Counted once when the layer was opened, so the same for every scene."""
        return self.layer.counts

    def check(self, scenes: list[SceneInput]) -> None:
        """Nothing left to check: the layer was checked when it was opened."""


@dataclass
class RasterLabels:
    """Label rasters with a value mapping: one for all scenes, or one per scene (``scene.mask``).

    Band 1 of each raster holds the labels (see
    :func:`rs_seg.prepare.raster_labels.open_raster_labels`). The label map is checked against a
    shared raster's header when this is made (in the plan, before anything is written) and
    against a per-scene raster's header when its scene is bound, before any pixel of it is read;
    :meth:`check` checks every scene's raster at once.
    """

    label_map: LabelMap
    shared_path: Path | None = None

    def __post_init__(self) -> None:
        if self.shared_path is not None:
            check_label_raster(self.shared_path, self.label_map)

    def check(self, scenes: list[SceneInput]) -> None:
        """Check the label map against the header of every scene's label raster (no pixels)."""
        for path in dict.fromkeys(s.mask or self.shared_path for s in scenes):
            if path is not None:
                check_label_raster(path, self.label_map)

    def bind(
        self, scene: SceneInput, info: RasterInfo
    ) -> contextlib.AbstractContextManager[WindowMasks]:
        """Open this scene's label raster (warped onto the scene grid when needed)."""
        path = scene.mask or self.shared_path
        if path is None:
            raise RsSegError("no label raster for this scene", scene.image)
        return open_raster_labels(path, self.label_map, info)

    def feature_counts(self) -> None:
        """Label rasters have no features."""
        return None


@dataclass(frozen=True)
class ChipSettings:
    """Chip geometry, the nodata threshold above which a chip is skipped, and compression."""

    size: int
    stride: int
    max_nodata_fraction: float
    compression: str = "zstd"


def compression_options(compression: str, predictor: int | None = None) -> dict[str, Any]:
    """GeoTIFF creation options for a compression name; a predictor suits smooth imagery."""
    if compression == "none":
        return {}
    options: dict[str, Any] = {"compress": compression}
    if predictor is not None:
        options["predictor"] = predictor
    if compression == "zstd":
        options["zstd_level"] = 1
    return options


@dataclass
class SceneChips:
    """Result of chipping one scene: one record per written chip, and what was skipped.

    ``label_features`` describes the whole vector label layer, not this scene (every scene of a
    run carries the same counts, so the summary takes them once); None for label rasters.
    ``label_values`` counts the raw label raster values over this scene's grid (each pixel
    once, summed over scenes by the summary); None for vector labels.
    """

    scene: SceneInput
    info: RasterInfo
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    grid_shape: tuple[int, int] = (0, 0)
    valid_pixels: int = 0
    label_features: FeatureCounts | None = None
    label_values: LabelValueCounts | None = None


def chip_profile(info: RasterInfo, settings: ChipSettings) -> dict[str, Any]:
    """GeoTIFF profile of image chips: the scene's bands, dtype, CRS and nodata.

    GDAL's default strip layout is kept: one 256 px tile per chip writes slower and reads only a
    little faster, a loss overall.
    """
    floating = np.issubdtype(np.dtype(info.dtype), np.floating)
    return {
        "driver": "GTiff",
        "width": settings.size,
        "height": settings.size,
        "count": info.count,
        "dtype": info.dtype,
        "crs": info.crs,
        "nodata": info.nodata,
        "interleave": "pixel",
        **compression_options(settings.compression, predictor=3 if floating else 2),
    }


def mask_profile(info: RasterInfo, settings: ChipSettings) -> dict[str, Any]:
    """GeoTIFF profile of mask chips: uint8, 255 (ignore) as nodata so QGIS shows it transparent."""
    return {
        "driver": "GTiff",
        "width": settings.size,
        "height": settings.size,
        "count": 1,
        "dtype": "uint8",
        "crs": info.crs,
        "nodata": MASK_IGNORE,
        **compression_options(settings.compression),
    }


def _write(
    path: Path,
    array: np.ndarray,
    profile: dict[str, Any],
    transform: Any,
    descriptions: tuple[str | None, ...] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile, transform=transform) as dst:
        dst.write(array if array.ndim == 3 else array[np.newaxis])
        if descriptions:
            dst.descriptions = descriptions


def strip_window(row: list[GridWindow]) -> Window:
    """The smallest window holding every window of one grid row (may extend past the scene)."""
    first, last = row[0].window, row[-1].window
    return Window(
        first.col_off, first.row_off, last.col_off + last.width - first.col_off, first.height
    )


def chip_name(row: int, col: int) -> str:
    """File stem of a chip from its grid position."""
    return f"r{row:03d}_c{col:03d}"


class SceneChipper:
    """Writes the chips of one scene to ``out_dir/{images,masks}/<scene>/<chip>.tif``."""

    def __init__(
        self,
        scene: SceneInput,
        info: RasterInfo,
        settings: ChipSettings,
        out_dir: Path,
        aoi: VectorLayer | None = None,
    ) -> None:
        self.scene = scene
        self.info = info
        self.settings = settings
        self.out_dir = out_dir
        self.aoi = aoi
        self.image_profile = chip_profile(info, settings)
        self.mask_profile = mask_profile(info, settings)
        self.fill = info.nodata if info.nodata is not None else 0

    def windows(self) -> list[GridWindow]:
        """The chip grid of this scene."""
        return grid_windows(
            self.info.height, self.info.width, self.settings.size, self.settings.stride
        )

    def run(self, labels: LabelSource, on_chip: Callable[[], None] | None = None) -> SceneChips:
        """Chip the whole scene; ``on_chip`` is called once per grid window (for progress bars)."""
        windows = self.windows()
        result = SceneChips(self.scene, self.info, label_features=labels.feature_counts())
        result.grid_shape = (windows[-1].row + 1, windows[-1].col + 1)
        with (
            large_blocks_off_the_heap(),
            rasterio.Env(**GDAL_ENV),
            warnings.catch_warnings(),
            open_raster(self.scene.image, "scene") as src,
            labels.bind(self.scene, self.info) as masks,
        ):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            aoi_masks = VectorWindowMasks(self.aoi, self.info) if self.aoi else None
            for row in grid_rows(windows):
                strip = strip_window(row)
                masks.load_strip(strip)
                if aoi_masks is not None:
                    aoi_masks.load_strip(strip)
                for window in row:
                    self._chip(src, window, masks, aoi_masks, result)
                    if on_chip is not None:
                        on_chip()
            result.label_values = masks.label_values()
        if result.valid_pixels == 0:
            raise RsSegError("scene is entirely nodata", self.scene.image)
        return result

    def _chip(
        self,
        src: rasterio.io.DatasetReader,
        window: GridWindow,
        masks: WindowMasks,
        aoi_masks: VectorWindowMasks | None,
        result: SceneChips,
    ) -> None:
        image, valid, inside = read_padded(src, window.window, fill=self.fill)
        inside_count = int(inside.sum())
        valid_count = int(valid.sum())
        result.valid_pixels += valid_count
        nodata_fraction = 1.0 - valid_count / inside_count
        if nodata_fraction > self.settings.max_nodata_fraction:
            result.skipped["mostly_nodata"] += 1
            return
        mask = masks.mask(window.window)
        mask[~valid] = MASK_IGNORE
        if aoi_masks is not None:
            mask[aoi_masks.cover(window.window) != MASK_CROPLAND] = MASK_IGNORE
        labelled = int((mask != MASK_IGNORE).sum())
        if labelled == 0:
            result.skipped["unlabelled"] += 1
            return
        result.records.append(self._write_pair(window, image, mask, nodata_fraction, labelled))

    def _write_pair(
        self, window: GridWindow, image: np.ndarray, mask: np.ndarray, nodata: float, labelled: int
    ) -> dict[str, Any]:
        stem = chip_name(window.row, window.col)
        image_rel = Path("images") / self.scene.name / f"{stem}.tif"
        mask_rel = Path("masks") / self.scene.name / f"{stem}.tif"
        transform = window_transform(window.window, self.info.transform)
        _write(
            self.out_dir / image_rel,
            image,
            self.image_profile,
            transform=transform,
            descriptions=self.info.descriptions if any(self.info.descriptions) else None,
        )
        _write(self.out_dir / mask_rel, mask, self.mask_profile, transform=transform)
        cropland = int(((mask == MASK_CROPLAND) | (mask == MASK_BOUNDARY)).sum())
        size = self.settings.size
        return {
            "chip_id": f"{self.scene.name}/{stem}",
            "scene": self.scene.name,
            "row": window.row,
            "col": window.col,
            "row_off": window.row_off,
            "col_off": window.col_off,
            "size": size,
            "image": image_rel.as_posix(),
            "mask": mask_rel.as_posix(),
            "cropland_px": cropland,
            "labelled_px": labelled,
            "cropland_fraction": cropland / labelled,
            "nodata_fraction": round(nodata, 6),
            "footprint": shapely.box(*rasterio.windows.bounds(window.window, self.info.transform)),
        }
