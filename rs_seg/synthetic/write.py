"""Write: ``rs-seg synth``'s outputs (GeoTIFF scenes, GeoPackage labels, summary).

:func:`generate_scenes` renders each scene strip by strip into a tiled GeoTIFF and, whenever the
renderer is done with a cell, appends its crop parcels (clipped to the scene, in EPSG:4326) to
``fields.gpkg`` in small batches; all inside a staged folder that is renamed into place. Only
the current strip, the cells it touches and a capped GDAL block cache are alive at any time, so
peak memory does not grow with the scene size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from rs_seg.config import SYNTH_LABELS_FILE, SynthConfig
from rs_seg.staging import FolderKind, check_folder_output, staged_dir
from rs_seg.synthetic.landscape import Cell, Landscape, build_landscape, polygon_parts
from rs_seg.synthetic.objects import LandCover
from rs_seg.synthetic.render import CellCache, render_cached_window
from rs_seg.synthetic.scenes import SceneSpec, lay_out_scenes
from rs_seg.synthetic.spectra import band_names

TILE = 256  # GeoTIFF block size
STRIP_ROWS = 256  # rows rendered per strip (one row of tiles)
CHUNK_COLS = 1024  # columns per rendered window, so working memory does not grow with the width
GDAL_CACHE_MB = 128
LABEL_BATCH = 2000  # features buffered before they are appended to the GeoPackage
MIN_LABEL_AREA = 1.0  # px²; slivers smaller than a pixel are dropped from the labels

LABELS_FILE = SYNTH_LABELS_FILE
SUMMARY_FILE = "summary.json"
SYNTH_FOLDER = FolderKind("rs-seg synth", SUMMARY_FILE, ("scenes", LABELS_FILE, SUMMARY_FILE))
"""What ``rs-seg synth`` writes: ``--overwrite`` replaces such a folder and nothing else."""
LABEL_LAYER = "fields"
LABEL_CRS = "EPSG:4326"


# ----------------------------------------------------------------------------------- labels
class _LabelWriter:
    """Appends crop polygons (clipped to the scene, in EPSG:4326) to one GeoPackage layer."""

    def __init__(self, path: Path, epsg: int) -> None:
        self.path = path
        self.to_wgs84 = Transformer.from_crs(epsg, LABEL_CRS, always_xy=True)
        self.rows: list[tuple[str, str]] = []
        self.geoms: list[BaseGeometry] = []
        self.created = False

    def add(self, spec: SceneSpec, cells: Sequence[Cell]) -> None:
        """Queue the crop parcels of finished cells, flushing when the batch is full."""
        scene_box = shapely.box(
            spec.col_off, spec.row_off, spec.col_off + spec.size, spec.row_off + spec.size
        )
        for cell in cells:
            for geom, crop in cell.crops:
                for part in polygon_parts(geom.intersection(scene_box)):
                    if part.area >= MIN_LABEL_AREA:
                        self.geoms.append(self._to_wgs84(part, spec))
                        self.rows.append((spec.scene_id, crop))
        if len(self.geoms) >= LABEL_BATCH:
            self.flush()

    def _to_wgs84(self, geom: BaseGeometry, spec: SceneSpec) -> BaseGeometry:
        """Densify, then map global pixels -> scene CRS -> lon/lat, counter-clockwise shells."""
        world = spec.to_world()

        def project(coords: np.ndarray) -> np.ndarray:
            east = world.a * coords[:, 0] + world.b * coords[:, 1] + world.c
            north = world.d * coords[:, 0] + world.e * coords[:, 1] + world.f
            lon, lat = self.to_wgs84.transform(east, north)
            return np.column_stack([lon, lat])

        moved = shapely.transform(shapely.segmentize(geom, 64.0), project)
        return shapely.orient_polygons(moved)

    def flush(self) -> None:
        """Append the queued features (the first flush creates the layer)."""
        if not self.geoms and self.created:
            return
        columns = {
            "scene_id": [r[0] for r in self.rows],
            "crop": [r[1] for r in self.rows],
            "class": ["cropland"] * len(self.rows),
        }
        frame = gpd.GeoDataFrame(
            {name: pd.Series(values, dtype=object) for name, values in columns.items()},
            geometry=gpd.GeoSeries(self.geoms, crs=LABEL_CRS),
        )
        pyogrio.write_dataframe(
            frame,
            self.path,
            layer=LABEL_LAYER,
            driver="GPKG",
            geometry_type="Polygon",
            append=self.created,
        )
        self.created = True
        self.rows, self.geoms = [], []


# ----------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class SynthResult:
    """Final paths of everything :func:`generate_scenes` wrote."""

    scenes: list[Path]
    labels: Path
    summary: Path


def _profile(spec: SceneSpec, bands: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": spec.size,
        "height": spec.size,
        "count": bands,
        "dtype": "uint16",
        "crs": f"EPSG:{spec.epsg}",
        "transform": spec.transform,
        "nodata": 0,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }


def _windows(size: int, top: int, height: int) -> Iterator[Window]:
    for left in range(0, size, CHUNK_COLS):
        yield Window(left, top, min(CHUNK_COLS, size - left), height)


def _write_scene(
    landscape: Landscape,
    spec: SceneSpec,
    path: Path,
    labels: _LabelWriter,
    on_strip: Callable[[], None],
) -> dict[str, Any]:
    """Render a scene strip by strip; returns its summary entry."""
    cache = CellCache(landscape)
    counts = np.zeros(len(LandCover), dtype=np.int64)
    with rasterio.open(path, "w", **_profile(spec, len(landscape.bands))) as dst:
        for band, (name, wavelength) in enumerate(landscape.bands, start=1):
            dst.set_band_description(band, name)
            dst.update_tags(band, wavelength_nm=wavelength)
        for top in range(0, spec.size, STRIP_ROWS):
            height = min(STRIP_ROWS, spec.size - top)
            for window in _windows(spec.size, top, height):
                rendered = render_cached_window(landscape, cache, spec, window)
                dst.write(rendered.values, window=window)
                counts += np.bincount(rendered.classes.ravel(), minlength=len(LandCover))
            labels.add(spec, cache.release_above(spec.row_off + top + height))
            on_strip()
        labels.add(spec, cache.release_above(math.inf))
    return _scene_summary(spec, path, counts)


def _scene_summary(spec: SceneSpec, path: Path, counts: np.ndarray) -> dict[str, Any]:
    total = int(counts.sum())
    valid = total - int(counts[LandCover.NODATA])
    fractions = {
        lc.name.lower(): int(counts[lc]) / valid if valid else 0.0 for lc in LandCover if lc
    }
    return {
        "scene_id": spec.scene_id,
        "path": f"scenes/{path.name}",
        "width": spec.size,
        "height": spec.size,
        "crs": f"EPSG:{spec.epsg}",
        "transform": list(spec.transform)[:6],
        "bounds": list(spec.bounds),
        "nodata_fraction": int(counts[LandCover.NODATA]) / total,
        "cropland_fraction": fractions["cropland"],
        "class_fractions": fractions,
    }


def _write_summary(path: Path, cfg: SynthConfig, scenes: list[dict[str, Any]]) -> None:
    summary = {
        "config": cfg.model_dump(mode="json"),
        "bands": band_names(cfg.bands),
        "labels": {"path": LABELS_FILE, "layer": LABEL_LAYER, "crs": LABEL_CRS},
        "fractions_note": "cropland_fraction and class_fractions are of the valid pixels",
        "scenes": scenes,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")


def generate_scenes(cfg: SynthConfig, progress: bool = False) -> SynthResult:
    """Write ``cfg.scenes`` synthetic scenes, their crop polygons and a summary into ``cfg.out``.

    Output appears atomically (staged folder renamed into place); an existing output is refused
    unless ``cfg.overwrite``. ``progress`` shows a bar over all strips of all scenes.
    """
    out = Path(cfg.out)
    check_folder_output(out, cfg.overwrite, SYNTH_FOLDER)  # before minutes of landscape work
    landscape = build_landscape(cfg)
    specs = lay_out_scenes(cfg, landscape)
    strips = len(specs) * math.ceil(cfg.size / STRIP_ROWS)
    entries: list[dict[str, Any]] = []
    with (
        staged_dir(out, cfg.overwrite, SYNTH_FOLDER) as staging,
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        tqdm(total=strips, unit="strip", desc="synth", disable=not progress) as bar,
    ):
        (staging / "scenes").mkdir()
        labels = _LabelWriter(staging / LABELS_FILE, cfg.epsg)
        for spec in specs:
            path = staging / "scenes" / f"{spec.scene_id}.tif"
            entries.append(_write_scene(landscape, spec, path, labels, bar.update))
        labels.flush()
        _write_summary(staging / SUMMARY_FILE, cfg, entries)
    return SynthResult(
        scenes=[out / "scenes" / f"{spec.scene_id}.tif" for spec in specs],
        labels=out / LABELS_FILE,
        summary=out / SUMMARY_FILE,
    )


def reuse_or_generate(cfg: SynthConfig, progress: bool = False) -> SynthResult:
    """The scenes of ``cfg.out`` when its summary records these settings, else generate them.

    Scheduled training runs read the same ``synth:`` section every time; regenerating identical
    scenes would cost minutes and make the chips look stale. Only a folder ``rs-seg synth`` wrote
    (it has the summary) is ever replaced, whatever ``cfg.overwrite`` says.
    """
    out = Path(cfg.out)
    summary = out / SUMMARY_FILE
    if summary.is_file():
        stored = json.loads(summary.read_text()).get("config", {})
        wanted = cfg.model_dump(mode="json")
        stored.pop("overwrite", None)
        wanted.pop("overwrite", None)
        if stored == wanted:
            scenes = sorted((out / "scenes").glob("*.tif"))
            return SynthResult(scenes=scenes, labels=out / LABELS_FILE, summary=summary)
    return generate_scenes(cfg.model_copy(update={"overwrite": summary.is_file()}), progress)
