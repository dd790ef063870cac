"""Field figure: which fields matched, and a figure of their outlines per scene."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from rs_seg.train.field_figure import (
    SceneFields,
    field_matches,
    field_outlines,
    plot_scene_fields,
)
from rs_seg.train.object_metrics import raster_object_counts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 32


def two_fields() -> np.ndarray:
    """Two touching 16 x 16 squares, ids 1 (left) and 2 (right), in the top half."""
    ids = np.zeros((SIZE, SIZE), dtype=np.int32)
    ids[:16, :16] = 1
    ids[:16, 16:] = 2
    return ids


def scene(name: str, labelled: np.ndarray, predicted: np.ndarray, **kwargs: object) -> SceneFields:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 4000, size=(3, *labelled.shape)).astype(np.uint16)
    return SceneFields(name, image, labelled, predicted, **kwargs)  # type: ignore[arg-type]


def test_merged_prediction_matches_nothing_and_plots(tmp_path: Path) -> None:
    labelled = two_fields()
    merged = (labelled > 0).astype(np.int32) * 7  # one field over both squares: IoU 0.5 each
    matches = field_matches(scene("merged", labelled, merged))
    assert matches.matched_predicted == frozenset()
    assert matches.matched_labelled == frozenset()
    assert (matches.counts.tp, matches.counts.fp, matches.counts.fn) == (0, 1, 2)
    assert matches.counts.under == 1
    assert matches.metrics["object_f1"] == 0.0

    path = tmp_path / "fields.png"
    exact = scene("exact", labelled, labelled.copy())
    plot_scene_fields([scene("merged", labelled, merged), exact], "Worst scenes", path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300


def test_exact_prediction_matches_every_field() -> None:
    labelled = two_fields()
    predicted = np.where(labelled > 0, labelled + 10, 0)  # same fields under other ids
    matches = field_matches(scene("exact", labelled, predicted))
    assert matches.matched_labelled == {1, 2}
    assert matches.matched_predicted == {11, 12}
    assert matches.metrics["object_f1"] == 1.0
    assert matches.counts == raster_object_counts(predicted, labelled)


def test_ignored_pixels_are_left_out_of_both_sides() -> None:
    labelled = two_fields()
    predicted = labelled.copy()
    predicted[:16, 16:] = 1  # the prediction spreads field 1 over field 2 ...
    predicted[20:, :] = 5  # ... and adds a field where nothing is labelled
    ignore = np.zeros((SIZE, SIZE), dtype=bool)
    ignore[:, 16:] = True  # ... but the right half is not labelled
    ignore[16:, :] = True
    matches = field_matches(scene("ignored", labelled, predicted, ignore=ignore))
    # Only the top-left quarter is scored: field 1 against prediction 1, an exact match.
    assert matches.matched_labelled == {1}
    assert matches.matched_predicted == {1}
    assert (matches.counts.tp, matches.counts.fp, matches.counts.fn) == (1, 0, 0)
    assert matches.counts == raster_object_counts(predicted, labelled, ignore)
    assert field_matches(scene("scored", labelled, predicted)).matched_labelled == frozenset()


@pytest.mark.parametrize(
    ("field", "shape"),
    [("image", (3, SIZE)), ("labelled", (SIZE, 8)), ("predicted", (8, SIZE)), ("ignore", (4, 4))],
)
def test_bad_shapes_name_the_scene(field: str, shape: tuple[int, ...]) -> None:
    arrays: dict[str, object] = {
        "image": np.ones((3, SIZE, SIZE)),
        "labelled": two_fields(),
        "predicted": two_fields(),
        "ignore": np.zeros((SIZE, SIZE), dtype=bool),
    }
    arrays[field] = np.zeros(shape, dtype=np.int32)
    with pytest.raises(ValueError, match="scene field-7") as raised:
        SceneFields(name="field-7", **arrays)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_float_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="scene s: predicted"):
        scene("s", two_fields(), two_fields().astype(np.float32))


def test_outlines_mark_the_shared_edge_of_touching_fields() -> None:
    ids = two_fields()
    edge = field_outlines(ids)
    assert edge[:16, 15].all() and edge[:16, 16].all()  # both sides of the shared edge
    assert edge[15, :].all()  # the edge against the background below
    assert not edge[2:14, 2:14].any() and not edge[2:14, 18:30].any()  # interiors stay clear
    assert not edge[16:, :].any()  # background is never an outline
    assert not edge[0, 2:14].any()  # the raster's border is not an edge
    thick = field_outlines(ids, width=2)
    assert thick[:16, 14].all() and thick[:16, 17].all() and thick.sum() > edge.sum()


def test_large_scene_plots(tmp_path: Path) -> None:
    """A 700 px scene takes the thick-outline path; many small fields stay fast."""
    size = 700
    rows, cols = np.divmod(np.arange(size * size).reshape(size, size), size)
    labelled = ((rows // 35) * 20 + cols // 35 + 1).astype(np.int32)
    predicted = labelled.copy()
    predicted[:, :350] = 0
    path = tmp_path / "large.png"
    plot_scene_fields([scene("large", labelled, predicted)], "Best scenes", path)
    assert path.stat().st_size > 5_000
