"""Test chips put back together into their scenes and mapped by ``rs-seg infer``'s own function.

Chip-by-chip object metrics cut every field at a chip edge; a user judges fields on a map. Each
test scene's chips are laid out at their offsets in the scene (the chip index's
``row_off``/``col_off``) into a georeferenced GeoTIFF, which :func:`rs_seg.infer.run.run_infer`
maps as it maps any scene (windows, blending, field settings, polygons). The polygons are burned
back onto the scene's grid and matched with the labelled fields, so the scores a run records
are those of the polygons a user gets. Pixels no test chip covers are nodata for the model and
ignored for the scores. Scenes are handled one at a time and a mosaic is cropped to
``MAX_MOSAIC_SIDE`` pixels a side, so memory stays bounded by one cropped scene whatever the
size of the test split; only the worst and best scenes are kept for the report's figure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize

from rs_seg.config import MASK_CROPLAND, MASK_IGNORE, InferConfig
from rs_seg.infer.field_layer import LAYER
from rs_seg.infer.run import run_infer
from rs_seg.records import ObjectMetrics
from rs_seg.train.dataset import read_chip, read_mask
from rs_seg.train.field_figure import SceneFields
from rs_seg.train.object_metrics import label_components, object_metrics, raster_object_counts

log = logging.getLogger(__name__)
MAX_MOSAIC_SIDE = 4096  # pixels: bounds a mosaic's memory (about 40 bytes a pixel)
NOT_GEOREFERENCED = (
    "Not mapped: the chips have no CRS, and `rs-seg infer` maps only georeferenced scenes."
)
LAYER_NAME = "scene-{index:02d}.gpkg"  # a test scene's field layer in the report (not its name)


@dataclass
class SceneMosaic:
    """One test scene's chips as a scene: all chip bands, labels, and where it lies.

    Attributes:
        image: ``(bands, H, W)`` raw values of every chip band, in the chips' dtype.
        valid: ``(H, W)`` True where a test chip has a valid pixel.
        target: ``(H, W)`` the chips' mask values; ``MASK_IGNORE`` where no chip covers.
        transform: The mosaic's affine transform (the chips' CRS units).
        crs: The chips' CRS; None for chips without one, which cannot be mapped as a scene.
    """

    name: str
    image: np.ndarray
    valid: np.ndarray
    target: np.ndarray
    transform: Affine
    crs: CRS | None

    @property
    def ignore(self) -> np.ndarray:
        """Pixels not labelled (or covered by no chip): left out on both sides of the match."""
        return np.asarray(self.target == MASK_IGNORE)

    @property
    def labelled(self) -> np.ndarray:
        """The labelled fields: the connected interiors the burned boundaries keep apart."""
        return label_components(self.target == MASK_CROPLAND)

    def write(self, path: Path) -> Path:
        """The mosaic as a tiled GeoTIFF with an internal mask: a scene ``rs-seg infer`` maps."""
        bands, height, width = self.image.shape
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": bands,
            "dtype": self.image.dtype.name, "crs": self.crs, "transform": self.transform,
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        }  # fmt: skip
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(self.image)
            dst.write_mask(self.valid.astype(np.uint8) * 255)
        return path


def scene_mosaic(name: str, images: Sequence[Path], masks: Sequence[Path], chips: pd.DataFrame,
               band_count: int) -> SceneMosaic:  # fmt: skip
    """The test chips of one scene (rows of the chip index) at their offsets in the scene.

    ``images`` and ``masks`` are the chip files of ``chips``' rows, in order. Every band of the
    chips is kept, so the model reads its own bands from the mosaic as from the scene.
    """
    top, left = int(chips["row_off"].min()), int(chips["col_off"].min())
    bottom = min(int((chips["row_off"] + chips["size"]).max()), top + MAX_MOSAIC_SIDE)
    right = min(int((chips["col_off"] + chips["size"]).max()), left + MAX_MOSAIC_SIDE)
    shape = (bottom - top, right - left)
    target = np.full(shape, MASK_IGNORE, dtype=np.uint8)
    valid = np.zeros(shape, dtype=bool)
    image: np.ndarray | None = None
    transform, crs = Affine.identity(), None
    all_bands = list(range(1, band_count + 1))
    for image_path, mask_path, (_, chip) in zip(images, masks, chips.iterrows(), strict=True):
        r0, c0 = int(chip["row_off"]) - top, int(chip["col_off"]) - left
        if r0 >= shape[0] or c0 >= shape[1]:
            continue  # beyond the cropped mosaic
        raw, chip_valid = read_chip(image_path, all_bands)
        if image is None:
            image = np.zeros((raw.shape[0], *shape), dtype=raw.dtype)
            transform, crs = _mosaic_grid(image_path, r0, c0)
        mask = read_mask(mask_path)
        rows, cols = min(mask.shape[0], shape[0] - r0), min(mask.shape[1], shape[1] - c0)
        window = np.s_[r0 : r0 + rows, c0 : c0 + cols]
        target[window] = mask[:rows, :cols]
        valid[window] = chip_valid[:rows, :cols]
        image[(slice(None), *window)] = raw[:, :rows, :cols]
    assert image is not None, "a test scene has at least one chip"
    target[~valid] = MASK_IGNORE
    return SceneMosaic(name, image, valid, target, transform, crs)


def _mosaic_grid(chip: Path, row: int, col: int) -> tuple[Affine, CRS | None]:
    """The mosaic's transform and CRS from one chip at ``row``, ``col`` of the mosaic."""
    with rasterio.open(chip) as src:
        return src.transform * Affine.translation(-col, -row), src.crs


def field_ids(layer: Path, scene: SceneMosaic) -> np.ndarray:
    """A field layer burned onto the scene's grid: field ``n`` of the layer has id ``n``."""
    # pyogrio loads geopandas; only evaluation needs it here
    import pyogrio

    geometries = pyogrio.read_dataframe(layer, layer=LAYER).geometry
    shape = scene.valid.shape
    if len(geometries) == 0:
        return np.zeros(shape, dtype=np.int32)
    shapes = zip(geometries, range(1, len(geometries) + 1), strict=True)
    ids: np.ndarray = rasterize(shapes, out_shape=shape, transform=scene.transform, dtype="int32")
    return ids


def score_field_layer(layer: Path, scene: SceneMosaic) -> tuple[ObjectMetrics, np.ndarray]:
    """Object metrics of a field layer against the scene's labelled fields, and its field ids."""
    predicted = field_ids(layer, scene)
    counts = raster_object_counts(predicted, scene.labelled, scene.ignore)
    return object_metrics(counts), predicted


@dataclass
class SceneScores:
    """Object metrics of every test scene, its field layer, and the worst and best to draw."""

    metrics: dict[str, ObjectMetrics] = field(default_factory=dict)
    layers: dict[str, Path] = field(default_factory=dict)
    skipped: str = ""  # why no scene was mapped, when none could be
    worst: SceneFields | None = None
    best: SceneFields | None = None

    def keep(self, scene: SceneFields, scores: ObjectMetrics, layer: Path) -> None:
        """Record a scene's scores; keep it if it is the worst or best so far (by object F1)."""
        self.metrics[scene.name] = scores
        self.layers[scene.name] = layer
        f1 = _f1(scores)
        if self.worst is None or f1 < _f1(self.metrics[self.worst.name]):
            self.worst = scene
        if self.best is None or f1 > _f1(self.metrics[self.best.name]):
            self.best = scene

    def layer_names(self) -> dict[str, str]:
        """The file name of each scene's field layer in the report, numbered in scene order."""
        return {name: LAYER_NAME.format(index=i) for i, name in enumerate(sorted(self.layers), 1)}

    def table(self) -> list[str]:
        """The report's Markdown section: one row per test scene, worst object F1 first."""
        lines = [
            "## Fields on whole test scenes",
            "",
            "Test chips laid out at their places in each scene and mapped by `rs-seg infer` with "
            "the bundle's settings; the polygons are matched with the labelled fields, so fields "
            "crossing chip edges are whole; pixels no test chip covers are ignored (mosaics "
            f"cropped to {MAX_MOSAIC_SIDE} px). Each scene's field layer is in `test_scenes/`.",
            "",
        ]
        if self.skipped:
            return [*lines, self.skipped]
        lines += [
            "| test scene | object F1 | precision | recall | fields predicted / labelled | layer |",
            "|---|---:|---:|---:|---:|---|",
        ]
        files = self.layer_names()
        for name, m in sorted(self.metrics.items(), key=lambda item: _f1(item[1])):
            lines.append(
                f"| {name} | {m['object_f1']:.3f} | {m['object_precision']:.3f} | "
                f"{m['object_recall']:.3f} | {m['fields_predicted']} / {m['fields_labelled']} | "
                f"test_scenes/{files[name]} |"
            )
        return lines

    def shown(self) -> list[SceneFields]:
        """Worst then best; one scene when the test split has one."""
        scenes = [s for s in (self.worst, self.best) if s is not None]
        return scenes[:1] if len(scenes) == 2 and scenes[0] is scenes[1] else scenes


def _f1(scores: ObjectMetrics) -> float:
    value = scores["object_f1"]
    return value if math.isfinite(value) else -1.0


@dataclass(frozen=True)
class SceneMapping:
    """How the test scenes are mapped: the bundle, a scratch folder the caller owns, the device."""

    bundle: Path
    scratch: Path
    device: str = "auto"
    rgb: tuple[int, int, int] = (0, 1, 2)


def score_test_scenes(
    images: Sequence[Path],
    masks: Sequence[Path],
    rows: pd.DataFrame,
    band_count: int,
    mapping: SceneMapping,
) -> SceneScores:
    """Every test scene mosaicked, mapped by :func:`run_infer` and scored.

    ``rows`` are the chip index's test rows, ``images`` and ``masks`` their files in order.
    Chips without a CRS cannot be mapped as a scene (``rs-seg infer`` needs one): then no scene
    is scored and the report says why.
    """
    scores = SceneScores()
    positions = rows.reset_index(drop=True)
    for index, (name, chips) in enumerate(positions.groupby("scene", sort=True), 1):
        picked = [int(str(i)) for i in chips.index]
        scene = scene_mosaic(str(name), [images[i] for i in picked], [masks[i] for i in picked],
                           chips, band_count)  # fmt: skip
        if scene.crs is None:
            log.warning("test scenes not mapped as scenes: the chips have no CRS")
            return SceneScores(skipped=NOT_GEOREFERENCED)
        layer = map_test_scene(scene, mapping, index)
        metrics, predicted = score_field_layer(layer, scene)
        shown = SceneFields(scene.name, scene.image, scene.labelled, predicted, scene.ignore,
                            mapping.rgb)  # fmt: skip
        scores.keep(shown, metrics, layer)
    return scores


def map_test_scene(scene: SceneMosaic, mapping: SceneMapping, index: int) -> Path:
    """Write the scene and map it as ``rs-seg infer`` would, with the bundle's own settings."""
    folder = mapping.scratch / f"scene-{index:02d}"
    folder.mkdir()
    source = scene.write(folder / "scene.tif")
    cfg = InferConfig(
        scene=source, out=folder / "fields.gpkg", model=mapping.bundle, device=mapping.device,
        scene_name=scene.name,
    )  # fmt: skip
    return run_infer(cfg).fields
