"""Scene inference: streaming sliding-window prediction stitched into a probability COG.

Windows of the bundle's chip size step over the scene with the chosen overlap (the grid of
:mod:`rs_seg.windows`: the last row and column shift inward, a scene smaller than a window is
padded). Each grid row of windows is read as one strip, predicted in batches, and blended into a
rolling buffer of one window height with a Hann weight, which falls smoothly towards every window
edge, where a CNN's predictions are least reliable, so overlapping predictions fade into each other
without seams. When the next grid row starts, the rows above it are final and are written at once,
so memory is bounded by a few strips and batches and does not depend on the scene's height. The
stages run on threads of their own (:mod:`rs_seg.infer.pipeline`), so the model, on a GPU far
faster than the CPU work around it, is fed without waiting for reads or writes.

The probability raster explains itself to a GIS (:mod:`rs_seg.levels`): uint8 levels
``round(p * 255)``, exactly the levels the threshold was tuned on, clipped to 0-254 (``p = 1``
stores 254 and reads 0.996), with 255 as the nodata value of every band, the band scale 1/255 and
offset 0, so QGIS shows probabilities 0-1 and its band and zonal statistics skip nodata, and band
descriptions. There is no internal mask band: QGIS shows one as an extra alpha band and counts
masked pixels as probability 0, while GDAL derives the same mask from the nodata value, so
readers of ``read_masks`` / dataset masks (vectorize, split) see nodata either way. A raster
with an internal mask instead of a nodata value (255 then a valid level) reads the same way.

It is written as a tiled GeoTIFF, then copied to a Cloud-Optimized GeoTIFF (GDAL's COG driver
keeps nodata, scale/offset, descriptions and tags). Its overviews, averaged over valid pixels
only, are built while the rows are written (:mod:`rs_seg.infer.overviews`), so the copy only
copies. A QGIS style goes beside it as ``<stem>.qml`` (:func:`write_style`), which QGIS
loads as the layer's default: a colour ramp over 0-1, transparent below 0.3.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

import rs_seg
from rs_seg.errors import RsSegError
from rs_seg.infer.checks import Compatibility, check_bands, check_compatibility
from rs_seg.infer.overviews import BLOCK, OverviewPyramid
from rs_seg.infer.pipeline import BatchModel, ScenePredictor, resolve_workers
from rs_seg.levels import (
    BAND_DESCRIPTIONS,
    NODATA_LEVEL,
    OFFSET,
    SCALE,
    threshold_to_level,
)
from rs_seg.model.bundle import ModelBundle
from rs_seg.model.predictor import WindowPredictor, resolve_device
from rs_seg.rasters import GDAL_ENV, open_raster
from rs_seg.remote import display
from rs_seg.staging import scratch_path

log = logging.getLogger(__name__)

_LEVELS_TEXT = (
    "probability = value / 255 (band scale 1/255, offset 0); levels 0-254, p = 1 stored as 254 "
    "(0.996); 255 = nodata"
)
VALUES = {
    "cropland": f"cropland probability; {_LEVELS_TEXT}",
    "fields": f"band 1 cropland probability, band 2 field-boundary probability; {_LEVELS_TEXT}",
}
MASK_DESCRIPTION = "cropland (1) / background (0)"
MASK_VALUES = "1 cropland, 0 background; 255 = nodata"
PROBABILITY_STYLE = "probability.qml"  # QGIS styles shipped in rs_seg/styles, one per raster kind
MASK_STYLE = "mask.qml"

COG_OPTIONS = {
    "driver": "COG",
    "compress": "DEFLATE",  # readable everywhere; level 1: far faster than 6, files barely larger
    "level": 1,
    # horizontal differencing: smaller files, as fast to write; every GDAL reads it
    "predictor": 2,
    "blocksize": BLOCK,  # the overview levels are built on the same block grid
    "overviews": "AUTO",
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
    # blocks compressed on every core: the copy runs after the model, nothing else is busy then
    "num_threads": "ALL_CPUS",
}


@dataclass(frozen=True)
class PredictSummary:
    """What a prediction pass did."""

    prob: Path
    windows: int
    skipped_windows: int
    megapixels: float
    seconds: float
    compatibility: Compatibility
    pixel_size: float  # mean of the scene's pixel width and height, CRS units


def _profile(src: rasterio.io.DatasetReader, count: int = 1) -> dict[str, Any]:
    """The scratch GeoTIFF: uint8 with nodata 255, so no mask band is written (nor copied)."""
    return {
        "driver": "GTiff", "height": src.height, "width": src.width, "count": count,
        "dtype": "uint8", "nodata": NODATA_LEVEL, "crs": src.crs, "transform": src.transform,
        "tiled": True,
        # Scratch file only (copied to the COG): the fastest codec, not the most portable one.
        "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1,
        "interleave": "band",  # rows arrive band by band: written without interleaving
        "bigtiff": "IF_SAFER",
        # GDAL compresses finished blocks in worker threads while the model runs on: the second
        # band of a fields model then costs the model's thread almost nothing
        "num_threads": "ALL_CPUS",
    }  # fmt: skip


def predict_scene(
    scene: Path,
    bundle: ModelBundle,
    prob_path: Path,
    *,
    window: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 16,
    device: str = "auto",
    tta: bool = False,
    workers: int | None = None,
    precision: str = "auto",
    progress: bool = False,
    tags: dict[str, str] | None = None,
    predictor: BatchModel | None = None,
) -> PredictSummary:
    """Predict a whole scene into a probability COG at ``prob_path`` (a path the caller owns).

    ``precision``: the forward pass's autocast (:func:`autocast_dtype`). ``workers``: threads
    that read the scene (each with a dataset of its own) and threads that normalize windows
    into batches, as many of each (:func:`resolve_workers`). ``predictor``: the model of
    ``bundle`` that predicts the windows; ``None`` builds a :class:`WindowPredictor` from
    ``device``, ``tta`` and ``precision`` (tests give a fake model of their own).

    The caller handles atomic publication (``rs_seg.staging.staged_file``); here the raster is built
    as a tiled GeoTIFF beside it and copied to a COG with overviews.
    """
    size = window or bundle.chip_size
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    if predictor is None:
        predictor = WindowPredictor(bundle, resolve_device(device), tta, precision)
    threads = resolve_workers(workers)
    with rasterio.Env(**GDAL_ENV), open_raster(scene, "scene") as src, ExitStack() as stack:
        if src.crs is None:
            raise RsSegError("scene has no CRS; field polygons need a georeferenced scene", scene)
        check_bands(src, bundle, scene)
        # one dataset per reading thread: GDAL reads a dataset on one thread at a time
        sources = [src] + [stack.enter_context(open_raster(scene, "scene"))
                           for _ in range(threads - 1)]  # fmt: skip
        checked = _compatibility_beside(stack, scene, bundle, size)
        with streamed_cog(prob_path, _profile(src, bundle.outputs)) as (dst, add_rows):
            scene_predictor = ScenePredictor(predictor, size, overlap, batch_size, threads)
            windows, skipped = scene_predictor.run(sources, dst, progress, add_rows)
            compatibility = checked.result()
            _describe_bands(dst, BAND_DESCRIPTIONS[: bundle.outputs])
            dst.update_tags(**_tags(bundle, scene, size, overlap, tta, started, tags),
                            precision="bf16" if predictor.autocast else "fp32",
                            **compatibility.metadata())  # fmt: skip
        megapixels = src.width * src.height / 1e6
        pixel_size = float(np.mean(np.abs(src.res)))
    if skipped == windows:
        log.warning("%s: every window is nodata; the outputs will be empty", display(scene))
    seconds = time.perf_counter() - t0
    return PredictSummary(
        prob_path, windows, skipped, megapixels, seconds, compatibility, pixel_size
    )


def _compatibility_beside(
    stack: ExitStack, scene: Path, bundle: ModelBundle, size: int
) -> Future[Compatibility]:
    """The drift sample (:func:`check_compatibility`) on a thread of its own, beside the windows.

    Beside them, its sample windows do not delay the first window, which would matter with a
    model as fast as a GPU's; its warnings are logged as soon as it ends, still at the start of
    the run. The band count was checked before anything started.
    """
    sample = stack.enter_context(open_raster(scene, "scene"))
    pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="rs-seg-check"))
    checked = pool.submit(check_compatibility, sample, bundle, scene, size)

    def log_warnings(done: Future[Compatibility]) -> None:
        if done.exception() is None:
            for warning in done.result().warnings:
                log.warning("%s: %s", display(scene), warning)

    checked.add_done_callback(log_warnings)
    return checked


def _describe_bands(dst: rasterio.io.DatasetWriter, descriptions: tuple[str, ...]) -> None:
    """Band names, and the scale/offset that turn levels into probabilities 0-1 in a GIS."""
    for band, description in enumerate(descriptions, 1):
        dst.set_band_description(band, description)
    dst.scales = (SCALE,) * dst.count
    dst.offsets = (OFFSET,) * dst.count


def _tags(
    bundle: ModelBundle,
    scene: Path,
    size: int,
    overlap: float,
    tta: bool,
    started: dt.datetime,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    """Provenance stored in the probability raster, so a file explains itself in QGIS/gdalinfo."""
    return {
        "rs_seg_version": rs_seg.__version__,
        "model_id": bundle.model_id,
        "model": f"{bundle.model.arch}/{bundle.model.encoder}",
        "threshold": f"{bundle.threshold:.6f}",
        "threshold_level": str(threshold_to_level(bundle.threshold)),
        "scene": display(scene),
        "window": str(size),
        "overlap": f"{overlap:g}",
        "tta": str(tta).lower(),
        "created": started.isoformat(timespec="seconds"),
        "values": VALUES[bundle.task],
        **(extra or {}),
    }


def write_binary_mask(
    prob_path: Path, mask_path: Path, level: int, run_id: str = "", strip_rows: int = 1024
) -> None:
    """A 0/1 cropland COG from the probability raster, strip by strip, nodata 255 kept.

    Validity comes from GDAL's mask of band 1, so a probability raster with a nodata value or
    with an internal mask gives the same mask.
    """
    with (
        rasterio.Env(**GDAL_ENV),
        rasterio.open(prob_path) as src,
        streamed_cog(mask_path, _profile(src)) as (dst, add_rows),
    ):
        for top in range(0, src.height, strip_rows):
            window = Window(0, top, src.width, min(strip_rows, src.height - top))
            prob, valid = src.read(1, window=window), src.read_masks(1, window=window)
            binary = (prob >= level).astype(np.uint8)
            binary[valid == 0] = NODATA_LEVEL
            dst.write(binary, 1, window=window)
            add_rows(binary[None])
        dst.set_band_description(1, MASK_DESCRIPTION)
        dst.update_tags(
            values=MASK_VALUES, level=str(level), rs_seg_version=rs_seg.__version__,
            run_id=run_id,
        )  # fmt: skip


@contextmanager
def streamed_cog(
    path: Path, profile: dict[str, Any]
) -> Iterator[tuple[rasterio.io.DatasetWriter, Callable[[np.ndarray], None]]]:
    """A raster written top to bottom that becomes a COG at ``path`` (a path the caller owns).

    Yields the tiled scratch GeoTIFF to write and the function that takes each block of its
    finished rows (bands x rows x width) for the overviews, in order. Once the block closes
    without an error, the scratch raster and its overviews are copied to the COG; the scratch
    files are removed either way.
    """
    scratch = scratch_path(path, "tiles")
    with OverviewPyramid(scratch, profile) as pyramid:
        try:
            with rasterio.open(scratch, "w", **profile) as dst:
                yield dst, pyramid.add
            copy_to_cog(pyramid.write_vrt(), path, existing_overviews=True)
        finally:
            scratch.unlink(missing_ok=True)
            pyramid.remove()


def copy_to_cog(scratch: Path, path: Path, existing_overviews: bool = False) -> None:
    """Copy the tiled scratch GeoTIFF to a COG at ``path`` and check that it reads to the end.

    ``existing_overviews``: ``scratch`` (a VRT from :mod:`rs_seg.infer.overviews`) has its
    overviews already; otherwise the copy computes them.

    On a full disk GDAL's COG copy can return without an error (libtiff only logs the failed
    writes) and leave a file cut short, which vectorize would then call corrupt. A COG stores the
    full-resolution blocks last, so reading the last one finds any cut; its read error reaches the
    staging, which reports a full disk as such: on a disk filled step by step, every cut copy
    failed this read and no complete one did (BENCHMARKS.md, "Scene inference").
    """
    overviews = "FORCE_USE_EXISTING" if existing_overviews else COG_OPTIONS["overviews"]
    rasterio.shutil.copy(scratch, path, **{**COG_OPTIONS, "overviews": overviews})
    with rasterio.open(path) as src:
        rows, cols = src.block_shapes[0]
        top, left = (src.height - 1) // rows * rows, (src.width - 1) // cols * cols
        src.read(window=Window(left, top, src.width - left, src.height - top))


def style_path(raster: Path) -> Path:
    """The QGIS style sidecar of a raster: ``<stem>.qml`` beside it, the name QGIS loads.

    QGIS takes a file layer's default style from its folder, complete base name and ``.qml``
    (``QgsMapLayer::styleURI``), so ``fields_prob.tif`` gets ``fields_prob.qml``.
    """
    return Path(raster).with_suffix(".qml")


def write_style(path: Path, style: str, run_id: str = "") -> None:
    """Write one of rs_seg's shipped QGIS styles (:data:`PROBABILITY_STYLE`, ...) to ``path``.

    The caller stages ``path`` (published with its raster); the text carries rs_seg's marker
    comment, which is how ``--overwrite`` later knows the file is rs_seg's own, and the run id
    its raster carries, so a style of one run is told from another's like the rasters are.
    """
    text = resources.files("rs_seg.styles").joinpath(style).read_text(encoding="utf-8")
    doctype, _, rest = text.partition("\n")
    stamp = f"<!-- rs_seg run_id: {run_id} -->\n" if run_id else ""
    Path(path).write_text(f"{doctype}\n{stamp}{rest}", encoding="utf-8")


def megapixels_per_second(summary: PredictSummary) -> float:
    """Scene throughput of a prediction pass."""
    return summary.megapixels / summary.seconds if summary.seconds else math.nan
