"""The outline helper process: its pipe format, its answers, and what happens when it dies."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rs_seg.infer.boundary_split as boundary_split_module
from rs_seg.errors import RsSegError
from rs_seg.infer.outlines import Outliner, outlines, receive_array, send_array
from rs_seg.infer.vectorize import VectorizeSettings, vectorize
from rs_seg.model.fields import FieldSettings
from tests.infer.test_boundary_split import random_fields, write_fields_prob
from tests.infer.test_vectorize import assert_identical_layers, read_fields

ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.dtype(np.int32), np.dtype(np.bool_), np.dtype(np.float64)]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


@settings(max_examples=50, deadline=None)
@given(arrays=st.lists(ARRAYS, min_size=1, max_size=4))
def test_arrays_cross_the_pipe_unchanged(arrays: list[np.ndarray]) -> None:
    stream = io.BytesIO()
    for array in arrays:
        send_array(stream, array)
    stream.seek(0)
    for array in arrays:
        received = receive_array(stream)
        assert received is not None
        assert received.dtype == array.dtype and received.shape == array.shape
        np.testing.assert_array_equal(received, array)
    assert receive_array(stream) is None  # the end of the stream


def test_a_cut_off_array_reads_as_the_end() -> None:
    stream = io.BytesIO()
    send_array(stream, np.arange(10, dtype=np.int32))
    stream = io.BytesIO(stream.getvalue()[:-3])
    assert receive_array(stream) is None


def strips(count: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(7)
    found = []
    for index in range(count):
        labels = rng.integers(0, 4, (12, 17)).astype(np.int32)
        found.append((labels, labels > 0, 12 * index))
    found.append((np.zeros((3, 17), np.int32), np.zeros((3, 17), bool), 12 * count))  # empty
    return found


def test_the_child_answers_as_this_process_does() -> None:
    requests = strips(4)
    with Outliner(in_child=True) as child:
        for request in requests:
            child.submit(*request)
        answers = [child.result() for _ in requests]
    for request, answer in zip(requests, answers, strict=True):
        expected = outlines(*request)
        if expected is None:
            assert answer is None
            continue
        assert answer is not None
        for got, want in zip(answer, expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_child_that_dies_is_an_error_not_a_hang() -> None:
    with Outliner(in_child=True) as child:
        assert child._child is not None
        child._child.kill()
        child._child.wait()
        child.submit(*strips(1)[0])
        with pytest.raises(RsSegError, match="outline process failed"):
            child.result()


def test_strips_submitted_after_the_child_died_neither_hang_nor_pass() -> None:
    child = Outliner(in_child=True)
    assert child._child is not None
    child._child.kill()
    child._child.wait()
    closed = threading.Event()
    raised: list[BaseException] = []

    def use_and_close() -> None:
        try:
            for request in strips(3):  # the writer stops at the first; the rest must not block
                child.submit(*request)
            child.result()
        except BaseException as exc:
            raised.append(exc)
        finally:
            child.close()
            closed.set()

    thread = threading.Thread(target=use_and_close, daemon=True)
    thread.start()
    assert closed.wait(timeout=30), "submit or close hung on a dead child"
    thread.join()
    assert len(raised) == 1 and isinstance(raised[0], RsSegError)
    assert "outline process failed" in str(raised[0])


def test_split_vectorize_in_the_child_gives_the_same_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extent, boundary = random_fields(np.random.default_rng(3), size=60)
    prob = write_fields_prob(tmp_path / "p.tif", extent, boundary)
    here = VectorizeSettings(FieldSettings(min_area=150), strip_rows=7, fill_holes_below=250)
    vectorize(prob, tmp_path / "here.gpkg", here)
    monkeypatch.setattr(boundary_split_module, "OUTLINE_CHILD_PIXELS", 0)
    vectorize(prob, tmp_path / "child.gpkg", here)
    assert_identical_layers(
        read_fields(tmp_path / "child.gpkg"), read_fields(tmp_path / "here.gpkg")
    )
