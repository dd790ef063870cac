"""The window grid of one scene on threads: read, normalized, predicted, blended, written.

:func:`rs_seg.infer.predict.predict_scene` opens the scene and the scratch raster and hands them
to :class:`ScenePredictor`, which keeps the model fed: the scene is read in block-row chunks on
reading threads, windows are normalized into batches on preparation threads, the model runs on
the calling thread, and one writer thread blends the predictions into a rolling strip buffer
(:class:`StripBuffer`, one window tall, Hann-weighted) and writes the rows no later window
touches. Every queue is bounded, so memory follows the scene's width, never its height.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from rs_seg.errors import RsSegError
from rs_seg.levels import MAX_LEVEL, NODATA_LEVEL
from rs_seg.windows import (
    axis_offsets,
    axis_weight,
    hann_weight,
    loaded_in_order,
    read_padded,
    thread_pool,
    window_stride,
)

if TYPE_CHECKING:
    import torch

    from rs_seg.model.bundle import ModelBundle


QUEUED_ROWS_BYTES = 4 * 2**20
"""The masks of the grid rows read but not yet taken by the writer, at most (two rows at least).

The model's batches keep the writer's pace (:meth:`ScenePredictor._predict`), but rows whose
windows are all nodata yield no batch: without a bound they would be read and queued for the
writer as fast as the reading threads go, each with a mask of a window's height and the
scene's width, so memory would grow with the height of an all-nodata or sparse scene. Counted in
bytes, not rows, so a narrow scene, whose batches span many rows, is never held up by it.
"""


def rows_queued(size: int, width: int) -> int:
    """How many grid rows' packed masks (``size x width`` bits) fit in :data:`QUEUED_ROWS_BYTES`."""
    return max(2, QUEUED_ROWS_BYTES // max(1, size * width // 8))


class BatchModel(Protocol):
    """What scene prediction needs of a model (``rs_seg.model.predictor.WindowPredictor`` is one).

    Tests hand ``predict_scene`` a model of their own (``tests.helpers.FunctionPredictor``).
    """

    bundle: ModelBundle
    band_index: np.ndarray
    autocast: torch.dtype | None  # the forward pass's autocast, recorded in the raster's tags

    def normalize(
        self, image: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """A window's bands normalized as in training, into ``out`` when given."""
        ...

    def in_model_layout(self, batch: np.ndarray) -> np.ndarray:
        """The batch in the memory layout the network reads."""
        ...

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, bands, H, W) normalized windows -> (N, outputs, H, W) probabilities."""
        ...


MAX_AUTO_WORKERS = 8  # each worker keeps one batch ahead: 16 MB at batch 16, 4 bands, 256 px


def resolve_workers(workers: int | None) -> int:
    """Preparation threads: ``None`` gives one per usable core, at most :data:`MAX_AUTO_WORKERS`."""
    if workers is not None:
        if workers < 1:
            raise RsSegError(f"workers must be at least 1, got {workers}")
        return workers
    return max(1, min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0))))


@dataclass
class StripBuffer:
    """Hann-weighted sums of the predictions over the rows one window tall below a grid row.

    The weights themselves are not summed: a window grid is the product of its row and column
    offsets, so the weight of every pixel is the product of a row sum and a column sum
    (:func:`rs_seg.windows.axis_weight`). Windows skipped as all nodata are counted in those sums,
    but every pixel they cover is nodata, so no pixel that gets a level is off. Summing a
    weight raster as well would cost a float32 strip of the scene's width, a second add per
    window pixel and its shift per grid row.
    """

    height: int
    width: int
    column_factor: np.ndarray  # 1 over each column's weight sum (width,), float32
    outputs: int = 1

    def __post_init__(self) -> None:
        self.prob = np.zeros((self.outputs, self.height, self.width), dtype=np.float32)
        # finish's results and its nodata mask, reused: fresh arrays of the strip's width per
        # grid row leave the allocator's heaps fragmented, so peak memory grows with the width
        self.levels = np.empty_like(self.prob, dtype=np.uint8)
        self.nodata = np.empty((self.height, self.width), dtype=bool)

    def add(self, col: int, prob: np.ndarray, weight: np.ndarray) -> None:
        """Blend one window's prediction (outputs x rows x cols, cropped to the scene).

        ``prob`` is weighted in place: it is spent once blended.
        """
        _, rows, cols = prob.shape
        prob *= weight
        self.prob[:, :rows, col : col + cols] += prob

    def finish(
        self, rows: int, row_factor: np.ndarray, valid: np.ndarray, span: tuple[int, int]
    ) -> np.ndarray:
        """uint8 levels (outputs x rows x width) of the top rows: 0-254, nodata pixels 255.

        ``row_factor``: 255 over the rows' weight sums (the buffer's column factor: 1 over the
        columns'); ``valid``: the scene's valid pixels of these rows in the columns ``span``
        (start, stop), outside which none is valid. The rows are scaled in place, so they are
        spent: :meth:`advance` drops them next. The levels are a view of a buffer that the next
        call overwrites. Clipping to 254 before rounding is the same as rounding and capping 255
        at 254. Only the span is computed: the rest is nodata whatever its sums (most of a
        mostly empty scene).
        """
        start, stop = span
        levels = self.levels[:, :rows]
        if stop == start or not valid[:rows].any():  # the span may hold data only further down
            levels.fill(NODATA_LEVEL)
            return levels
        if stop - start < self.width:
            levels.fill(NODATA_LEVEL)
        prob = self.prob[:, :rows, start:stop]
        prob *= self.column_factor[start:stop]
        prob *= row_factor[:, None]
        np.clip(prob, 0, MAX_LEVEL, out=prob)
        np.rint(prob, out=prob)
        spanned = levels[:, :, start:stop]
        np.copyto(spanned, prob, casting="unsafe")
        nodata = np.logical_not(valid[:rows], out=self.nodata[:rows, : stop - start])
        np.copyto(spanned, NODATA_LEVEL, where=nodata)
        return levels

    def advance(self, rows: int) -> None:
        """Drop the finished top rows and shift the rest up.

        Copied a block of ``rows`` at a time, top down: no block overlaps its source, so no
        temporary copy of the rows kept is needed (numpy makes one for overlapping views).
        """
        keep = self.height - rows
        for top in range(0, max(keep, 0), rows):
            count = min(rows, keep - top)
            self.prob[:, top : top + count] = self.prob[:, top + rows : top + rows + count]
        self.prob[:, max(keep, 0) :] = 0


# A strip as rows of the chunks it spans: (first row within the strip, image, valid) views.
StripPieces = list[tuple[int, np.ndarray, np.ndarray]]


def _strip_reader(
    sources: Sequence[rasterio.io.DatasetReader], row_offsets: list[int], size: int, width: int
) -> Generator[tuple[int, StripPieces, np.ndarray], None, None]:
    """Strips of one window height, in order, each scene row decoded once and never copied.

    The scene is read in chunks of whole block rows (:func:`_chunk_rows`), on one thread per
    open dataset, ahead of the consumer; a strip is handed on as views of the chunks it spans,
    with its validity (``size x width``) as one array, and windows are cut from those views
    when they are normalized. Reading the overlapping strips themselves would decode each block
    row two or three times: GDAL (3.12) decodes the blocks of a large read straight into the
    caller's array without keeping them, and a strip at a stride of 192 px spans two 256 px
    block rows. Views rather than copies, so the strips add no memory of their own.
    """
    src = sources[0]
    chunk = _chunk_rows(src, size)
    end = row_offsets[-1] + size  # the last strip may run past the scene: padded, like a window

    def read(src: rasterio.io.DatasetReader, start: int) -> tuple[int, np.ndarray, np.ndarray]:
        image, valid, _ = read_padded(src, Window(0, start, width, min(chunk, end - start)))
        if not valid.any():  # every pixel invalid: windows take only its mask, so the pixels
            image = np.broadcast_to(np.zeros((), image.dtype), image.shape)  # need not stay
        return start, image, valid

    loads = loaded_in_order(read, sources, range(0, end, chunk), _chunks_ahead(src, chunk, width))
    held: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
    with contextlib.closing(loads) as chunks:  # closed, its reads end before the datasets do
        for top in row_offsets:
            # chunks above the strip go before the next one is read, not beside it
            while held and held[0][0] + held[0][1].shape[1] <= top:
                held.popleft()
            while not held or held[-1][0] + held[-1][1].shape[1] < top + size:
                held.append(next(chunks))
            pieces = _pieces(held, top, size)
            yield top, pieces, np.concatenate([valid for _, _, valid in pieces], axis=0)
            del pieces  # its views would keep the top chunk while the next is read


def _chunk_rows(src: rasterio.io.DatasetReader, size: int) -> int:
    """Rows per read: whole block rows of band 1, about a window's height (at least one block)."""
    block = max(1, int(src.block_shapes[0][0]))
    return max(block, size // block * block)


READ_AHEAD_BYTES = 48 * 2**20
"""Decoded chunks ahead of the windows being cut, in bytes: a wide scene reads fewer ahead.

Counted in chunks (one per reading thread), read-ahead would grow with the scene's width, since
a chunk is block rows of the whole width; counted in bytes, a wide scene keeps fewer chunks
ahead and a narrow one more. One chunk is still read ahead at any width.
"""


def _chunks_ahead(src: rasterio.io.DatasetReader, rows: int, width: int) -> int:
    """How many chunks of ``rows x width`` pixels fit in :data:`READ_AHEAD_BYTES` (at least 1)."""
    pixel_bytes = 1 + sum(np.dtype(dtype).itemsize for dtype in src.dtypes)  # mask + bands
    return max(1, int(READ_AHEAD_BYTES // (pixel_bytes * rows * width)))


def _pieces(held: deque[tuple[int, np.ndarray, np.ndarray]], top: int, size: int) -> StripPieces:
    """Rows ``top`` to ``top + size`` of consecutive chunks, as views of them."""
    pieces: StripPieces = []
    for start, image, valid in held:
        rows = slice(max(0, top - start), max(0, min(image.shape[1], top + size - start)))
        if rows.stop > rows.start:
            pieces.append((start + rows.start - top, image[:, rows], valid[rows]))
    return pieces


@dataclass
class GridRow:
    """One row of windows on its way through the model: predictions arrive batch by batch.

    ``expected`` is known when the row is read (its windows that are not all nodata), so the
    writer can tell a complete row however its windows were batched. ``results`` holds only the
    predictions not yet blended: those that arrive while an earlier row is still incomplete.
    ``span``: the columns (start, stop) outside which none of the rows the writer finishes with
    this row holds a valid pixel; ``packed_valid``: the valid pixels of those rows and columns,
    a bit each (:func:`numpy.packbits` along the rows). Rows wait in the writer while their
    windows are predicted, on a sparse scene many of them, so each keeps a bit a pixel of its
    span only, not a byte a pixel of the scene's width.
    """

    top: int
    span: tuple[int, int]
    packed_valid: np.ndarray
    expected: int
    results: list[tuple[int, np.ndarray]] = field(default_factory=list)
    blended: int = 0

    @property
    def complete(self) -> bool:
        """Every window of the row (that was not all nodata) is blended."""
        return self.blended == self.expected

    def valid(self) -> np.ndarray:
        """The valid mask (rows x span, bool) of :attr:`packed_valid`."""
        start, stop = self.span
        return np.unpackbits(self.packed_valid, axis=1, count=stop - start).view(bool)


class RowWriter:
    """Blends predictions into the strip buffer and writes finished rows, in grid order.

    It runs on one thread of its own (every call is queued to it in order), so blending, the
    levels and the GeoTIFF writes overlap with the model instead of waiting for it.
    ``on_rows`` gets every block of finished rows after it is written, in order (the COG's
    overviews are built from them: :mod:`rs_seg.infer.overviews`).
    """

    def __init__(
        self,
        dst: rasterio.io.DatasetWriter,
        size: int,
        rows: list[int],
        cols: list[int],
        outputs: int,
        on_rows: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self.dst = dst
        self.on_rows = on_rows
        self.size = size
        self.rows = rows
        column_factor = (1 / axis_weight(cols, size, 0, dst.width)).astype(np.float32)
        self.buffer = StripBuffer(min(size, dst.height), dst.width, column_factor, outputs)
        self.weight = hann_weight(size)
        self.pending: deque[GridRow] = deque()

    def register(self, row: GridRow) -> None:
        """A grid row whose windows are about to be predicted (rows come in order)."""
        self.pending.append(row)
        self.write_complete_rows()

    def deliver(self, places: list[tuple[GridRow, int]], probs: np.ndarray) -> None:
        """One batch of predictions, blended as they come; writes every row it completes."""
        for prob, (row, col) in zip(probs, places, strict=True):
            row.results.append((col, prob))
            if row is self.pending[0]:
                self.write_complete_rows()

    def write_complete_rows(self) -> None:
        """Blend the first grid row's predictions and write the scene rows no later window touches.

        Predictions come in grid order, so the first pending row's are blended on arrival: kept
        until the row is complete, they would hold a float32 window per column.
        """
        while self.pending:
            row = self.pending[0]
            self._blend(row)
            if not row.complete:
                return
            self.pending.popleft()
            self._write_finished(row)

    def _blend(self, row: GridRow) -> None:
        height, width = self.dst.height, self.dst.width
        cut_rows = min(self.size, height - row.top, self.buffer.height)
        for col, prob in row.results:
            cut_cols = min(self.size, width - col)
            self.buffer.add(col, prob[:, :cut_rows, :cut_cols], self.weight[:cut_rows, :cut_cols])
        row.blended += len(row.results)
        row.results.clear()

    def _write_finished(self, row: GridRow) -> None:
        height, width = self.dst.height, self.dst.width
        index = self.rows.index(row.top)
        next_top = self.rows[index + 1] if index + 1 < len(self.rows) else height
        done = next_top - row.top
        row_factor = 255 / axis_weight(self.rows, self.size, row.top, row.top + done)
        levels = self.buffer.finish(done, row_factor.astype(np.float32), row.valid(), row.span)
        self.dst.write(levels, window=Window(0, row.top, width, done))
        if self.on_rows is not None:
            self.on_rows(levels)
        if next_top < height:
            self.buffer.advance(done)


class ScenePredictor:
    """Runs the window grid over one scene and writes the stitched probability raster.

    Four kinds of work overlap, each where it does not hold up the model: the scene is read in
    block-row chunks by ``workers`` threads, each with a dataset of its own, ahead of use
    (:func:`_strip_reader`); windows are normalized into batches by ``workers`` threads, a few
    batches ahead; the model runs on the calling thread; blending and writing run on a writer
    thread (:class:`RowWriter`). numpy and GDAL release the GIL for
    all but the bookkeeping, so on a CPU the stages share the cores and on a GPU the model is
    fed while the host works. Every queue is bounded (batches ahead, writes behind, rows for
    the writer: :data:`QUEUED_ROWS_BYTES`), so memory still depends on the scene's width, not
    its height; an error or a signal drops the queued work and stops every thread before the
    scene closes.
    Batches are always full: they fill across grid rows, so a narrow last batch per row never
    slows the model down.
    """

    def __init__(
        self,
        predictor: BatchModel,
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
        on_rows: Callable[[np.ndarray], None] | None = None,
    ) -> tuple[int, int]:
        """Predict every window and write finished rows; returns (windows, skipped windows).

        ``sources``: the scene opened once per reading thread (at least once); ``on_rows``: as
        for :class:`RowWriter`.
        """
        src = sources[0]
        rows = axis_offsets(src.height, self.size, self.stride)
        cols = axis_offsets(src.width, self.size, self.stride)
        writer = RowWriter(dst, self.size, rows, cols, self.predictor.bundle.outputs, on_rows)
        bar = tqdm(total=len(rows) * len(cols), unit="win", disable=not progress, leave=False)
        reader = _strip_reader(sources, rows, self.size, max(src.width, self.size))
        skipped = 0
        with (
            # closed on the way out, also on an error or a signal: reading threads still at work
            # when the caller closed the scene crashed the process
            contextlib.closing(reader) as strips,
            thread_pool(self.workers, "rs-seg-prep") as prep,
            thread_pool(1, "rs-seg-write") as write,
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
        width = writer.dst.width
        queued = rows_queued(writer.buffer.height, width)
        for top, pieces, valid in strips:
            columns = np.asarray(valid.any(axis=0))  # the columns with a valid pixel
            keep = windows_with_data(columns, cols, self.size)
            span, packed = _valid_span(valid[: writer.buffer.height, :width], columns[:width])
            row = GridRow(top, span, packed, len(keep))
            registered.append(write.submit(writer.register, row))
            while len(registered) > queued:
                registered.popleft().result()  # the writer's pace, also when no batch is yielded
            plan.windows += len(cols)
            plan.skipped += len(cols) - len(keep)
            copied = len(keep) * self.size < SPARSE_ROW * valid.shape[1]
            for col in keep:
                plan.places.append((row, _window_pieces(pieces, col, self.size, copied), col))
                if len(plan.places) == self.batch_size:
                    yield plan
                    plan = _BatchPlan()
            del pieces, valid  # nor here, while the next strip is read
        yield plan

    def _normalized(self, places: list[tuple[GridRow, StripPieces, int]]) -> np.ndarray:
        """The batch's windows, joined from their chunks' rows and normalized (on a worker)."""
        size = self.size
        batch = np.empty((len(places), len(self.predictor.band_index), size, size), np.float32)
        for i, (_, pieces, _) in enumerate(places):
            for first, image, valid in pieces:
                rows = slice(first, first + image.shape[1])
                self.predictor.normalize(image, valid, batch[i][:, rows])
        return self.predictor.in_model_layout(batch)


SPARSE_ROW = 0.25
"""A grid row whose windows with data cover less than this fraction of its width is sparse.

A window is normally handed on as views of the chunks its rows lie in, which keeps each chunk
(block rows x the scene's width) alive until the window's batch is normalized. A batch that
gathers the few windows of many sparse rows would keep the chunks of all of them, each the
scene's width. A sparse row's windows are copied instead: what they keep is their
own pixels, and the copies are few.
"""


def windows_with_data(columns: np.ndarray, cols: list[int], size: int) -> list[int]:
    """The offsets ``cols`` of a strip's windows that hold a valid pixel (the others are skipped).

    ``columns``: which columns of the strip hold one. A running count of them, instead of a
    numpy reduction per window: thousands of them a grid row on a very wide scene.
    """
    counts = np.concatenate(([0], np.cumsum(columns, dtype=np.int64)))
    starts = np.asarray(cols, dtype=np.int64)
    stops = np.minimum(starts + size, len(columns))
    return [int(col) for col in starts[counts[stops] > counts[starts]]]


def _valid_span(valid: np.ndarray, columns: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """A grid row's mask as the writer keeps it: the span of its columns with data, packed.

    ``columns`` (bool, one per column of ``valid``): which hold a valid pixel. Returns the span
    (start, stop) from the first to the last of them and ``valid`` within it, a bit a pixel.
    """
    found = np.flatnonzero(columns)
    start, stop = (int(found[0]), int(found[-1]) + 1) if len(found) else (0, 0)
    return (start, stop), np.packbits(valid[:, start:stop], axis=1)


def _window_pieces(pieces: StripPieces, col: int, size: int, copied: bool) -> StripPieces:
    """One window's parts of a strip's pieces: views, or copies that keep no chunk alive."""
    cut = [(first, image[:, :, col : col + size], valid[:, col : col + size])
           for first, image, valid in pieces]  # fmt: skip
    if copied:
        return [(first, image.copy(), valid.copy()) for first, image, valid in cut]
    return cut


@dataclass
class _BatchPlan:
    """Windows gathered for one batch, and how many grid windows they stand for."""

    places: list[tuple[GridRow, StripPieces, int]] = field(default_factory=list)
    windows: int = 0
    skipped: int = 0
