"""Object metrics: hand cases; properties against a brute-force matcher and across front ends."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

from rs_seg.train.object_metrics import (
    ObjectCounts,
    chip_object_counts,
    counts_from_overlaps,
    label_components,
    match_overlaps,
    object_metrics,
    polygon_object_counts,
    raster_object_counts,
    sum_counts,
)

SIZE = 12
MAX_OBJECTS = 5
PROPERTY = settings(max_examples=100, deadline=None)


def squares(*boxes: tuple[int, int, int, int], size: int = 8) -> np.ndarray:
    """An instance raster: box k (row0, col0, row1, col1) gets id k + 1, later boxes on top."""
    out = np.zeros((size, size), dtype=np.int32)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        out[r0:r1, c0:c1] = k + 1
    return out


def to_polygons(instances: np.ndarray) -> list[Any]:
    """One (multi)polygon per instance id, pixel units (as rasterio.features.shapes traces them)."""
    parts: dict[int, list[Any]] = defaultdict(list)
    data = instances.astype(np.int32)
    for geometry, value in shapes(data, mask=data > 0, connectivity=4):
        parts[int(value)].append(shapely.geometry.shape(geometry))
    return [shapely.union_all(parts[k]) for k in sorted(parts)]


# --- hand cases ----------------------------------------------------------------------------------


def test_two_touching_fields_predicted_as_one_blob_are_one_undersegmentation() -> None:
    labels = squares((0, 0, 4, 4), (0, 4, 4, 8))
    blob = squares((0, 0, 4, 8))
    counts = raster_object_counts(blob, labels)
    assert counts == ObjectCounts(tp=0, fp=1, fn=2, over=0, under=1, predicted=1, labelled=2)
    metrics = object_metrics(counts)
    assert metrics["object_f1"] == 0.0 and math.isnan(metrics["mean_matched_iou"])
    assert metrics["undersegmented"] == 1 and metrics["oversegmented"] == 0


def test_one_field_split_in_two_is_one_oversegmentation() -> None:
    counts = raster_object_counts(squares((0, 0, 4, 4), (0, 4, 4, 8)), squares((0, 0, 4, 8)))
    assert counts == ObjectCounts(tp=0, fp=2, fn=1, over=1, under=0, predicted=2, labelled=1)


def test_exact_match_and_relabelled_ids() -> None:
    labels = squares((0, 0, 3, 3), (4, 4, 8, 8), (0, 5, 2, 8))
    predicted = np.where(labels > 0, 10 - labels, 0)  # same objects, other ids
    counts = raster_object_counts(predicted, labels)
    assert counts == ObjectCounts(tp=3, matched_iou_sum=3.0, predicted=3, labelled=3)
    assert object_metrics(counts) == {
        "object_precision": 1.0,
        "object_recall": 1.0,
        "object_f1": 1.0,
        "mean_matched_iou": 1.0,
        "oversegmented": 0,
        "undersegmented": 0,
        "fields_predicted": 3,
        "fields_labelled": 3,
    }


def test_empty_sides_give_nan_where_undefined() -> None:
    empty = np.zeros((8, 8), dtype=np.int32)
    some = squares((0, 0, 4, 4), (5, 5, 8, 8))
    nothing = object_metrics(raster_object_counts(empty, empty))
    assert all(math.isnan(nothing[k]) for k in ("object_precision", "object_recall", "object_f1"))
    assert nothing["fields_predicted"] == nothing["fields_labelled"] == 0
    only_predicted = object_metrics(raster_object_counts(some, empty))
    assert only_predicted["object_precision"] == 0.0 and only_predicted["object_f1"] == 0.0
    assert math.isnan(only_predicted["object_recall"])
    only_labelled = object_metrics(raster_object_counts(empty, some))
    assert only_labelled["object_recall"] == 0.0 and only_labelled["object_f1"] == 0.0
    assert math.isnan(only_labelled["object_precision"])
    assert raster_object_counts(empty, some) == ObjectCounts(fn=2, labelled=2)
    assert polygon_object_counts([], []) == ObjectCounts()
    assert polygon_object_counts([shapely.box(0, 0, 1, 1)], []) == ObjectCounts(fp=1, predicted=1)


def test_iou_of_exactly_one_half_is_no_match() -> None:
    # 4x4 label, 4x2 prediction inside it: IoU = 8 / 16.
    counts = raster_object_counts(squares((0, 0, 4, 2)), squares((0, 0, 4, 4)))
    assert counts.tp == 0
    counts = raster_object_counts(squares((0, 0, 4, 3)), squares((0, 0, 4, 4)))
    assert counts.tp == 1 and counts.matched_iou_sum == pytest.approx(0.75)


def test_exactly_half_inside_is_not_more_than_half() -> None:
    field = squares((0, 0, 4, 4))  # 16 pixels
    inside, half_inside = (0, 0, 4, 2), (0, 2, 4, 6)  # 8 pixels each, the second 4 inside
    assert raster_object_counts(squares(inside, half_inside), field).over == 0
    assert raster_object_counts(squares(inside, (0, 2, 4, 5)), field).over == 1  # 2/3 inside
    assert raster_object_counts(field, squares(inside, half_inside)).under == 0
    assert raster_object_counts(field, squares(inside, (0, 2, 4, 5))).under == 1


def test_a_field_can_be_matched_and_oversegmented() -> None:
    labels = squares((0, 0, 4, 8))  # 32 pixels
    predicted = squares((0, 0, 4, 7), (0, 7, 4, 8))  # 28-pixel main piece, 4-pixel sliver
    counts = raster_object_counts(predicted, labels)
    assert (counts.tp, counts.fp, counts.over) == (1, 1, 1)


def test_ignored_pixels_leave_both_sides_before_areas_are_taken() -> None:
    labels = squares((0, 0, 4, 4), (6, 6, 8, 8))
    predicted = squares((0, 0, 4, 8))  # the label plus a 4x4 block the mask ignores
    ignore = np.zeros((8, 8), dtype=bool)
    ignore[:, 4:] = True  # also hides the second label entirely
    assert raster_object_counts(predicted, labels).tp == 0
    counts = raster_object_counts(predicted, labels, ignore)
    assert counts == ObjectCounts(tp=1, matched_iou_sum=1.0, predicted=1, labelled=1)
    stack = chip_object_counts(predicted[None], labels[None], ignore[None])
    assert stack == counts


def test_any_integer_ids_work() -> None:
    labels = squares((0, 0, 4, 4), (4, 4, 8, 8)).astype(np.int64) * 10**12
    predicted = labels.astype(np.uint64)
    assert raster_object_counts(predicted, labels).tp == 2
    assert raster_object_counts(labels > 0, labels > 0).tp == 1  # a boolean mask is one object


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="integer"):
        raster_object_counts(np.zeros((4, 4)), np.zeros((4, 4), dtype=int))
    with pytest.raises(ValueError, match="shape"):
        raster_object_counts(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="shape"):
        raster_object_counts(np.zeros((4, 4), int), np.zeros((4, 4), int), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="connectivity"):
        label_components(np.zeros((4, 4), bool), connectivity=6)


def test_label_components_connectivity_and_stacks() -> None:
    diagonal = np.eye(3, dtype=bool)
    assert label_components(diagonal).max() == 3
    assert label_components(diagonal, connectivity=8).max() == 1
    stack = np.ones((3, 4, 4), dtype=bool)  # touching along the stack axis: still 3 objects
    ids = label_components(stack)
    assert [int(np.unique(chip).item()) for chip in ids] == [1, 2, 3]


def test_counts_add_up_and_sum() -> None:
    a = ObjectCounts(1, 2, 3, 0.75, 1, 0, 3, 4)
    b = ObjectCounts(2, 0, 1, 1.5, 0, 2, 2, 3)
    assert a + b == ObjectCounts(3, 2, 4, 2.25, 1, 2, 5, 7)
    assert sum_counts([a, b]) == a + b and sum_counts([]) == ObjectCounts()


def test_polygons_overlapping_on_one_side_are_still_matched_one_to_one() -> None:
    # Two near-identical overlapping labels and one prediction: one match, the better one.
    labels = [shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 9)]
    counts = polygon_object_counts([shapely.box(0, 0, 10, 10)], labels)
    assert (counts.tp, counts.fp, counts.fn, counts.matched_iou_sum) == (1, 0, 1, 1.0)
    matched = match_overlaps([100.0], [100.0, 90.0], [0, 0], [1, 0], [90.0, 100.0])
    assert [m.tolist() for m in matched] == [[0], [0], [1.0]]


def test_polygon_inputs_geodataframes_crs_invalid_and_empty_geometries() -> None:
    labels = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 2, 2), None], crs="EPSG:32615")
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # invalid, made valid
    predicted = gpd.GeoDataFrame(
        geometry=[shapely.box(0, 0, 2, 2), bowtie, shapely.Polygon()], crs="EPSG:32615"
    )
    counts = polygon_object_counts(predicted, labels)
    assert (counts.tp, counts.predicted, counts.labelled) == (1, 2, 1)
    assert polygon_object_counts(predicted.geometry, labels.geometry) == counts
    with pytest.raises(ValueError, match="CRS"):
        polygon_object_counts(predicted.to_crs("EPSG:4326"), labels)
    with pytest.raises(TypeError, match="shapely"):
        polygon_object_counts(["not a geometry"], [])


def test_core_without_pairs() -> None:
    assert counts_from_overlaps([4.0], [5.0, 6.0], [], [], []) == ObjectCounts(
        fp=1, fn=2, predicted=1, labelled=2
    )


# --- brute force ---------------------------------------------------------------------------------


def brute_force(predicted: np.ndarray, labelled: np.ndarray, ignore: np.ndarray) -> ObjectCounts:
    """Counts by the definitions, pixel by pixel, with a maximum matching over all assignments."""
    predicted, labelled = np.where(ignore, 0, predicted), np.where(ignore, 0, labelled)
    pred = [predicted == k for k in np.unique(predicted) if k]
    lab = [labelled == k for k in np.unique(labelled) if k]
    inter = [[int((p & q).sum()) for q in lab] for p in pred]
    iou = [
        [inter[i][j] / int((p | q).sum()) for j, q in enumerate(lab)] for i, p in enumerate(pred)
    ]
    matchings: list[list[tuple[int, int]]] = []

    def assign(i: int, used: frozenset[int], chosen: list[tuple[int, int]]) -> None:
        if i == len(pred):
            matchings.append(chosen)
            return
        assign(i + 1, used, chosen)  # prediction i unmatched
        for j in range(len(lab)):
            if j not in used and iou[i][j] > 0.5:
                assign(i + 1, used | {j}, [*chosen, (i, j)])

    assign(0, frozenset(), [])
    size = max(len(m) for m in matchings)
    best = [m for m in matchings if len(m) == size]
    # The claim the greedy matcher rests on: at IoU > 0.5 the maximum matching is unique, and it
    # holds every pair above 0.5.
    candidates = [(i, j) for i in range(len(pred)) for j in range(len(lab)) if iou[i][j] > 0.5]
    assert len(best) == 1 and best[0] == candidates
    matching = best[0]
    pieces = [
        sum(2 * inter[i][j] > pred[i].sum() for i in range(len(pred))) for j in range(len(lab))
    ]
    merged = [
        sum(2 * inter[i][j] > lab[j].sum() for j in range(len(lab))) for i in range(len(pred))
    ]
    return ObjectCounts(
        tp=len(matching),
        fp=len(pred) - len(matching),
        fn=len(lab) - len(matching),
        matched_iou_sum=sum(iou[i][j] for i, j in matching),
        over=sum(n >= 2 for n in pieces),
        under=sum(n >= 2 for n in merged),
        predicted=len(pred),
        labelled=len(lab),
    )


def close(a: ObjectCounts, b: ObjectCounts) -> bool:
    exact = [f.name for f in dataclasses.fields(ObjectCounts) if f.name != "matched_iou_sum"]
    return all(getattr(a, k) == getattr(b, k) for k in exact) and math.isclose(
        a.matched_iou_sum, b.matched_iou_sum, rel_tol=1e-9, abs_tol=1e-12
    )


@st.composite
def boxes(draw: st.DrawFn, size: int = SIZE) -> tuple[int, int, int, int]:
    r0, c0 = draw(st.integers(0, size - 1)), draw(st.integers(0, size - 1))
    side = size // 2 + 1  # at most about a quarter of the raster, so boxes seldom hide each other
    r1, c1 = draw(st.integers(r0 + 1, r0 + side)), draw(st.integers(c0 + 1, c0 + side))
    return r0, c0, min(r1, size), min(c1, size)


@st.composite
def instance_raster(draw: st.DrawFn, size: int = SIZE, least: int = 0) -> np.ndarray:
    """``least`` to MAX_OBJECTS rectangles painted (later on top) with ids from 1 to MAX_OBJECTS."""
    out = np.zeros((size, size), dtype=np.int32)
    for k, box in enumerate(draw(st.lists(boxes(size), min_size=least, max_size=MAX_OBJECTS))):
        out[box[0] : box[2], box[1] : box[3]] = draw(st.integers(1, MAX_OBJECTS)) if k else 1
    return out


@st.composite
def raster_pair(draw: st.DrawFn, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted, labelled, ignore): predictions are independent, or the labels edited a little."""
    labelled = draw(instance_raster(size, least=1))
    if draw(st.integers(0, 2)) == 0:
        predicted = draw(instance_raster(size))
    else:  # the labels renumbered (merges, erasures), split along rows or columns, painted on
        ids = np.array([0, *draw(st.lists(st.integers(0, MAX_OBJECTS), min_size=MAX_OBJECTS))])
        predicted = ids[labelled]
        rows, cols = np.indices((size, size))
        for piece in range(MAX_OBJECTS + 1, MAX_OBJECTS + 1 + draw(st.integers(0, 2))):
            present = np.unique(predicted[predicted > 0])
            if len(present):  # cut one object: its part past a row or column is a new piece
                k = draw(st.sampled_from(present.tolist()))
                axis = draw(st.sampled_from([rows, cols]))
                predicted[(predicted == k) & (axis >= draw(st.integers(1, size - 1)))] = piece
        for box in draw(st.lists(boxes(size), max_size=2)):
            predicted[box[0] : box[2], box[1] : box[3]] = draw(st.integers(0, MAX_OBJECTS))
    ignore = np.zeros((size, size), dtype=bool)
    for box in draw(st.lists(boxes(size), max_size=2)):
        ignore[box[0] : box[2], box[1] : box[3]] = True
    return predicted, labelled, ignore


@PROPERTY
@given(raster_pair())
def test_raster_counts_equal_the_brute_force_maximum_matching(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    predicted, labelled, ignore = pair
    assert close(raster_object_counts(predicted, labelled, ignore), brute_force(*pair))


@PROPERTY
@given(raster_pair())
def test_raster_and_polygon_front_ends_agree(
    pair: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    predicted, labelled = (np.where(pair[2], 0, a) for a in pair[:2])
    from_rasters = raster_object_counts(predicted, labelled)
    assert close(from_rasters, raster_object_counts(*pair))
    assert close(polygon_object_counts(to_polygons(predicted), to_polygons(labelled)), from_rasters)


@PROPERTY
@given(st.lists(raster_pair(size=8), min_size=1, max_size=4))
def test_counts_of_a_chip_stack_are_the_sum_of_per_chip_counts(
    chips: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    predicted, labelled, ignore = (np.stack(a) for a in zip(*chips, strict=True))
    per_chip = sum_counts(raster_object_counts(*chip) for chip in chips)
    assert close(chip_object_counts(predicted, labelled, ignore), per_chip)
    # Ids that are unique across the stack (components) need no per-chip pass.
    pred_ids = label_components(predicted > 0)
    label_ids = label_components(labelled > 0)
    assert close(
        raster_object_counts(pred_ids, label_ids, ignore),
        chip_object_counts(pred_ids, label_ids, ignore),
    )
