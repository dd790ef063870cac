"""Figure of predicted against labelled fields (instances) on the worst and best test scenes.

Pixel IoU says how much cropland is right; object F1 says how many *fields* are. A low object F1
has very different causes (merged neighbours, fields cut in pieces, missed small fields) that only
a picture tells apart, so this figure outlines every field on the RGB preview, coloured by whether
it was matched one-to-one at IoU > 0.5. Matching comes from :mod:`rs_seg.train.object_metrics`, so
the colours and the row's numbers agree with the report's field metrics by construction.

Outlines are pixel masks (an id differing from a 4-neighbour) shown as one RGBA overlay per panel:
no contour tracing, so a 1024 px scene with thousands of fields draws in well under a second, and
touching fields still show their shared edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from scipy import ndimage

from rs_seg.records import ObjectMetrics
from rs_seg.train.object_metrics import (
    ObjectCounts,
    match_overlaps,
    object_metrics,
    raster_object_counts,
)

# report.py's figure helpers, so every report figure is drawn and saved the same way
from rs_seg.train.report import CELL_INCHES, rgb_preview, saved_figure

PANEL_INCHES = 2 * CELL_INCHES  # scenes are larger than chips: bigger panels keep outlines visible
THICK_OUTLINE_PIXELS = 600  # above this scene edge a 1 px outline is lost when downsampled
MATCHED_RGB = (0.15, 0.9, 0.3)
MISSED_RGB = (1.0, 0.2, 0.85)  # labelled field without a match (FN)
UNMATCHED_RGB = (1.0, 0.45, 0.0)  # predicted field without a match (FP)
IGNORE_RGBA = (1.0, 1.0, 1.0, 0.45)  # a veil over unlabelled pixels
LEGEND = (
    ("matched field (IoU > 0.5)", MATCHED_RGB),
    ("missed labelled field", MISSED_RGB),
    ("unmatched predicted field", UNMATCHED_RGB),
    ("not labelled (ignored)", (0.85, 0.85, 0.85)),  # the veil as it looks on a mid tone
)


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class SceneFields:
    """One scene (or mosaic of test chips) with its labelled and predicted fields.

    Attributes:
        name: Shown in the row title, so the scene can be found again.
        image: ``(bands, H, W)`` raw values of any dtype; zeros and non-finite values are nodata.
        labelled: ``(H, W)`` integer instance ids, 0 = no field.
        predicted: ``(H, W)`` integer instance ids, 0 = no field.
        ignore: ``(H, W)`` bool, True where the pixel is not labelled; removed from both sides
            before matching, as :func:`~rs_seg.train.object_metrics.raster_object_counts` does.
        rgb_bands: 0-based band indices shown as red, green and blue.
    """

    name: str
    image: np.ndarray
    labelled: np.ndarray
    predicted: np.ndarray
    ignore: np.ndarray | None = None
    rgb_bands: tuple[int, int, int] = (0, 1, 2)

    def __post_init__(self) -> None:
        """Check shapes now, so a bad scene fails where it is built, not inside plotting."""
        image_shape = np.shape(self.image)
        if len(image_shape) not in (2, 3):
            raise ValueError(f"scene {self.name}: image must be (bands, H, W), got {image_shape}")
        shape = image_shape[-2:]
        for name in ("labelled", "predicted", "ignore"):
            array = getattr(self, name)
            if array is not None and np.shape(array) != shape:
                raise ValueError(
                    f"scene {self.name}: {name} must have the image's shape {shape}, "
                    f"got {np.shape(array)}"
                )
        for name in ("labelled", "predicted"):
            if not np.issubdtype(np.asarray(getattr(self, name)).dtype, np.integer):
                raise ValueError(f"scene {self.name}: {name} must hold integer instance ids")


@dataclass(frozen=True)
class FieldMatches:
    """Which fields of a scene matched one-to-one at IoU > 0.5, and the scene's field scores."""

    matched_predicted: frozenset[int]
    matched_labelled: frozenset[int]
    counts: ObjectCounts
    metrics: ObjectMetrics


def _scored_ids(scene: SceneFields) -> tuple[np.ndarray, np.ndarray]:
    """Labelled and predicted ids with ignored pixels set to 0: the objects that were scored."""
    labelled, predicted = np.asarray(scene.labelled), np.asarray(scene.predicted)
    if scene.ignore is None:
        return labelled, predicted
    skip = np.asarray(scene.ignore, dtype=bool)
    return np.where(skip, 0, labelled), np.where(skip, 0, predicted)


def field_matches(scene: SceneFields) -> FieldMatches:
    """Match the scene's fields with the object-metrics core and say which ids were matched.

    Areas and overlaps are taken per id here (the counts' front end does not expose ids) and
    handed to :func:`~rs_seg.train.object_metrics.match_overlaps`, the one matcher; the counts
    come from :func:`~rs_seg.train.object_metrics.raster_object_counts` itself.
    """
    labelled, predicted = _scored_ids(scene)
    counts = raster_object_counts(scene.predicted, scene.labelled, scene.ignore)
    p_ids, p_area = np.unique(predicted[predicted != 0], return_counts=True)
    l_ids, l_area = np.unique(labelled[labelled != 0], return_counts=True)
    both = (predicted != 0) & (labelled != 0)
    p_index = np.searchsorted(p_ids, predicted[both]).astype(np.int64)
    l_index = np.searchsorted(l_ids, labelled[both]).astype(np.int64)
    width = max(len(l_ids), 1)
    pairs, inter = np.unique(p_index * width + l_index, return_counts=True)
    pi, li, _ = match_overlaps(p_area, l_area, pairs // width, pairs % width, inter)
    return FieldMatches(
        matched_predicted=frozenset(p_ids[pi].tolist()),
        matched_labelled=frozenset(l_ids[li].tolist()),
        counts=counts,
        metrics=object_metrics(counts),
    )


def field_outlines(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W)`` bool: field pixels whose id differs from a 4-neighbour inside the raster.

    Both sides of a shared edge are marked, so two touching fields show a line between them where
    a foreground mask would show one blob. ``width`` > 1 dilates the outline by ``width - 1`` px.
    """
    ids = np.asarray(ids)
    edge = np.zeros(ids.shape, dtype=bool)
    vertical = ids[1:, :] != ids[:-1, :]
    horizontal = ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge &= ids != 0
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return edge


def _overlay(ids: np.ndarray, matched: frozenset[int], miss_rgb: tuple[float, ...]) -> np.ndarray:
    """RGBA outlines of ``ids``: matched fields in the matched colour, the rest in ``miss_rgb``."""
    width = 2 if max(ids.shape) > THICK_OUTLINE_PIXELS else 1
    is_matched = np.isin(ids, np.fromiter(matched, dtype=np.int64, count=len(matched)))
    rgba = np.zeros((*ids.shape, 4), dtype=np.float32)
    # Unmatched first: where dilated outlines of both kinds meet, the matched colour stays on top.
    for subset, rgb in ((~is_matched, miss_rgb), (is_matched, MATCHED_RGB)):
        rgba[field_outlines(np.where(subset, ids, 0), width)] = (*rgb, 1.0)
    return rgba


def _draw_scene_row(scene: SceneFields, axes_row: Sequence[Axes]) -> None:
    """RGB preview, labelled outlines and predicted outlines; the first title scores the row."""
    labelled, predicted = _scored_ids(scene)
    matches = field_matches(scene)
    c, f1 = matches.counts, matches.metrics["object_f1"]
    f1_text = f"{f1:.2f}" if np.isfinite(f1) else "n/a"
    titles = (
        f"{scene.name}: object F1 {f1_text}\nTP {c.tp} / FP {c.fp} / FN {c.fn}, "
        f"fields {c.predicted} predicted / {c.labelled} labelled",
        "labelled fields",
        "predicted fields",
    )
    overlays = (
        None,
        _overlay(labelled, matches.matched_labelled, MISSED_RGB),
        _overlay(predicted, matches.matched_predicted, UNMATCHED_RGB),
    )
    tint = None
    if scene.ignore is not None:  # shows where the outlines were cut by unlabelled pixels
        tint = np.zeros((*labelled.shape, 4), dtype=np.float32)
        tint[np.asarray(scene.ignore, dtype=bool)] = IGNORE_RGBA
    rgb = rgb_preview(scene.image, scene.rgb_bands)
    for axes, overlay, panel_title in zip(axes_row, overlays, titles, strict=True):
        axes.imshow(rgb)
        if overlay is not None:
            if tint is not None:
                axes.imshow(tint, interpolation="nearest")
            axes.imshow(overlay, interpolation="antialiased")
        axes.set_title(panel_title, fontsize=8)
        axes.set_axis_off()


def plot_scene_fields(scenes: Sequence[SceneFields], title: str, path: Path) -> None:
    """One row per scene: RGB, labelled and predicted field outlines coloured by match.

    Raises:
        ValueError: If ``scenes`` is empty (there would be no figure to look at).
    """
    if not scenes:
        raise ValueError("plot_scene_fields needs at least one scene")
    width, height = PANEL_INCHES * 3, (PANEL_INCHES + 0.35) * len(scenes) + 0.8
    with saved_figure(path, width, height) as figure:
        grid = figure.subplots(len(scenes), 3, squeeze=False)
        for scene, axes_row in zip(scenes, grid, strict=True):
            _draw_scene_row(scene, axes_row)
        figure.suptitle(title)
        handles = [Patch(facecolor=rgb, edgecolor="0.4", label=name) for name, rgb in LEGEND]
        figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
