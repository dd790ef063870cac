"""Scene inference: streaming sliding-window prediction stitched into a probability COG.

Windows of the bundle's chip size step over the scene with the chosen overlap (the grid of
:mod:`rs_seg.windows`: the last row and column shift inward, a scene smaller than a window is
padded). Each grid row of windows is read as one strip, predicted in batches, and blended into a
rolling buffer of one window height with a Hann weight, which falls smoothly towards every window
edge, where a CNN's predictions are least reliable, so overlapping predictions fade into each other
without seams. When the next grid row starts, the rows above it are final and are written at once,
so memory is bounded by one strip and does not depend on the scene's height.

The probability raster stores ``round(p * 255)`` as uint8, exactly the levels the threshold was
tuned on, with nodata pixels masked by an internal GDAL mask (every 0-255 value is a probability).
It is written as a tiled GeoTIFF, then copied to a Cloud-Optimized GeoTIFF with overviews.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

import rs_seg
from rs_seg.bundle import ModelBundle
from rs_seg.config import InferConfig
from rs_seg.errors import RsSegError
from rs_seg.levels import threshold_to_level
from rs_seg.rasters import GDAL_ENV, open_raster
from rs_seg.staging import scratch_path
from rs_seg.windows import axis_offsets, read_padded

log = logging.getLogger(__name__)

COG_OPTIONS = {
    "driver": "COG",
    "compress": "DEFLATE",  # readable everywhere; level 1: 4x faster than 6, files 10 % larger
    "level": 1,
    "blocksize": 512,
    "overviews": "AUTO",
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
}
DRIFT_Z = 1.0  # warn when a band's scene mean is more than this many training stds away
DRIFT_STD_RATIO = 2.0  # ... or its spread differs by more than this factor
DRIFT_SAMPLE_LATTICE = 4  # drift statistics from a 4 x 4 lattice of windows


def window_stride(size: int, overlap: float) -> int:
    """Step between windows for an overlap fraction (at least one pixel)."""
    return max(1, size - round(size * overlap))


def hann_weight(size: int) -> np.ndarray:
    """2-D Hann weight that is positive everywhere (sampled at pixel centres), float32."""
    ramp = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RsSegError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


@dataclass
class Compatibility:
    """What the scene looks like next to the training data, and what to warn about."""

    warnings: list[str] = field(default_factory=list)
    band_mean: list[float] = field(default_factory=list)
    band_std: list[float] = field(default_factory=list)
    drift_z: list[float] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        """Flat strings for GeoTIFF tags and GeoPackage metadata."""
        return {
            "input_band_mean": ",".join(f"{v:.2f}" for v in self.band_mean),
            "input_band_std": ",".join(f"{v:.2f}" for v in self.band_std),
            "input_drift_z": ",".join(f"{v:.2f}" for v in self.drift_z),
            "input_warnings": " | ".join(self.warnings) or "none",
        }


def check_bands(src: rasterio.io.DatasetReader, bundle: ModelBundle, path: Path) -> None:
    """The scene must have the band count the model was trained on."""
    expected = bundle.band_count or max(bundle.bands)
    if src.count != expected:
        raise RsSegError(
            f"scene has {src.count} bands, the model was trained on {expected}-band imagery "
            f"(it reads bands {bundle.bands}: {', '.join(bundle.band_names)})",
            path,
        )


def _pixel_size_warning(src: rasterio.io.DatasetReader, bundle: ModelBundle) -> str | None:
    if not bundle.pixel_size:
        return None
    trained = float(np.mean(bundle.pixel_size))
    if src.crs is not None and src.crs.is_geographic:
        return f"scene CRS {src.crs} is geographic; the model was trained on {trained:g} m pixels"
    scene = float(np.mean(np.abs(src.res)))
    if max(scene / trained, trained / scene) > 1.5:
        return (
            f"pixel size {scene:g} differs from the training pixel size {trained:g}; "
            "fields will look larger or smaller to the model than in training"
        )
    return None


def _sample_windows(height: int, width: int, size: int) -> list[Window]:
    """Up to 16 windows spread evenly over the scene (a 4 x 4 lattice of window centres)."""
    rows = sorted({int(v) for v in np.linspace(0, max(0, height - size), DRIFT_SAMPLE_LATTICE)})
    cols = sorted({int(v) for v in np.linspace(0, max(0, width - size), DRIFT_SAMPLE_LATTICE)})
    return [Window(c, r, min(size, width), min(size, height)) for r in rows for c in cols]


def check_compatibility(
    src: rasterio.io.DatasetReader, bundle: ModelBundle, path: Path, size: int
) -> Compatibility:
    """Band count (error), pixel size and radiometric drift from the training data (warnings).

    New imagery whose values drift (a new processing baseline, another sensor, haze) silently
    ruins predictions, so the band means and spreads of a sample of windows are compared with the
    normalization the model was trained with, in units of the training standard deviation.
    """
    check_bands(src, bundle, path)
    result = Compatibility()
    warning = _pixel_size_warning(src, bundle)
    if warning:
        result.warnings.append(warning)
    total = np.zeros(len(bundle.bands))
    squares = np.zeros(len(bundle.bands))
    count = 0
    for window in _sample_windows(src.height, src.width, size):
        image, valid, _ = read_padded(src, window)
        pixels = image[np.asarray(bundle.bands) - 1][:, valid].astype(np.float64)
        total += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
    if count == 0:
        return result
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    train_mean = np.asarray(bundle.normalization.mean)
    train_std = np.asarray(bundle.normalization.std)
    z = np.abs(mean - train_mean) / train_std
    ratio = np.maximum(std / train_std, train_std / np.maximum(std, 1e-12))
    result.band_mean, result.band_std, result.drift_z = list(mean), list(std), list(z)
    drifted = [
        f"{name} (mean {m:.1f} vs {tm:.1f} in training = {d:.1f} std; spread x{r:.1f})"
        for name, m, tm, d, r in zip(bundle.band_names, mean, train_mean, z, ratio, strict=True)
        if d > DRIFT_Z or r > DRIFT_STD_RATIO
    ]
    if drifted:
        result.warnings.append(
            "input values differ from the training data in " + "; ".join(drifted)
            + ": check the processing baseline, scaling and band order"
        )  # fmt: skip
    return result


class WindowPredictor:
    """Normalized windows -> cropland probabilities, in batches, optionally with flip TTA."""

    def __init__(self, bundle: ModelBundle, device: torch.device, tta: bool) -> None:
        self.bundle = bundle
        self.device = device
        self.tta = tta
        self.net = bundle.build(device).to(memory_format=torch.channels_last)
        self.autocast = torch.bfloat16 if device.type == "cuda" else None
        self.band_index = np.asarray(bundle.bands) - 1

    def normalize(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The bundle's band selection and normalization, exactly as in training."""
        return self.bundle.normalization.apply(image[self.band_index], valid)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, bands, H, W) float32 -> (N, H, W) float32 probabilities."""
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        flips = [(), (3,), (2,), (2, 3)] if self.tta else [()]
        total = torch.zeros(images.shape[0], *images.shape[2:], device=self.device)
        for dims in flips:
            flipped = torch.flip(images, dims) if dims else images
            with torch.autocast(
                self.device.type, dtype=self.autocast, enabled=self.autocast is not None
            ):
                logits = self.net(flipped).float()
            prob = torch.sigmoid(logits)
            total += (torch.flip(prob, dims) if dims else prob)[:, 0]
        return (total / len(flips)).cpu().numpy()


@dataclass
class StripBuffer:
    """Weighted sums of the rows one window tall below the grid row being finished."""

    height: int
    width: int

    def __post_init__(self) -> None:
        self.prob = np.zeros((self.height, self.width), dtype=np.float32)
        self.weight = np.zeros((self.height, self.width), dtype=np.float32)
        self.valid = np.zeros((self.height, self.width), dtype=bool)

    def add(self, col: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Blend one window's prediction (already cropped to the scene) at column ``col``."""
        rows, cols = prob.shape
        self.prob[:rows, col : col + cols] += prob * weight
        self.weight[:rows, col : col + cols] += weight

    def finished(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 probabilities and the valid mask (255/0) of the top ``rows`` rows."""
        weight = self.weight[:rows]
        covered = weight > 0
        prob = np.zeros((rows, self.width), dtype=np.float32)
        np.divide(self.prob[:rows], weight, out=prob, where=covered)
        np.clip(prob, 0, 1, out=prob)
        prob *= 255
        levels = np.rint(prob, out=prob).astype(np.uint8)
        mask = (self.valid[:rows] & covered).astype(np.uint8) * np.uint8(255)
        levels[mask == 0] = 0
        return levels, mask

    def advance(self, rows: int) -> None:
        """Drop the finished top rows and shift the rest up."""
        keep = self.height - rows
        for array in (self.prob, self.weight, self.valid):
            if keep > 0:
                array[:keep] = array[rows:].copy()
            array[max(keep, 0) :] = 0


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


def _strip_reader(
    src: rasterio.io.DatasetReader, row_offsets: list[int], size: int, width: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Strips of one window height, read one ahead in a thread while the model runs."""

    def read(row: int) -> tuple[int, np.ndarray, np.ndarray]:
        image, valid, _ = read_padded(src, Window(0, row, width, size))
        return row, image, valid

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, row_offsets[0])
        for next_row in [*row_offsets[1:], None]:
            current = pending.result()
            if next_row is not None:
                pending = pool.submit(read, next_row)
            yield current


def _profile(src: rasterio.io.DatasetReader) -> dict[str, Any]:
    return {
        "driver": "GTiff", "height": src.height, "width": src.width, "count": 1,
        "dtype": "uint8", "crs": src.crs, "transform": src.transform, "tiled": True,
        # Scratch file only (copied to the COG): the fastest codec, not the most portable one.
        "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1,
        "bigtiff": "IF_SAFER",
    }  # fmt: skip


@dataclass
class GridRow:
    """One row of windows on its way through the model: predictions arrive batch by batch."""

    top: int
    valid: np.ndarray
    expected: int = 0
    results: list[tuple[int, np.ndarray]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every window of the row (that was not all nodata) has its prediction."""
        return len(self.results) == self.expected


class ScenePredictor:
    """Runs the window grid over one scene and writes the stitched probability raster.

    Batches are always full: they fill across grid rows, and predictions that belong to a later
    row wait (at most one batch of them) until the rows above are blended and written, so a
    narrow last batch per row never slows the model down.
    """

    def __init__(
        self, predictor: WindowPredictor, size: int, overlap: float, batch_size: int
    ) -> None:
        self.predictor = predictor
        self.size = size
        self.stride = window_stride(size, overlap)
        self.batch_size = batch_size
        self.weight = hann_weight(size)
        self._images: list[np.ndarray] = []
        self._places: list[tuple[GridRow, int]] = []

    def run(
        self, src: rasterio.io.DatasetReader, dst: rasterio.io.DatasetWriter, progress: bool
    ) -> tuple[int, int]:
        """Predict every window and write finished rows; returns (windows, skipped windows)."""
        height, width = src.height, src.width
        rows = axis_offsets(height, self.size, self.stride)
        cols = axis_offsets(width, self.size, self.stride)
        buffer = StripBuffer(min(self.size, height), width)
        pending: deque[GridRow] = deque()
        skipped = 0
        bar = tqdm(total=len(rows) * len(cols), unit="win", disable=not progress, leave=False)
        strips = _strip_reader(src, rows, self.size, max(width, self.size))
        for top, image, valid in strips:
            row = GridRow(top, valid[: buffer.height, :width].copy())
            pending.append(row)
            skipped += self._queue_windows(row, image, valid, cols)
            bar.update(len(cols))
            self._write_complete_rows(pending, buffer, dst, rows, height)
        if self._images:
            self._predict_batch()
        self._write_complete_rows(pending, buffer, dst, rows, height)
        bar.close()
        return len(rows) * len(cols), skipped

    def _queue_windows(
        self, row: GridRow, image: np.ndarray, valid: np.ndarray, cols: list[int]
    ) -> int:
        """Queue the strip's windows (normalized one by one) and predict every full batch.

        Windows are normalized separately rather than the strip at once: a queued window then
        holds only itself, not a whole normalized strip (67 MB at 16384 px wide, two of them
        while a batch spans two rows), for about 0.5 % more time.
        """
        skipped = 0
        for col in cols:
            window_valid = valid[:, col : col + self.size]
            if not window_valid.any():
                skipped += 1
                continue
            row.expected += 1
            window = image[:, :, col : col + self.size]
            self._images.append(self.predictor.normalize(window, window_valid))
            self._places.append((row, col))
            if len(self._images) == self.batch_size:
                self._predict_batch()
        return skipped

    def _predict_batch(self) -> None:
        probs = self.predictor(np.stack(self._images))
        for prob, (row, col) in zip(probs, self._places, strict=True):
            row.results.append((col, prob))
        self._images, self._places = [], []

    def _write_complete_rows(
        self,
        pending: deque[GridRow],
        buffer: StripBuffer,
        dst: rasterio.io.DatasetWriter,
        rows: list[int],
        height: int,
    ) -> None:
        """Blend finished grid rows in order and write the scene rows no later window touches."""
        while pending and pending[0].complete:
            row = pending.popleft()
            buffer.valid[:] = row.valid
            width = buffer.width
            for col, prob in row.results:
                cut_rows = min(self.size, height - row.top, buffer.height)
                cut_cols = min(self.size, width - col)
                buffer.add(col, prob[:cut_rows, :cut_cols], self.weight[:cut_rows, :cut_cols])
            index = rows.index(row.top)
            next_top = rows[index + 1] if index + 1 < len(rows) else height
            done = next_top - row.top
            levels, mask = buffer.finished(done)
            dst.write(levels, 1, window=Window(0, row.top, width, done))
            dst.write_mask(mask, window=Window(0, row.top, width, done))
            if next_top < height:
                buffer.advance(done)


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
    progress: bool = False,
    tags: dict[str, str] | None = None,
) -> PredictSummary:
    """Predict a whole scene into a probability COG at ``prob_path`` (a path the caller owns).

    The caller handles atomic publication (``rs_seg.staging.staged_file``); here the raster is built
    as a tiled GeoTIFF beside it and copied to a COG with overviews.
    """
    size = window or bundle.chip_size
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    predictor = WindowPredictor(bundle, resolve_device(device), tta)
    scratch = scratch_path(prob_path, "tiles")
    with rasterio.Env(**GDAL_ENV, GDAL_TIFF_INTERNAL_MASK=True), open_raster(scene, "scene") as src:
        if src.crs is None:
            raise RsSegError("scene has no CRS; field polygons need a georeferenced scene", scene)
        compatibility = check_compatibility(src, bundle, scene, size)
        for warning in compatibility.warnings:
            log.warning("%s: %s", scene, warning)
        try:
            with rasterio.open(scratch, "w", **_profile(src)) as dst:
                windows, skipped = ScenePredictor(predictor, size, overlap, batch_size).run(
                    src, dst, progress
                )
                dst.update_tags(**_tags(bundle, scene, size, overlap, tta, started, tags),
                                **compatibility.metadata())  # fmt: skip
            rasterio.shutil.copy(scratch, prob_path, **COG_OPTIONS)
        finally:
            scratch.unlink(missing_ok=True)
        megapixels = src.width * src.height / 1e6
        pixel_size = float(np.mean(np.abs(src.res)))
    if skipped == windows:
        log.warning("%s: every window is nodata; the outputs will be empty", scene)
    seconds = time.perf_counter() - t0
    return PredictSummary(
        prob_path, windows, skipped, megapixels, seconds, compatibility, pixel_size
    )


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
        "model": f"{bundle.model['arch']}/{bundle.model['encoder']}",
        "threshold": f"{bundle.threshold:.6f}",
        "threshold_level": str(threshold_to_level(bundle.threshold)),
        "scene": str(scene),
        "window": str(size),
        "overlap": f"{overlap:g}",
        "tta": str(tta).lower(),
        "created": started.isoformat(timespec="seconds"),
        "values": "cropland probability x 255; nodata masked",
        **(extra or {}),
    }


def write_binary_mask(
    prob_path: Path, mask_path: Path, level: int, run_id: str = "", strip_rows: int = 1024
) -> None:
    """A 0/1 cropland COG from the probability raster, strip by strip, nodata kept masked."""
    scratch = scratch_path(mask_path, "tiles")
    with rasterio.Env(**GDAL_ENV, GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(prob_path) as src:
        try:
            with rasterio.open(scratch, "w", **_profile(src)) as dst:
                for top in range(0, src.height, strip_rows):
                    window = Window(0, top, src.width, min(strip_rows, src.height - top))
                    prob, valid = src.read(1, window=window), src.read_masks(1, window=window)
                    dst.write(((prob >= level) & (valid > 0)).astype(np.uint8), 1, window=window)
                    dst.write_mask(valid, window=window)
                dst.update_tags(
                    values="1 cropland, 0 background; nodata masked", level=str(level),
                    rs_seg_version=rs_seg.__version__, run_id=run_id,
                )  # fmt: skip
            rasterio.shutil.copy(scratch, mask_path, **COG_OPTIONS)
        finally:
            scratch.unlink(missing_ok=True)


def window_count(height: int, width: int, size: int, overlap: float) -> int:
    """Number of windows the grid puts over a scene (for benchmarks and progress)."""
    stride = window_stride(size, overlap)
    return len(axis_offsets(height, size, stride)) * len(axis_offsets(width, size, stride))


def megapixels_per_second(summary: PredictSummary) -> float:
    """Scene throughput of a prediction pass."""
    return summary.megapixels / summary.seconds if summary.seconds else math.nan


# --- The whole command: scene -> probability COG (+ mask) -> field polygons ----------------------


@dataclass(frozen=True)
class InferSummary:
    """Where the outputs are and what it took."""

    fields: Path
    prob: Path
    mask: Path | None
    polygons: int
    area_ha: float
    predict: PredictSummary
    vectorize_seconds: float
    warnings: list[str]

    def report(self) -> str:
        """What the CLI prints."""
        p = self.predict
        lines = [
            f"{self.polygons} fields ({self.area_ha:,.1f} ha) -> {self.fields}",
            f"probability COG: {self.prob}" + (f"   mask: {self.mask}" if self.mask else ""),
            f"{p.windows} windows ({p.skipped_windows} all nodata), {p.megapixels:.1f} Mpx in "
            f"{p.seconds:.1f} s ({megapixels_per_second(p):.2f} Mpx/s); "
            f"polygons in {self.vectorize_seconds:.1f} s",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_model(model: Path | None, models_dir: Path) -> ModelBundle:
    """The given bundle, or the registry's latest model."""
    if model is None:
        from rs_seg.ops.registry import latest_bundle

        model = latest_bundle(models_dir)
        log.info("model: %s (latest in %s)", model, models_dir)
    return ModelBundle.load(model)


def run_infer(cfg: InferConfig, progress: bool = False) -> InferSummary:
    """Predict a scene and vectorize it; the outputs appear together, complete, or not at all.

    Nothing is read or computed before the outputs are known to be free or rs_seg's own, and
    none of them is an input. The probability raster (and mask) and the fields are published as
    one set (:func:`rs_seg.staging.staged_files`, fields last), and all of them carry the same
    ``run_id``, so a reader can tell files of one run from a mix.
    """
    from rs_seg.infer.vectorize import VectorizeSettings, vectorize
    from rs_seg.staging import staged_files

    outputs, owned = _outputs(cfg)
    check_infer_outputs(cfg)
    bundle = load_model(cfg.model, cfg.models_dir)
    threshold = cfg.threshold or bundle.threshold
    run_id = uuid.uuid4().hex[:12]
    with staged_files(outputs, cfg.overwrite, owned) as staged:
        prob, fields = staged[0], staged[-1]
        mask = staged[1] if cfg.mask_out else None
        predicted = predict_scene(
            cfg.scene, bundle, prob, window=cfg.window, overlap=cfg.overlap,
            batch_size=cfg.batch_size, device=cfg.device, tta=cfg.tta, progress=progress,
            tags={"threshold_used": f"{threshold:.6f}", "run_id": run_id},
        )  # fmt: skip
        if mask is not None:
            write_binary_mask(prob, mask, threshold_to_level(threshold), run_id)
        pixel = predicted.pixel_size
        settings = VectorizeSettings(
            threshold=threshold,
            min_area=cfg.min_area,
            simplify=pixel if cfg.simplify is None else cfg.simplify,
            fill_holes_below=cfg.min_area if cfg.fill_holes_below is None else cfg.fill_holes_below,
        )
        metadata = {
            "model_id": bundle.model_id,
            "threshold": f"{threshold:.6f}",
            "scene": str(cfg.scene),
            "probability_raster": str(cfg.prob_path),
            "source": cfg.prob_path.name,
            "run_id": run_id,
            **predicted.compatibility.metadata(),
        }
        vectorized = vectorize(
            prob, fields, settings, scene=cfg.scene.stem, model_id=bundle.model_id,
            progress=progress, metadata=metadata, publish=False,
        )  # fmt: skip
    return InferSummary(
        fields=cfg.out,
        prob=cfg.prob_path,
        mask=cfg.mask_out,
        polygons=vectorized.polygons,
        area_ha=vectorized.area_ha,
        predict=predicted,
        vectorize_seconds=vectorized.seconds,
        warnings=predicted.compatibility.warnings,
    )


def _outputs(cfg: InferConfig) -> tuple[list[Path], list[Callable[[Path], bool]]]:
    """Outputs in publication order (fields last) with the recognizer of each one's owner."""
    from rs_seg.staging import fields_written_by_rs_seg, raster_written_by_rs_seg

    rasters = [cfg.prob_path, *([cfg.mask_out] if cfg.mask_out else [])]
    outputs = [Path(p) for p in [*rasters, cfg.out]]
    return outputs, [raster_written_by_rs_seg] * len(rasters) + [fields_written_by_rs_seg]


def check_infer_outputs(cfg: InferConfig) -> None:
    """Refuse before any work: outputs that collide, replace an input, or are not rs_seg's own."""
    from rs_seg.staging import check_distinct, check_file_output, check_not_inputs

    outputs, owned = _outputs(cfg)
    check_distinct(outputs)
    check_not_inputs(outputs, [cfg.scene, cfg.model])
    for path, recognizer in zip(outputs, owned, strict=True):
        check_file_output(path, cfg.overwrite, recognizer)
