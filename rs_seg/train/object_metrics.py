"""Object (field-level) metrics: one-to-one matching of predicted and labelled fields at IoU > 0.5.

Pixel metrics (:mod:`rs_seg.train.metrics`) say how much cropland is right; these say how many
*fields* are right. Validation and test score raster instances (connected components of a chip's
masks, or burned polygon ids); the scene check scores polygons. Both front ends reduce their input
to the same three things, handed to one core, so a number means the same everywhere:

* the area of every predicted and every labelled object;
* the intersection area of every *overlapping* (predicted, labelled) pair: a sparse list, never a
  dense matrix (a 10k x 10k scene has tens of thousands of fields on each side);
* from those, ``IoU = inter / (area_p + area_l - inter)``.

**Matching.** A predicted and a labelled object match when their IoU is above 0.5; TP = matches,
FP = unmatched predictions, FN = unmatched labels. When the objects of each side are disjoint
(raster instances always are; polygonized predictions are), such a match is *unique*: IoU > 0.5
means the intersection is more than half the union, hence more than half of each object's own
area, and two disjoint labels cannot each hold more than half of one prediction (nor two disjoint
predictions more than half of one label). The pairs above 0.5 therefore already form a one-to-one
matching and it is the only maximum one; taking them greedily by decreasing IoU is exact.
``tests/train/test_object_metrics.py`` checks this against a brute-force maximum matching. Where a
side's polygons overlap each other, greedy by decreasing IoU still gives a one-to-one matching
(each object used at most once), though no longer provably a maximum one.

**Over- and under-segmentation** (counted independently of the matching, so a labelled field can
be matched *and* over-segmented, e.g. a main piece plus a sliver over half inside it):

* a labelled field is **over-segmented** when at least two predictions each have more than half
  of their *own* area inside it (``2 * inter > area_p``): the field was cut into pieces;
* a prediction is **under-segmented** when at least two labelled fields each have more than half
  of *their* area inside it (``2 * inter > area_l``): fields were merged into one blob.

With disjoint objects a prediction is "more than half inside" at most one label (and a label at
most one prediction), so each piece or merged field is counted once.

Counts (:class:`ObjectCounts`) add up across chips and scenes (``a + b``, ``sum(parts,
ObjectCounts())``); :func:`object_metrics` turns them into the reported
:class:`~rs_seg.records.ObjectMetrics`, NaN where a denominator is zero, as in ``metrics.py``.
Chips are scored independently: a field cut by a chip edge is an object of each chip it is in.

The module is torch-free (numpy, scipy, shapely), so the report and benchmarks can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from rs_seg.records import ObjectMetrics

IOU_MATCH = 0.5  # a match needs IoU strictly above this


@dataclass(frozen=True, slots=True)
class ObjectCounts:
    """Summable object-level counts of one chip, scene or split (areas in pixels or CRS units²)."""

    tp: int = 0  # matched pairs
    fp: int = 0  # unmatched predictions
    fn: int = 0  # unmatched labels
    matched_iou_sum: float = 0.0  # IoU summed over the matched pairs
    over: int = 0  # over-segmented labelled fields
    under: int = 0  # under-segmented predictions
    predicted: int = 0  # predicted objects (tp + fp)
    labelled: int = 0  # labelled objects (tp + fn)

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        """Field-wise sum: the counts of two independent chips or scenes together."""
        if not isinstance(other, ObjectCounts):
            return NotImplemented
        return ObjectCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


def _ratio(numerator: float, denominator: float) -> float:
    # Same rule as rs_seg.train.metrics.ratio (NaN where nothing was counted), kept here so that
    # this module does not import torch.
    return numerator / denominator if denominator else math.nan


def object_metrics(counts: ObjectCounts) -> ObjectMetrics:
    """The reported object metrics; NaN where undefined (no predictions, no labels, no match)."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    return {
        "object_precision": _ratio(tp, tp + fp),
        "object_recall": _ratio(tp, tp + fn),
        "object_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mean_matched_iou": _ratio(counts.matched_iou_sum, tp),
        "oversegmented": counts.over,
        "undersegmented": counts.under,
        "fields_predicted": counts.predicted,
        "fields_labelled": counts.labelled,
    }


# --- the core ------------------------------------------------------------------------------------


def match_overlaps(
    pred_area: npt.ArrayLike,
    label_area: npt.ArrayLike,
    pair_pred: npt.ArrayLike,
    pair_label: npt.ArrayLike,
    pair_inter: npt.ArrayLike,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The one-to-one matching at IoU > 0.5: (predicted index, labelled index, IoU) per match.

    ``pred_area``/``label_area`` are the objects' areas (all positive); pair ``k`` says prediction
    ``pair_pred[k]`` and label ``pair_label[k]`` overlap by ``pair_inter[k]`` (each pair listed
    once; pairs that do not overlap may be left out). Candidates are taken by decreasing IoU,
    ties by pair order, each object at most once; with disjoint objects on each side every
    candidate is taken (see the module docstring).
    """
    a = np.asarray(pred_area, dtype=np.float64)
    b = np.asarray(label_area, dtype=np.float64)
    pi = np.asarray(pair_pred, dtype=np.intp)
    li = np.asarray(pair_label, dtype=np.intp)
    inter = np.asarray(pair_inter, dtype=np.float64)
    union = a[pi] + b[li] - inter
    candidate = inter > IOU_MATCH * union  # IoU > 0.5 without dividing (exact on pixel counts)
    pi, li = pi[candidate], li[candidate]
    iou = inter[candidate] / union[candidate]
    if len(np.unique(pi)) < len(pi) or len(np.unique(li)) < len(li):
        # Only with overlapping objects on one side: greedy by decreasing IoU.
        order = np.argsort(-iou, kind="stable")
        used_p: set[int] = set()
        used_l: set[int] = set()
        keep = []
        for k in order.tolist():
            p, q = int(pi[k]), int(li[k])
            if p not in used_p and q not in used_l:
                used_p.add(p)
                used_l.add(q)
                keep.append(k)
        taken = np.sort(np.asarray(keep, dtype=np.intp))
        pi, li, iou = pi[taken], li[taken], iou[taken]
    return pi, li, iou


def counts_from_overlaps(
    pred_area: npt.ArrayLike,
    label_area: npt.ArrayLike,
    pair_pred: npt.ArrayLike,
    pair_label: npt.ArrayLike,
    pair_inter: npt.ArrayLike,
) -> ObjectCounts:
    """Counts from object areas and their sparse overlaps (arguments as :func:`match_overlaps`)."""
    a = np.asarray(pred_area, dtype=np.float64)
    b = np.asarray(label_area, dtype=np.float64)
    pi = np.asarray(pair_pred, dtype=np.intp)
    li = np.asarray(pair_label, dtype=np.intp)
    inter = np.asarray(pair_inter, dtype=np.float64)
    _, _, iou = match_overlaps(a, b, pi, li, inter)
    tp = len(iou)
    # Pieces: predictions with more than half of their own area inside a label, per label.
    pieces = np.bincount(li[2 * inter > a[pi]], minlength=len(b))
    # Merged: labels with more than half of their area inside a prediction, per prediction.
    merged = np.bincount(pi[2 * inter > b[li]], minlength=len(a))
    return ObjectCounts(
        tp=tp,
        fp=len(a) - tp,
        fn=len(b) - tp,
        matched_iou_sum=float(iou.sum()),
        over=int((pieces >= 2).sum()),
        under=int((merged >= 2).sum()),
        predicted=len(a),
        labelled=len(b),
    )


# --- raster front end ----------------------------------------------------------------------------


def label_components(mask: npt.ArrayLike, connectivity: int = 4) -> npt.NDArray[np.int32]:
    """Instance ids (0 = background) of the connected components of a binary mask.

    ``mask`` is ``(H, W)`` or a stack ``(..., H, W)``; every 2-D slice is labelled on its own
    (components never join across chips) and ids are unique across the whole stack. 4-connected
    by default, as the scene polygonizer (:mod:`rs_seg.infer.polygonize`) joins pixels; 8 joins
    diagonal neighbours too.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, not {connectivity}")
    binary = np.asarray(mask, dtype=bool)
    if binary.ndim < 2:
        raise ValueError(f"need an (..., H, W) mask, got shape {binary.shape}")
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    structure = np.zeros((3,) * (binary.ndim - 2) + (3, 3), dtype=bool)
    structure[(1,) * (binary.ndim - 2)] = plane
    labels, _ = ndimage.label(binary, structure=structure, output=np.int32)
    return np.asarray(labels, dtype=np.int32)


def _runs(
    keys: Sequence[npt.NDArray[Any]], breaks: npt.NDArray[np.intp] | None = None
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Run-length compression of parallel 1-D arrays: the index where each run starts, its length.

    A run ends where any of ``keys`` changes, and before every index in ``breaks``. Fields are many
    pixels wide, so runs are far fewer than pixels and every later sort is cheap.
    """
    n = len(keys[0])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    if breaks is not None:
        change[breaks] = True
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, n)).astype(np.float64)


def _objects(
    ids: npt.NDArray[Any], chip: npt.NDArray[np.int64] | None, lengths: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per run its object's index (-1: background) and whether it is an object; per object its area.

    Without ``chip`` an object is an id; with it, a (chip, id) pair.
    """
    is_object: npt.NDArray[np.bool_] = np.asarray(ids != 0)
    key = ids[is_object]
    if chip is not None:
        _, compact = np.unique(key, return_inverse=True)
        key = chip[is_object] * (int(compact.max(initial=0)) + 1) + compact.reshape(-1)
    _, inverse = np.unique(key, return_inverse=True)
    index = np.full(len(ids), -1, dtype=np.intp)
    index[is_object] = inverse.reshape(-1)
    areas = np.bincount(inverse.reshape(-1), weights=lengths[is_object]).astype(np.float64)
    return index, areas, is_object


def _raster_counts(
    predicted: npt.ArrayLike,
    labelled: npt.ArrayLike,
    ignore: npt.ArrayLike | None,
    chip_pixels: int | None,
) -> ObjectCounts:
    p, q = np.asarray(predicted), np.asarray(labelled)
    if p.shape != q.shape:
        raise ValueError(f"predicted {p.shape} and labelled {q.shape} differ in shape")
    for name, array in (("predicted", p), ("labelled", q)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise ValueError(f"{name} must hold integer instance ids, not {array.dtype}")
    shape = p.shape
    p, q = p.reshape(-1), q.reshape(-1)
    if ignore is not None:
        skip = np.asarray(ignore, dtype=bool)
        if skip.shape != shape:
            raise ValueError(f"ignore {skip.shape} and predicted {shape} differ in shape")
        # An ignored pixel is background on both sides: in no object, no area, no overlap.
        skip = skip.reshape(-1)
        p, q = np.where(skip, 0, p), np.where(skip, 0, q)
    chip = None
    if chip_pixels:  # a run never crosses into the next chip; a run's chip is its start's
        starts, lengths = _runs([p, q], np.arange(chip_pixels, p.size, chip_pixels))
        chip = starts.astype(np.int64) // chip_pixels
    else:
        starts, lengths = _runs([p, q])
    p_index, p_area, p_obj = _objects(p[starts], chip, lengths)
    q_index, q_area, q_obj = _objects(q[starts], chip, lengths)
    both = p_obj & q_obj
    width = max(len(q_area), 1)
    pairs, inverse = np.unique(
        p_index[both].astype(np.int64) * width + q_index[both], return_inverse=True
    )
    inter = np.bincount(inverse.reshape(-1), weights=lengths[both], minlength=len(pairs))
    return counts_from_overlaps(p_area, q_area, pairs // width, pairs % width, inter)


def raster_object_counts(
    predicted: npt.ArrayLike, labelled: npt.ArrayLike, ignore: npt.ArrayLike | None = None
) -> ObjectCounts:
    """Object counts of two instance-id rasters of one chip or scene (0 = background).

    Every distinct non-zero value is one object, wherever its pixels lie (an id may be several
    components, e.g. a field split by a road kept under one polygon id). ``ignore`` (True =
    ignored, same shape) removes pixels from both sides before any area is taken; an object with
    all its pixels ignored is no object. Areas are pixel counts. Arrays of any shape are flattened
    with ids meaning the same throughout; for a stack of independent chips whose ids restart in
    each chip use :func:`chip_object_counts`.
    """
    return _raster_counts(predicted, labelled, ignore, None)


def chip_object_counts(
    predicted: npt.ArrayLike, labelled: npt.ArrayLike, ignore: npt.ArrayLike | None = None
) -> ObjectCounts:
    """Object counts of a stack of independent chips ``(N, H, W)``: the sum of the per-chip counts.

    Ids may repeat from chip to chip (id 3 of chip 0 and id 3 of chip 1 are different objects);
    one vectorised pass scores the whole batch.
    """
    shape = np.shape(predicted)
    if len(shape) < 2:
        raise ValueError(f"need (N, H, W) chips, got shape {shape}")
    return _raster_counts(predicted, labelled, ignore, int(np.prod(shape[1:])))


def sum_counts(counts: Iterable[ObjectCounts]) -> ObjectCounts:
    """Counts of many chips or scenes together (each independent)."""
    return sum(counts, ObjectCounts())


# --- polygon front end ---------------------------------------------------------------------------


def _geometries(objects: Any) -> tuple[npt.NDArray[np.object_], Any]:
    """Valid, non-empty shapely geometries of a sequence, GeoSeries or GeoDataFrame, and its CRS."""
    crs = getattr(objects, "crs", None)
    values = getattr(objects, "geometry", objects)
    geoms = np.asarray(list(values), dtype=object).reshape(-1)
    if len(geoms):
        bad = [type(g).__name__ for g in geoms if g is not None and not isinstance(g, BaseGeometry)]
        if bad:
            raise TypeError(f"need shapely geometries, got {bad[0]}")
        geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
        invalid = ~shapely.is_valid(geoms)
        if invalid.any():
            geoms[invalid] = shapely.make_valid(geoms[invalid])
        geoms = geoms[shapely.area(geoms) > 0]
    return geoms, crs


def polygon_object_counts(predicted: Any, labelled: Any) -> ObjectCounts:
    """Object counts of two collections of polygons in one CRS (areas in CRS units²).

    ``predicted`` and ``labelled`` are sequences of shapely geometries, GeoSeries or GeoDataFrames
    (their CRS must then agree). Each non-empty geometry is one object; invalid ones are made
    valid first and those without area (points, lines, empty) are dropped. Candidate pairs come
    from a :class:`shapely.STRtree`; only pairs whose intersection has an area count.
    """
    preds, pred_crs = _geometries(predicted)
    labels, label_crs = _geometries(labelled)
    if pred_crs is not None and label_crs is not None and pred_crs != label_crs:
        raise ValueError(f"predicted CRS {pred_crs} differs from labelled CRS {label_crs}")
    pred_area, label_area = shapely.area(preds), shapely.area(labels)
    if len(preds) and len(labels):
        label_i, pred_i = shapely.STRtree(preds).query(labels, predicate="intersects")
        inter = shapely.area(shapely.intersection(preds[pred_i], labels[label_i]))
    else:
        label_i = pred_i = np.zeros(0, dtype=np.intp)
        inter = np.zeros(0)
    overlap = inter > 0
    return counts_from_overlaps(
        pred_area, label_area, pred_i[overlap], label_i[overlap], inter[overlap]
    )
