"""Scene inference: streaming sliding-window prediction stitched into a probability COG.

Windows of the bundle's chip size step over the scene with the chosen overlap (the grid of
:mod:`rs_seg.windows`: the last row and column shift inward, a scene smaller than a window is
padded). Each grid row of windows is read as one strip, predicted in batches, and blended into a
rolling buffer of one window height with a Hann weight, which falls smoothly towards every window
edge, where a CNN's predictions are least reliable, so overlapping predictions fade into each other
without seams. When the next grid row starts, the rows above it are final and are written at once,
so memory is bounded by a few strips and batches and does not depend on the scene's height. The
stages run on threads of their own (:class:`ScenePredictor`), so the model, on a GPU a hundred
times faster than the CPU work around it, is fed without waiting for reads or writes.

The probability raster explains itself to a GIS (:mod:`rs_seg.levels`): uint8 levels
``round(p * 255)``, exactly the levels the threshold was tuned on, clipped to 0-254 (``p = 1``
stores 254 and reads 0.996), with 255 as the nodata value of every band, the band scale 1/255 and
offset 0, so QGIS shows probabilities 0-1 and its band and zonal statistics skip nodata, and band
descriptions. There is no internal mask band any more: QGIS showed it as an extra alpha band and
counted masked pixels as probability 0; GDAL derives the same mask from the nodata value, so
readers of ``read_masks`` / dataset masks (vectorize, split) see nodata as before. Rasters of
earlier releases (internal mask, 255 a valid level, no nodata) still read the same way.

It is written as a tiled GeoTIFF, then copied to a Cloud-Optimized GeoTIFF with overviews (GDAL's
COG driver keeps nodata, scale/offset, descriptions and tags, and averages overviews over valid
pixels only). A QGIS style goes beside it as ``<stem>.qml`` (:func:`write_style`), which QGIS
loads as the layer's default: a colour ramp over 0-1, transparent below 0.3.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

import rs_seg
from rs_seg.bundle import ModelBundle
from rs_seg.config import Precision
from rs_seg.errors import RsSegError
from rs_seg.infer.checks import Compatibility, check_compatibility
from rs_seg.levels import (
    BAND_DESCRIPTIONS,
    MAX_LEVEL,
    NODATA_LEVEL,
    OFFSET,
    SCALE,
    threshold_to_level,
)
from rs_seg.rasters import GDAL_ENV, open_raster
from rs_seg.remote import display
from rs_seg.staging import scratch_path
from rs_seg.windows import (
    axis_offsets,
    hann_weight,
    loaded_in_order,
    read_padded,
    window_stride,
)

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
    "compress": "DEFLATE",  # readable everywhere; level 1: 4x faster than 6, files 10 % larger
    "level": 1,
    # horizontal differencing: a third smaller (a 2-band 4096 px raster: 20 MB instead of 33), as
    # fast to write; every GDAL reads it
    "predictor": 2,
    "blocksize": 512,
    "overviews": "AUTO",
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
    # blocks compressed on every core: the copy runs after the model, nothing else is busy then
    "num_threads": "ALL_CPUS",
}


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RsSegError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


MAX_AUTO_WORKERS = 8  # each worker keeps one batch ahead: 16 MB at batch 16, 4 bands, 256 px


def resolve_workers(workers: int | None) -> int:
    """Preparation threads: ``None`` gives one per usable core, at most :data:`MAX_AUTO_WORKERS`."""
    if workers is not None:
        if workers < 1:
            raise RsSegError(f"workers must be at least 1, got {workers}")
        return workers
    return max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0))))


PRECISIONS: tuple[str, ...] = get_args(Precision)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network's forward pass (None: plain fp32).

    ``auto`` is bf16 on CUDA and fp32 on a CPU, where bf16 is asked for by name (its speed and
    accuracy against fp32 on the NAIP test scenes: BENCHMARKS.md). A CPU without native bf16
    (AVX512-BF16 or AMX) would emulate it slower than fp32, so asking there is an error rather
    than a slow surprise.
    """
    if precision not in PRECISIONS:
        raise RsSegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise RsSegError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    return torch.bfloat16


class WindowPredictor:
    """Normalized windows -> cropland probabilities, in batches, optionally with flip TTA."""

    def __init__(
        self, bundle: ModelBundle, device: torch.device, tta: bool, precision: str = "auto"
    ) -> None:
        self.bundle = bundle
        self.device = device
        self.tta = tta
        net = bundle.build(device)
        # Module.to takes memory_format at runtime; torch's overloads for it leave it out.
        self.net: torch.nn.Module = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.autocast = autocast_dtype(precision, device)
        self.band_index = np.asarray(bundle.bands) - 1

    def normalize(
        self, image: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The bundle's band selection and normalization, exactly as in training."""
        return self.bundle.normalization.apply(image[self.band_index], valid, out)

    def in_model_layout(self, batch: np.ndarray) -> np.ndarray:
        """The batch in the memory the network reads: channels-last, page-locked on CUDA.

        Called on a preparation thread, so the layout copy (5 ms a batch of 16 x 4 x 256 px)
        stays off the model's thread; the array keeps its (N, bands, H, W) shape, only its
        strides change, and ``__call__`` hands it to torch without another copy. Page-locked
        memory (torch caches such blocks) lets the copy to the device run asynchronously.
        """
        n, bands, height, width = batch.shape
        pinned = self.device.type == "cuda"
        # numpy, not torch, copies: torch ops on this thread would wake OpenMP threads that then
        # spin beside the model's (a fifth more CPU time, measured with a null model)
        last = torch.empty((n, height, width, bands), dtype=torch.float32, pin_memory=pinned)
        channels_last: np.ndarray = last.numpy()
        np.copyto(channels_last, batch.transpose(0, 2, 3, 1))
        return channels_last.transpose(0, 3, 1, 2)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, bands, H, W) float32 -> (N, outputs, H, W) float32 probabilities."""
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        if not self.tta:  # the common case: no running sum, no extra copy of the outputs
            return self._probabilities(images).cpu().numpy()
        total: torch.Tensor | None = None
        flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
        for dims in flips:
            prob = self._probabilities(torch.flip(images, dims) if dims else images)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
        assert total is not None
        return (total / len(flips)).cpu().numpy()

    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the network's outputs (extent, and boundary for a fields model)."""
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            logits = self.net(images).float()
        return torch.sigmoid(logits[:, : self.bundle.outputs])


@dataclass
class StripBuffer:
    """Weighted sums of the rows one window tall below the grid row being finished."""

    height: int
    width: int
    outputs: int = 1

    def __post_init__(self) -> None:
        self.prob = np.zeros((self.outputs, self.height, self.width), dtype=np.float32)
        self.weight = np.zeros((self.height, self.width), dtype=np.float32)
        self.valid = np.zeros((self.height, self.width), dtype=bool)

    def add(self, col: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Blend one window's prediction (outputs x rows x cols, cropped to the scene)."""
        _, rows, cols = prob.shape
        self.prob[:, :rows, col : col + cols] += prob * weight
        self.weight[:rows, col : col + cols] += weight

    def finished(self, rows: int) -> np.ndarray:
        """uint8 levels (outputs x rows x width) of the rows: 0-254, nodata pixels 255.

        Clipping to 254 before rounding is the same as rounding and then capping 255 at 254.
        """
        weight = self.weight[:rows]
        covered = weight > 0
        # one factor per pixel, 255 / weight (0 where no window reached): a multiply per band
        # instead of a masked divide and a scale (numpy's where= is many times slower)
        factor = np.zeros((rows, self.width), dtype=np.float32)
        np.divide(np.float32(255), weight, out=factor, where=covered)
        prob = np.multiply(self.prob[:, :rows], factor)
        np.clip(prob, 0, MAX_LEVEL, out=prob)
        levels = np.rint(prob, out=prob).astype(np.uint8)
        levels[:, ~(self.valid[:rows] & covered)] = NODATA_LEVEL
        return levels

    def advance(self, rows: int) -> None:
        """Drop the finished top rows and shift the rest up."""
        keep = self.height - rows
        for array in (self.prob, self.weight, self.valid):
            rows_axis = array.ndim - 2
            view = np.moveaxis(array, rows_axis, 0)
            if keep > 0:
                view[:keep] = view[rows:].copy()
            view[max(keep, 0) :] = 0


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


# A strip as rows of the chunks it spans: (first row within the strip, image, valid) views.
StripPieces = list[tuple[int, np.ndarray, np.ndarray]]


def _strip_reader(
    sources: Sequence[rasterio.io.DatasetReader], row_offsets: list[int], size: int, width: int
) -> Iterator[tuple[int, StripPieces, np.ndarray]]:
    """Strips of one window height, in order, each scene row decoded once and never copied.

    The scene is read in chunks of whole block rows (:func:`_chunk_rows`), on one thread per
    open dataset, ahead of the consumer; a strip is handed on as views of the chunks it spans,
    with its validity (``size x width``) as one array, and windows are cut from those views
    when they are normalized. Reading the overlapping strips themselves decoded each block row
    two or three times: GDAL (3.12) decodes the blocks of a large read straight into the
    caller's array without keeping them, and a strip at a stride of 192 px spans two 256 px
    block rows (4096 px, 4 bands: 21 strip reads at 40 ms against 16 chunk reads). Strips
    copied out of the chunks instead of viewed raised peak RSS at 16384 px from 1308 to 1407
    MB (1016 / 1036 MB at 4096 px; null model, two workers, one run each).
    """
    chunk = _chunk_rows(sources[0], size)
    end = row_offsets[-1] + size  # the last strip may run past the scene: padded, like a window

    def read(src: rasterio.io.DatasetReader, start: int) -> tuple[int, np.ndarray, np.ndarray]:
        image, valid, _ = read_padded(src, Window(0, start, width, min(chunk, end - start)))
        return start, image, valid

    chunks = loaded_in_order(read, sources, range(0, end, chunk))
    held: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
    for top in row_offsets:
        while not held or held[-1][0] + held[-1][1].shape[1] < top + size:
            held.append(next(chunks))
        while held[0][0] + held[0][1].shape[1] <= top:
            held.popleft()
        pieces = _pieces(held, top, size)
        yield top, pieces, np.concatenate([valid for _, _, valid in pieces], axis=0)


def _chunk_rows(src: rasterio.io.DatasetReader, size: int) -> int:
    """Rows per read: whole block rows of band 1, about a window's height (at least one block)."""
    block = max(1, int(src.block_shapes[0][0]))
    return max(block, size // block * block)


def _pieces(held: deque[tuple[int, np.ndarray, np.ndarray]], top: int, size: int) -> StripPieces:
    """Rows ``top`` to ``top + size`` of consecutive chunks, as views of them."""
    pieces: StripPieces = []
    for start, image, valid in held:
        rows = slice(max(0, top - start), max(0, min(image.shape[1], top + size - start)))
        if rows.stop > rows.start:
            pieces.append((start + rows.start - top, image[:, rows], valid[rows]))
    return pieces


def _profile(src: rasterio.io.DatasetReader, count: int = 1) -> dict[str, Any]:
    """The scratch GeoTIFF: uint8 with nodata 255, so no mask band is written (nor copied)."""
    return {
        "driver": "GTiff", "height": src.height, "width": src.width, "count": count,
        "dtype": "uint8", "nodata": NODATA_LEVEL, "crs": src.crs, "transform": src.transform,
        "tiled": True,
        # Scratch file only (copied to the COG): the fastest codec, not the most portable one.
        "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1,
        "bigtiff": "IF_SAFER",
        # GDAL compresses finished blocks in worker threads while the model runs on: the second
        # band of a fields model then costs the model's thread almost nothing
        "num_threads": "ALL_CPUS",
    }  # fmt: skip


@dataclass
class GridRow:
    """One row of windows on its way through the model: predictions arrive batch by batch.

    ``expected`` is known when the row is read (its windows that are not all nodata), so the
    writer can tell a complete row however its windows were batched.
    """

    top: int
    valid: np.ndarray
    expected: int
    results: list[tuple[int, np.ndarray]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every window of the row (that was not all nodata) has its prediction."""
        return len(self.results) == self.expected


class RowWriter:
    """Blends predictions into the strip buffer and writes finished rows, in grid order.

    It runs on one thread of its own (every call is queued to it in order), so blending, the
    levels and the GeoTIFF writes overlap with the model instead of waiting for it.
    """

    def __init__(
        self, dst: rasterio.io.DatasetWriter, size: int, rows: list[int], outputs: int
    ) -> None:
        self.dst = dst
        self.size = size
        self.rows = rows
        self.buffer = StripBuffer(min(size, dst.height), dst.width, outputs)
        self.weight = hann_weight(size)
        self.pending: deque[GridRow] = deque()

    def register(self, row: GridRow) -> None:
        """A grid row whose windows are about to be predicted (rows come in order)."""
        self.pending.append(row)
        self.write_complete_rows()

    def deliver(self, places: list[tuple[GridRow, int]], probs: np.ndarray) -> None:
        """One batch of predictions; writes every row it completes."""
        for prob, (row, col) in zip(probs, places, strict=True):
            row.results.append((col, prob))
        self.write_complete_rows()

    def write_complete_rows(self) -> None:
        """Blend finished grid rows in order and write the scene rows no later window touches."""
        height, width = self.dst.height, self.dst.width
        buffer = self.buffer
        while self.pending and self.pending[0].complete:
            row = self.pending.popleft()
            buffer.valid[:] = row.valid
            for col, prob in row.results:
                cut_rows = min(self.size, height - row.top, buffer.height)
                cut_cols = min(self.size, width - col)
                buffer.add(col, prob[:, :cut_rows, :cut_cols], self.weight[:cut_rows, :cut_cols])
            row.results.clear()
            index = self.rows.index(row.top)
            next_top = self.rows[index + 1] if index + 1 < len(self.rows) else height
            done = next_top - row.top
            self.dst.write(buffer.finished(done), window=Window(0, row.top, width, done))
            if next_top < height:
                buffer.advance(done)


class ScenePredictor:
    """Runs the window grid over one scene and writes the stitched probability raster.

    Four kinds of work overlap, each where it does not hold up the model: the scene is read in
    block-row chunks by ``workers`` threads, each with a dataset of its own, ahead of use
    (:func:`_strip_reader`); windows are normalized into batches by ``workers`` threads, a few
    batches ahead; the model runs on the calling thread; blending and writing run on a writer
    thread (:class:`RowWriter`). numpy and GDAL release the GIL for
    all but the bookkeeping, so on a CPU the stages share the cores and on a GPU the model is
    fed while the host works. Every queue is bounded (batches ahead, writes behind), so memory
    still depends on the scene's width, not its height. Batches are always full: they fill
    across grid rows, so a narrow last batch per row never slows the model down.
    """

    def __init__(
        self,
        predictor: WindowPredictor,
        size: int,
        overlap: float,
        batch_size: int,
        workers: int = 1,
    ) -> None:
        self.predictor = predictor
        self.size = size
        self.stride = window_stride(size, overlap)
        self.batch_size = batch_size
        self.workers = workers

    def run(
        self,
        sources: Sequence[rasterio.io.DatasetReader],
        dst: rasterio.io.DatasetWriter,
        progress: bool,
    ) -> tuple[int, int]:
        """Predict every window and write finished rows; returns (windows, skipped windows).

        ``sources``: the scene opened once per reading thread (at least once).
        """
        src = sources[0]
        rows = axis_offsets(src.height, self.size, self.stride)
        cols = axis_offsets(src.width, self.size, self.stride)
        writer = RowWriter(dst, self.size, rows, self.predictor.bundle.outputs)
        bar = tqdm(total=len(rows) * len(cols), unit="win", disable=not progress, leave=False)
        strips = _strip_reader(sources, rows, self.size, max(src.width, self.size))
        skipped = 0
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="rs-seg-prep") as prep,
            ThreadPoolExecutor(1, thread_name_prefix="rs-seg-write") as write,
        ):
            ahead: deque[tuple[list[tuple[GridRow, int]], Future[np.ndarray]]] = deque()
            # queued writer calls: blending of predicted batches, and rows as they are read
            behind: deque[Future[None]] = deque()
            registered: deque[Future[None]] = deque()
            for batch in self._batches(strips, cols, writer, write, registered):
                skipped += batch.skipped
                bar.update(batch.windows)
                if batch.places:
                    places = [(row, col) for row, _, col in batch.places]
                    ahead.append((places, prep.submit(self._normalized, batch.places)))
                while len(ahead) > self.workers:
                    self._predict(*ahead.popleft(), writer, write, behind, registered)
            while ahead:
                self._predict(*ahead.popleft(), writer, write, behind, registered)
            for queued in (*behind, *registered):
                queued.result()
        bar.close()
        return len(rows) * len(cols), skipped

    def _predict(
        self,
        places: list[tuple[GridRow, int]],
        images: Future[np.ndarray],
        writer: RowWriter,
        write: ThreadPoolExecutor,
        behind: deque[Future[None]],
        registered: deque[Future[None]],
    ) -> None:
        """Run the model on one prepared batch and queue its blending; at most two queued."""
        probs = self.predictor(images.result())
        behind.append(write.submit(writer.deliver, places, probs))
        while len(behind) > 2:
            behind.popleft().result()  # also re-raises a failed write here, on the main thread
        while registered and registered[0].done():
            registered.popleft().result()  # a row without windows is written on register

    def _batches(
        self,
        strips: Iterator[tuple[int, StripPieces, np.ndarray]],
        cols: list[int],
        writer: RowWriter,
        write: ThreadPoolExecutor,
        registered: deque[Future[None]],
    ) -> Iterator[_BatchPlan]:
        """Full batches of windows across grid rows (the last one may be short).

        Each strip's grid row goes to the writer before any of its windows is predicted, so
        the writer knows how many predictions to wait for.
        """
        plan = _BatchPlan()
        for top, pieces, valid in strips:
            keep = [col for col in cols if valid[:, col : col + self.size].any()]
            row = GridRow(top, valid[: writer.buffer.height, : writer.dst.width], len(keep))
            registered.append(write.submit(writer.register, row))
            plan.windows += len(cols)
            plan.skipped += len(cols) - len(keep)
            for col in keep:
                plan.places.append((row, pieces, col))
                if len(plan.places) == self.batch_size:
                    yield plan
                    plan = _BatchPlan()
        yield plan

    def _normalized(self, places: list[tuple[GridRow, StripPieces, int]]) -> np.ndarray:
        """The batch's windows cut from their chunks and normalized (on a worker thread)."""
        size = self.size
        batch = np.empty((len(places), len(self.predictor.band_index), size, size), np.float32)
        for i, (_, pieces, col) in enumerate(places):
            for first, image, valid in pieces:
                rows = slice(first, first + image.shape[1])
                self.predictor.normalize(
                    image[:, :, col : col + size], valid[:, col : col + size], batch[i][:, rows]
                )
        return self.predictor.in_model_layout(batch)


@dataclass
class _BatchPlan:
    """Windows gathered for one batch, and how many grid windows they stand for."""

    places: list[tuple[GridRow, StripPieces, int]] = field(default_factory=list)
    windows: int = 0
    skipped: int = 0


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
) -> PredictSummary:
    """Predict a whole scene into a probability COG at ``prob_path`` (a path the caller owns).

    ``precision``: the forward pass's autocast (:func:`autocast_dtype`). ``workers``: threads
    that read the scene (each with a dataset of its own) and threads that normalize windows
    into batches, as many of each (:func:`resolve_workers`).

    The caller handles atomic publication (``rs_seg.staging.staged_file``); here the raster is built
    as a tiled GeoTIFF beside it and copied to a COG with overviews.
    """
    size = window or bundle.chip_size
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    predictor = WindowPredictor(bundle, resolve_device(device), tta, precision)
    scratch = scratch_path(prob_path, "tiles")
    threads = resolve_workers(workers)
    with rasterio.Env(**GDAL_ENV), open_raster(scene, "scene") as src, ExitStack() as stack:
        if src.crs is None:
            raise RsSegError("scene has no CRS; field polygons need a georeferenced scene", scene)
        compatibility = check_compatibility(src, bundle, scene, size)
        for warning in compatibility.warnings:
            log.warning("%s: %s", scene, warning)
        # one dataset per reading thread: GDAL reads a dataset on one thread at a time
        sources = [src] + [stack.enter_context(open_raster(scene, "scene"))
                           for _ in range(threads - 1)]  # fmt: skip
        try:
            with rasterio.open(scratch, "w", **_profile(src, bundle.outputs)) as dst:
                scene_predictor = ScenePredictor(predictor, size, overlap, batch_size, threads)
                windows, skipped = scene_predictor.run(sources, dst, progress)
                _describe_bands(dst, BAND_DESCRIPTIONS[: bundle.outputs])
                dst.update_tags(**_tags(bundle, scene, size, overlap, tta, started, tags),
                                precision="bf16" if predictor.autocast else "fp32",
                                **compatibility.metadata())  # fmt: skip
            copy_to_cog(scratch, prob_path)
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
        "model": f"{bundle.model['arch']}/{bundle.model['encoder']}",
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

    Validity comes from GDAL's mask of band 1, so a probability raster of either format (nodata
    value, or an earlier release's internal mask) gives the same mask.
    """
    scratch = scratch_path(mask_path, "tiles")
    with rasterio.Env(**GDAL_ENV), rasterio.open(prob_path) as src:
        try:
            with rasterio.open(scratch, "w", **_profile(src)) as dst:
                for top in range(0, src.height, strip_rows):
                    window = Window(0, top, src.width, min(strip_rows, src.height - top))
                    prob, valid = src.read(1, window=window), src.read_masks(1, window=window)
                    binary = (prob >= level).astype(np.uint8)
                    binary[valid == 0] = NODATA_LEVEL
                    dst.write(binary, 1, window=window)
                dst.set_band_description(1, MASK_DESCRIPTION)
                dst.update_tags(
                    values=MASK_VALUES, level=str(level), rs_seg_version=rs_seg.__version__,
                    run_id=run_id,
                )  # fmt: skip
            copy_to_cog(scratch, mask_path)
        finally:
            scratch.unlink(missing_ok=True)


def copy_to_cog(scratch: Path, path: Path) -> None:
    """Copy the tiled scratch GeoTIFF to a COG at ``path`` and check that it reads to the end.

    On a full disk GDAL's COG copy can return without an error (libtiff only logs the failed
    writes) and leave a file cut short, which vectorize would then call corrupt. A COG stores the
    full-resolution blocks last, so reading the last one finds any cut; its read error reaches the
    staging, which reports a full disk as such (measured on a tmpfs filled 2 KiB at a time: every
    truncated copy failed this read, no complete one did).
    """
    rasterio.shutil.copy(scratch, path, **COG_OPTIONS)
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


def window_count(height: int, width: int, size: int, overlap: float) -> int:
    """Number of windows the grid puts over a scene (for benchmarks and progress)."""
    stride = window_stride(size, overlap)
    return len(axis_offsets(height, size, stride)) * len(axis_offsets(width, size, stride))


def megapixels_per_second(summary: PredictSummary) -> float:
    """Scene throughput of a prediction pass."""
    return summary.megapixels / summary.seconds if summary.seconds else math.nan
