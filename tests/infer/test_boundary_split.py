"""Fields split by the boundary band: exact across strips, equal to a whole-raster reference."""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes
from scipy import ndimage
from typer.testing import CliRunner

import rs_seg.infer.boundary_split as boundary_split_module
from rs_seg.cli import app
from rs_seg.errors import RsSegError
from rs_seg.field_rule import grow_seeds, split_labels
from rs_seg.infer.vectorize import LAYER, VectorizeSettings, vectorize
from rs_seg.levels import threshold_to_level
from rs_seg.model.fields import FieldSettings
from tests.helpers import PIXEL, UTM, pixel_box, vectorize_settings
from tests.infer.test_vectorize import (
    PIXEL_AREA,
    TRANSFORM,
    assert_identical_layers,
    assert_same_fields,
    read_fields,
    without_prefilter,
    write_prob,
)

FOUR = ndimage.generate_binary_structure(2, 1)


def write_fields_prob(
    path: Path,
    extent: np.ndarray,
    boundary: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    names: tuple[str, str] | None = ("cropland", "boundary"),
    tags: dict[str, str] | None = None,
) -> Path:
    """A two-band probability raster as a fields model writes it (tiled, uint8)."""
    height, width = extent.shape
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 2, "dtype": "uint8",
        "tiled": True, "blockxsize": 16, "blockysize": 16, "crs": UTM, "transform": TRANSFORM,
    }  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(extent.astype("uint8"), 1)
        dst.write(boundary.astype("uint8"), 2)
        if names is not None:
            dst.descriptions = names
        if valid is not None:
            dst.write_mask(np.where(valid, 255, 0).astype("uint8"))
        if tags:
            dst.update_tags(**tags)
    return path


def ring(boundary: np.ndarray, row0: int, col0: int, row1: int, col1: int, value: int) -> None:
    """A one-pixel boundary ring just inside the box rows [row0, row1), columns [col0, col1)."""
    boundary[row0, col0:col1] = boundary[row1 - 1, col0:col1] = value
    boundary[row0:row1, col0] = boundary[row0:row1, col1 - 1] = value


def reference_labels(
    extent: np.ndarray, boundary: np.ndarray, valid: np.ndarray, level: int, blevel: int, grow: int
) -> np.ndarray:
    """The split of the whole raster, pixel by pixel in plain Python (the rule, not the code).

    Seeds' 4-connected components are numbered; a breadth-first search through boundary pixels
    gives each its distance; a pixel at distance d takes the label of its first neighbour at
    distance d - 1 in the order north, west, east, south; the rest of the boundary pixels are
    their own components.
    """
    height, width = extent.shape
    crop = (extent >= level) & valid
    seeds = crop & (boundary < blevel)
    labels, count = ndimage.label(seeds, structure=FOUR)
    distance = np.where(seeds, 0, -1)
    queue = deque(zip(*np.nonzero(seeds), strict=True))
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((-1, 0), (0, -1), (0, 1), (1, 0)):
            rr, cc = r + dr, c + dc
            inside = 0 <= rr < height and 0 <= cc < width
            if inside and crop[rr, cc] and distance[rr, cc] < 0 and distance[r, c] < grow:
                distance[rr, cc] = distance[r, c] + 1
                queue.append((rr, cc))
    for d in range(1, grow + 1):
        for r, c in zip(*np.nonzero(distance == d), strict=True):
            for dr, dc in ((-1, 0), (0, -1), (0, 1), (1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < height and 0 <= cc < width and distance[rr, cc] == d - 1:
                    labels[r, c] = labels[rr, cc]
                    break
    rest, _ = ndimage.label(crop & (distance < 0), structure=FOUR)
    return np.where(rest > 0, rest + count, labels)


def reference_fields(labels: np.ndarray) -> list[shapely.Geometry]:
    found = shapes(labels.astype("int32"), mask=labels > 0, connectivity=4, transform=TRANSFORM)
    by_label: dict[int, list[shapely.Geometry]] = {}
    for geometry, value in found:
        by_label.setdefault(int(value), []).append(shapely.geometry.shape(geometry))
    return [shapely.union_all(parts) for parts in by_label.values()]


def assert_same_polygons(fields, reference: list[shapely.Geometry]) -> None:
    """The same set of polygons, matched by their exact pixel outlines."""
    assert len(fields) == len(reference)
    key = lambda g: (round(g.area, 3), *np.round(g.bounds, 3))  # noqa: E731
    mine = sorted(fields.geometry, key=key)
    theirs = sorted(reference, key=key)
    for a, b in zip(mine, theirs, strict=True):
        assert a.symmetric_difference(b).area < 1e-6


def random_fields(rng: np.random.Generator, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles of cropland with boundary rings, some touching or overlapping, plus noise."""
    extent = rng.integers(0, 110, (size, size))
    boundary = rng.integers(0, 100, (size, size))
    for _ in range(rng.integers(1, 9)):
        r0, c0 = rng.integers(0, size - 3, 2)
        r1, c1 = r0 + rng.integers(3, 18), c0 + rng.integers(3, 18)
        extent[r0:r1, c0:c1] = rng.integers(150, 256, extent[r0:r1, c0:c1].shape)
        boundary[r0:r1, c0:c1] = rng.integers(0, 100, boundary[r0:r1, c0:c1].shape)
        ring(boundary, r0, c0, min(r1, size), min(c1, size), int(rng.integers(150, 256)))
    flip = rng.random((size, size))
    extent = np.where(flip < 0.03, 255 - extent, extent)  # specks and pinholes
    boundary = np.where(flip > 0.97, 255 - boundary, boundary)  # boundary noise inside fields
    return extent.astype(np.uint8), boundary.astype(np.uint8)


def split_fields(tmp_path: Path, extent, boundary, name: str = "f", **kwargs):
    prob = write_fields_prob(tmp_path / f"{name}.tif", extent, boundary)
    summary = vectorize(prob, tmp_path / f"{name}.gpkg", vectorize_settings(**kwargs))
    fields = read_fields(tmp_path / f"{name}.gpkg")
    assert summary.polygons == len(fields)
    return fields


# --- splitting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strip_rows", [1, 2, 5, 100])
def test_touching_fields_with_a_boundary_line_between_them_are_two(
    tmp_path: Path, strip_rows: int
) -> None:
    extent = np.zeros((20, 30), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[2:18, 2:28] = 230  # one cropland region ...
    ring(boundary, 2, 2, 18, 28, 200)
    boundary[2:18, 14:16] = 220  # ... with a boundary line two pixels wide down the middle
    fields = split_fields(tmp_path, extent, boundary, strip_rows=strip_rows)
    assert len(fields) == 2
    left, right = sorted(fields.geometry, key=lambda g: g.bounds[0])
    assert left.equals(shapely.MultiPolygon([pixel_box(2, 2, 18, 15)]))  # the line's own half
    assert right.equals(shapely.MultiPolygon([pixel_box(2, 15, 18, 28)]))
    assert fields.area_ha.sum() == pytest.approx(16 * 26 * PIXEL_AREA / 10_000)
    cropland = split_fields(tmp_path, extent, boundary, "c", boundary_threshold=None)
    assert len(cropland) == 1  # without splitting: one region, as a cropland model gives


def test_a_single_field_with_its_boundary_ring_is_one(tmp_path: Path) -> None:
    extent = np.zeros((16, 16), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[3:13, 2:14] = 200
    ring(boundary, 3, 2, 13, 14, 240)  # one pixel wide, as prepare burns outlines
    fields = split_fields(tmp_path, extent, boundary, strip_rows=3)
    assert len(fields) == 1
    assert fields.geometry[0].equals(shapely.MultiPolygon([pixel_box(3, 2, 13, 14)]))
    assert fields.mean_prob[0] == pytest.approx(200 / 255)  # from band 1
    ring(boundary, 4, 3, 12, 13, 240)  # two pixels wide: the outer corners are 4 steps away
    corners = split_fields(tmp_path, extent, boundary, "c", strip_rows=3, grow=3)
    assert sorted(corners.area_ha * 10_000 / PIXEL_AREA) == pytest.approx([1, 1, 1, 1, 116])
    assert len(split_fields(tmp_path, extent, boundary, "g", strip_rows=3, grow=4)) == 1


@pytest.mark.parametrize("strip_rows", [1, 3, 7, 1000])
def test_a_field_across_many_strip_seams_stays_one(tmp_path: Path, strip_rows: int) -> None:
    extent = np.zeros((64, 24), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[2:60, 2:22] = 220
    ring(boundary, 2, 2, 60, 22, 255)
    boundary[2:55, 11:13] = 255  # a U-shaped core: its arms only meet in the last strips
    boundary[30, 4:10] = 255  # a boundary across the left arm, too narrow to cut it
    boundary[31, 3:9] = 255
    fields = split_fields(tmp_path, extent, boundary, strip_rows=strip_rows)
    assert len(fields) == 1
    assert fields.geometry[0].equals(shapely.MultiPolygon([pixel_box(2, 2, 60, 22)]))


def test_cores_meeting_only_through_boundary_pixels_stay_apart(tmp_path: Path) -> None:
    extent = np.zeros((12, 20), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[2:10, 1:19] = 230
    boundary[2:10, 8:12] = 230  # four pixels wide: each side grows two pixels into it
    for strip_rows in (1, 4, 100):
        fields = split_fields(tmp_path, extent, boundary, f"s{strip_rows}", strip_rows=strip_rows)
        assert sorted(g.bounds[0] for g in fields.geometry) == [
            TRANSFORM.c + PIXEL,
            TRANSFORM.c + 10 * PIXEL,
        ]
        assert list(fields.area_ha) == [pytest.approx(8 * 9 * PIXEL_AREA / 10_000)] * 2


def test_ties_go_to_the_first_nearer_neighbour_north_west_east_south(tmp_path: Path) -> None:
    extent = np.zeros((9, 12), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[1, 1:4] = 255  # seed, boundary, seed in a row: west before east
    boundary[1, 2] = 255
    extent[3:6, 1] = 255  # seed, boundary, seed in a column: north before south
    boundary[4, 1] = 255
    extent[7:9, 5:7] = 255  # boundary pixels at top-left and bottom-right of a 2 x 2 block
    boundary[7, 5] = boundary[8, 6] = 255  # top-left: east before south; bottom-right: north
    fields = split_fields(tmp_path, extent, boundary, grow=1, strip_rows=1)
    expected = [
        pixel_box(1, 1, 2, 3), pixel_box(1, 3, 2, 4),
        pixel_box(3, 1, 5, 2), pixel_box(5, 1, 6, 2),
        shapely.union_all([pixel_box(7, 5, 8, 7), pixel_box(8, 6, 9, 7)]), pixel_box(8, 5, 9, 6),
    ]  # fmt: skip
    assert_same_polygons(fields, expected)


def test_unreached_boundary_pixels_are_fields_of_their_own(tmp_path: Path) -> None:
    extent = np.zeros((10, 24), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[1:9, 1:10] = 230  # a field with a core
    extent[1:9, 14:17] = 230  # a field three pixels wide, all boundary: no core at all
    boundary[1:9, 14:17] = 230
    boundary[1:9, 1] = 230  # one pixel from the core: grows into it
    fields = split_fields(tmp_path, extent, boundary, grow=1, strip_rows=3)
    assert sorted(fields.area_ha) == pytest.approx([0.24, 0.72])
    area = split_fields(tmp_path, extent, boundary, "b", grow=1, min_area=3000)
    assert list(area.area_ha) == [pytest.approx(0.72)]


@pytest.mark.parametrize("fill_holes_below", [0.0, 150.0, 300.0])
def test_no_boundaries_give_the_cropland_regions(tmp_path: Path, fill_holes_below: float) -> None:
    extent, _ = random_fields(np.random.default_rng(5))
    config = VectorizeSettings(
        FieldSettings(min_area=150), strip_rows=7, fill_holes_below=fill_holes_below
    )
    vectorize(write_prob(tmp_path / "one.tif", extent), tmp_path / "one.gpkg", config)
    prob = write_fields_prob(tmp_path / "two.tif", extent, np.zeros_like(extent))
    vectorize(prob, tmp_path / "two.gpkg", config)
    one, two = read_fields(tmp_path / "one.gpkg"), read_fields(tmp_path / "two.gpkg")
    # the same fields in the same order (unless held back as islands), vertices in canonical form
    assert_same_fields(two, one, same_order=fill_holes_below <= 150)


def test_two_bands_without_a_boundary_threshold_are_band_one_as_today(tmp_path: Path) -> None:
    extent, boundary = random_fields(np.random.default_rng(11))
    config = VectorizeSettings(FieldSettings(min_area=150, boundary_threshold=None), strip_rows=5)
    vectorize(write_prob(tmp_path / "one.tif", extent), tmp_path / "one.gpkg", config, scene="s")
    prob = write_fields_prob(tmp_path / "two.tif", extent, boundary)
    vectorize(prob, tmp_path / "two.gpkg", config, scene="s")
    assert_identical_layers(read_fields(tmp_path / "two.gpkg"), read_fields(tmp_path / "one.gpkg"))


# --- exact across strips -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    strip_rows=st.integers(1, 9),
    grow=st.integers(0, 5),
    boundary_threshold=st.sampled_from([0.3, 0.5, 0.8]),
    with_mask=st.booleans(),
)
def test_split_equals_the_whole_raster_reference(
    seed: int, strip_rows: int, grow: int, boundary_threshold: float, with_mask: bool
) -> None:
    """Strip by strip, exactly the fields the rule gives on the whole raster at once."""
    rng = np.random.default_rng(seed)
    extent, boundary = random_fields(rng)
    valid = rng.random(extent.shape) > 0.05 if with_mask else np.ones(extent.shape, dtype=bool)
    config = VectorizeSettings(
        FieldSettings(grow=grow, boundary_threshold=boundary_threshold), strip_rows=strip_rows
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prob = write_fields_prob(root / "p.tif", extent, boundary, valid=valid)
        vectorize(prob, root / "f.gpkg", config)
        fields = read_fields(root / "f.gpkg")
    level, blevel = threshold_to_level(0.5), threshold_to_level(boundary_threshold)
    labels = reference_labels(extent, boundary, valid, level, blevel, grow)
    assert_same_polygons(fields, reference_fields(labels))
    assert shapely.is_valid(fields.geometry).all()
    assert (shapely.get_num_geometries(fields.geometry) == 1).all()  # each field is connected
    union = shapely.union_all(fields.geometry)
    assert union.area == pytest.approx(fields.geometry.area.sum())  # fields never overlap
    assert union.area == pytest.approx((labels > 0).sum() * PIXEL_AREA)  # and cover the cropland
    means = {int(v): extent[labels == v].mean() / 255 for v in np.unique(labels[labels > 0])}
    assert sorted(fields.mean_prob) == pytest.approx(sorted(means.values()), abs=1e-12)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    strip_rows=st.integers(1, 9),
    grow=st.integers(0, 5),
    min_area=st.sampled_from([0.0, 150.0, 500.0]),
    fill_holes_below=st.sampled_from([0.0, 250.0, 2500.0]),
    simplify=st.sampled_from([0.0, 10.0]),
    with_mask=st.booleans(),
)
def test_strips_give_the_same_fields_as_the_whole_raster(
    seed: int,
    strip_rows: int,
    grow: int,
    min_area: float,
    fill_holes_below: float,
    simplify: float,
    with_mask: bool,
) -> None:
    rng = np.random.default_rng(seed)
    extent, boundary = random_fields(rng)
    valid = rng.random(extent.shape) > 0.05 if with_mask else None
    common = {"grow": grow, "min_area": min_area, "fill_holes_below": fill_holes_below}
    common["simplify"] = simplify
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prob = write_fields_prob(root / "p.tif", extent, boundary, valid=valid)
        vectorize(prob, root / "strips.gpkg", vectorize_settings(strip_rows=strip_rows, **common))
        vectorize(prob, root / "whole.gpkg", vectorize_settings(strip_rows=1000, **common))
        without_prefilter(
            prob, root / "all.gpkg", vectorize_settings(strip_rows=strip_rows, **common)
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(boundary_split_module, "SPECKS_PER_MPX", 0)  # pre-filter every strip
            vectorize(prob, root / "pre.gpkg", vectorize_settings(strip_rows=strip_rows, **common))
        stripped, whole = read_fields(root / "strips.gpkg"), read_fields(root / "whole.gpkg")
        everything = read_fields(root / "all.gpkg")
        assert_identical_layers(read_fields(root / "pre.gpkg"), everything)
    # numbering is strip-independent unless small fields were held back as possible islands;
    # outlines come in one canonical form, so even simplified ones are vertex for vertex the same
    if fill_holes_below <= min_area:
        assert_identical_layers(stripped, whole)
    assert_same_fields(stripped, whole, same_order=fill_holes_below <= min_area)
    assert_identical_layers(stripped, everything)  # the small-region pre-filter changes nothing
    assert shapely.is_valid(stripped.geometry).all()
    if simplify == 0:
        union = shapely.union_all(stripped.geometry)
        assert union.area == pytest.approx(stripped.geometry.area.sum())  # no overlaps


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    grow=st.integers(0, 5),
    boundary_threshold=st.sampled_from([0.3, 0.5, 0.8]),
    with_mask=st.booleans(),
)
def test_split_labels_in_memory_are_the_reference_partition(
    seed: int, grow: int, boundary_threshold: float, with_mask: bool
) -> None:
    """The raster form evaluation tunes with gives the fields vectorizing gives, pixel for pixel."""
    rng = np.random.default_rng(seed)
    extent, boundary = random_fields(rng)
    valid = rng.random(extent.shape) > 0.05 if with_mask else np.ones(extent.shape, dtype=bool)
    level, blevel = threshold_to_level(0.5), threshold_to_level(boundary_threshold)
    mine = split_labels(extent, boundary, level, blevel, grow, valid if with_mask else None)
    reference = reference_labels(extent, boundary, valid, level, blevel, grow)
    assert mine.dtype == np.int32
    np.testing.assert_array_equal(mine > 0, reference > 0)
    pairs = np.unique(np.stack([mine[mine > 0], reference[mine > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]  # one-to-one


def test_grow_seeds_matches_the_reference_in_any_window() -> None:
    """A strip's pixels grown in a window with ``grow`` rows of halo are the whole raster's."""
    rng = np.random.default_rng(2)
    extent, boundary = random_fields(rng)
    crop = extent >= 128
    seeds, _ = ndimage.label(crop & (boundary < 128), structure=FOUR)
    for grow in range(5):
        whole = grow_seeds(crop, seeds.astype(np.int64), grow)
        for row0 in range(0, 40, 6):
            top, bottom = max(0, row0 - grow), min(40, row0 + 6 + grow)
            part = grow_seeds(crop[top:bottom], seeds[top:bottom].astype(np.int64), grow)
            np.testing.assert_array_equal(part[row0 - top : row0 - top + 6], whole[row0 : row0 + 6])


# --- settings, checks, command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"boundary_threshold": 0}, {"boundary_threshold": 1.0}, {"grow": -1}, {"grow": 300}]
)
def test_bad_split_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(RsSegError):
        FieldSettings.checked(**kwargs)


def test_swapped_bands_are_refused(tmp_path: Path) -> None:
    extent = np.full((8, 8), 200, dtype=np.uint8)
    prob = write_fields_prob(tmp_path / "p.tif", extent, extent, names=("boundary", "cropland"))
    expected = r"'cropland probability', 'boundary probability'\), found \('boundary', 'cropland'"
    with pytest.raises(RsSegError, match=expected):
        vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings())
    unnamed = write_fields_prob(tmp_path / "u.tif", extent, extent * 0, names=None)
    assert vectorize(unnamed, tmp_path / "u.gpkg", VectorizeSettings()).polygons == 1


def test_layer_metadata_records_the_split(tmp_path: Path) -> None:
    extent = np.full((8, 8), 200, dtype=np.uint8)
    prob = write_fields_prob(tmp_path / "p.tif", extent, extent * 0)
    vectorize(
        prob, tmp_path / "f.gpkg", VectorizeSettings(FieldSettings(boundary_threshold=0.4, grow=2))
    )
    meta = pyogrio.read_info(tmp_path / "f.gpkg", layer=LAYER)["layer_metadata"]
    assert (meta["boundary_threshold"], meta["boundary_level"], meta["grow_pixels"]) == (
        "0.4",
        str(threshold_to_level(0.4)),
        "2",
    )
    vectorize(write_prob(tmp_path / "one.tif", extent), tmp_path / "g.gpkg", VectorizeSettings())
    plain = pyogrio.read_info(tmp_path / "g.gpkg", layer=LAYER)["layer_metadata"]
    assert "boundary_threshold" not in plain


def test_cli_resplits_with_new_thresholds_without_the_model(tmp_path: Path) -> None:
    extent = np.zeros((20, 30), dtype=np.uint8)
    boundary = np.zeros_like(extent)
    extent[2:18, 2:28] = 230
    boundary[2:18, 14:16] = 150  # a faint boundary line: a boundary at 0.4, not at 0.7
    tags = FieldSettings(threshold=0.5, boundary_threshold=0.7).to_tags()
    prob = write_fields_prob(tmp_path / "prob.tif", extent, boundary, tags=tags)
    runner = CliRunner()

    def fields(*args: str) -> int:
        out = tmp_path / "x.gpkg"
        args = ("vectorize", str(prob), "-o", str(out), "--min-area", "0", "--overwrite", *args)
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return len(read_fields(out))

    assert fields() == 1  # the stored 0.7: the line is no boundary
    assert fields("--boundary-threshold", "0.4", "--grow", "3") == 2
    assert fields("--boundary-threshold", "0.4", "--no-split") == 1
    assert fields("--boundary-threshold", "0.4", "--grow", "0") == 3  # the line: its own field
