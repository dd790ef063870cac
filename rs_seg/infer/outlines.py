"""Pixel-edge outlines of label strips from GDAL, as flat arrays, here or in a helper process.

GDAL's polygonize holds the GIL and costs about as much as everything else split vectorizing
does to a strip, so on large rasters :class:`Outliner` runs it in a child process
(``python -m rs_seg.infer.outlines``), which polygonizes one strip while this process grows the
fields of the next. The child imports only numpy and rasterio, so it starts quickly, and reads
requests from its stdin and answers on its stdout, in order; the arrays travel as a one-line
JSON header and their raw bytes. It ends when its stdin closes, so a parent that dies or stops
early leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.features import shapes

from rs_seg.errors import RsSegError

# values, vertices, vertex -> ring, ring -> polygon
Rings = tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.intp], npt.NDArray[np.intp]
]


def shape_rings(found: Iterator[tuple[dict[str, Any], float]]) -> Rings | None:
    """GeoJSON-like ``shapes`` output as flat arrays for shapely's vectorized constructors.

    Returns each polygon's value, every vertex, each vertex's ring and each ring's polygon;
    None when there is no polygon.
    """
    rings: list[npt.NDArray[np.float64]] = []
    value_list: list[int] = []
    ring_counts: list[int] = []
    for geometry, value in found:
        coordinates = geometry["coordinates"]
        rings.extend(np.asarray(ring, dtype=np.float64) for ring in coordinates)
        ring_counts.append(len(coordinates))
        value_list.append(int(value))
    if not rings:
        return None
    ring_index = np.repeat(np.arange(len(rings)), [len(ring) for ring in rings])
    polygon_index = np.repeat(np.arange(len(value_list)), ring_counts)
    values = np.array(value_list, dtype=np.int64)
    return values, np.concatenate(rings), ring_index, polygon_index


def outlines(labels: np.ndarray, mask: np.ndarray, row0: int) -> Rings | None:
    """Outlines of the 4-connected regions of one label under ``mask``, rows offset by ``row0``."""
    found = shapes(labels, mask=mask, connectivity=4, transform=Affine.translation(0, row0))
    return shape_rings(found)


class Outliner:
    """:func:`outlines` of strips submitted in order, answered in the same order.

    With ``in_child`` a child process polygonizes, one strip behind; otherwise each answer is
    computed when it is submitted. Either way the caller submits a strip, does other work, and
    takes the answer later, so both run the same code around it.
    """

    def __init__(self, *, in_child: bool) -> None:
        self._done: deque[Rings | None] = deque()
        self._child: subprocess.Popen[bytes] | None = None
        if in_child:
            self._start_child()

    def _start_child(self) -> None:
        command = [sys.executable, "-m", "rs_seg.infer.outlines"]
        self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._requests: queue.Queue[tuple[np.ndarray, np.ndarray, int] | None] = queue.Queue(1)
        self._answers: queue.Queue[Rings | BaseException | None] = queue.Queue()
        # a writer and a reader thread, so neither pipe can fill while the other waits
        self._writer = threading.Thread(target=self._write, daemon=True, name="rs-seg-outline-w")
        self._reader = threading.Thread(target=self._read, daemon=True, name="rs-seg-outline-r")
        self._writer.start()
        self._reader.start()

    def submit(self, labels: np.ndarray, mask: np.ndarray, row0: int) -> None:
        """Ask for the outlines of one strip (``labels`` int32, ``mask`` bool)."""
        if self._child is None:
            self._done.append(outlines(labels, mask, row0))
        else:
            self._hand_to_writer((labels, mask, row0))  # if the child died, result() says so

    def result(self) -> Rings | None:
        """The outlines of the oldest strip not yet answered."""
        if self._child is None:
            return self._done.popleft()
        answer = self._answers.get()
        if isinstance(answer, BaseException):
            raise RsSegError(f"the outline process failed: {answer}") from answer
        return answer

    def close(self) -> None:
        """End the child (its stdin closes; it is killed if it does not exit within 10 s)."""
        child, self._child = self._child, None
        if child is None:
            return
        if not self._hand_to_writer(None, patience=10):
            child.kill()  # hung: the writer's blocked write fails and it stops
        self._writer.join(timeout=10)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        self._reader.join(timeout=10)

    def _hand_to_writer(
        self, item: tuple[np.ndarray, np.ndarray, int] | None, patience: float | None = None
    ) -> bool:
        """Queue ``item`` for the writer; False once it has stopped or ``patience`` s ran out.

        A plain ``put`` would wait forever on a full queue whose writer stopped (the child died).
        """
        deadline = None if patience is None else time.monotonic() + patience
        while self._writer.is_alive():
            if deadline is not None and time.monotonic() > deadline:
                return False
            try:
                self._requests.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Outliner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> None:
        child = self._child
        assert child is not None and child.stdin is not None
        try:
            while (request := self._requests.get()) is not None:
                labels, mask, row0 = request
                send_array(child.stdin, labels)
                send_array(child.stdin, mask)
                send_array(child.stdin, np.array(row0, dtype=np.int64))
                child.stdin.flush()
        except OSError:
            pass  # the child died; the reader reports it
        finally:
            with contextlib.suppress(OSError):
                child.stdin.close()

    def _read(self) -> None:
        child = self._child
        assert child is not None and child.stdout is not None
        try:
            while True:
                count = receive_array(child.stdout)
                if count is None:
                    code = child.wait()
                    self._answers.put(EOFError(f"it exited with code {code}"))
                    return
                arrays = [receive_array(child.stdout) for _ in range(int(count))]
                self._answers.put(None if not arrays else _as_rings(arrays))
        except BaseException as exc:  # handed to the caller of result()
            self._answers.put(exc)


def _as_rings(arrays: list[np.ndarray | None]) -> Rings:
    if any(a is None for a in arrays):
        raise EOFError("its answer was cut off")
    values, coords, ring_index, polygon_index = arrays
    assert values is not None and coords is not None
    assert ring_index is not None and polygon_index is not None
    return values, coords, ring_index, polygon_index


def send_array(stream: IO[bytes], array: np.ndarray) -> None:
    """One array as a JSON header line (dtype, shape) and its C-order bytes."""
    array = np.require(array, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d
    header = {"dtype": array.dtype.str, "shape": list(array.shape)}
    stream.write(json.dumps(header).encode() + b"\n")
    stream.write(array.reshape(-1).data.cast("B"))


def receive_array(stream: IO[bytes]) -> np.ndarray | None:
    """An array written by :func:`send_array`; None at the end of the stream."""
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    array = np.empty(tuple(header["shape"]), dtype=np.dtype(header["dtype"]))
    view = array.reshape(-1).data.cast("B")
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            return None
        filled += got
    return array


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: outlines for every request until ``requests`` ends."""
    while (labels := receive_array(requests)) is not None:
        mask, row0 = receive_array(requests), receive_array(requests)
        if mask is None or row0 is None:
            return
        rings = outlines(labels, mask, int(row0))
        arrays = [] if rings is None else list(rings)
        send_array(answers, np.array(len(arrays), dtype=np.int64))
        for array in arrays:
            send_array(answers, array)
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
