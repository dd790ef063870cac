"""Labels land on the right pixels whatever their CRS or format."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

from rs_seg.config import MASK_BACKGROUND, MASK_BOUNDARY, MASK_CROPLAND, LabelMap
from rs_seg.errors import RsSegError
from rs_seg.prepare import raster_labels as raster_labels_module
from rs_seg.prepare.chips import strip_window
from rs_seg.prepare.raster_labels import (
    LabelValueCounts,
    apply_label_map,
    check_label_raster,
    open_raster_labels,
    value_lookup,
    value_ranges,
)
from rs_seg.prepare.vector_labels import (
    STATUS_NAMES,
    VectorLayer,
    VectorWindowMasks,
    usable_polygons,
)
from rs_seg.rasters import RasterInfo
from rs_seg.windows import grid_rows, grid_windows
from tests.helpers import ORIGIN, PIXEL, UTM, pixel_box, write_labels, write_scene


def vector_mask(tmp_path, polygons, crs=UTM, to_crs=None, height=64, width=64, boundary=0.0):
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", height, width))
    labels = write_labels(tmp_path / "labels.gpkg", polygons, crs=crs, to_crs=to_crs)
    masks = VectorWindowMasks(VectorLayer(labels), scene, boundary)
    window = Window(0, 0, width, height)
    masks.load_strip(window)
    return masks.mask(window)


def test_wgs84_polygon_lands_on_the_right_pixels_of_a_utm_scene(tmp_path) -> None:
    # A field covering rows 10-29 and columns 20-49, stored in EPSG:4326 (densified so the box
    # stays a box after the round trip through geographic coordinates).
    field = shapely.segmentize(pixel_box(10, 20, 30, 50), PIXEL / 4)
    mask = vector_mask(tmp_path, [field], to_crs="EPSG:4326")
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[10:30, 20:50] = 1
    assert (mask == expected).mean() > 0.995
    assert mask[12:28, 22:48].all(), "interior is cropland"
    assert not mask[:8].any() and not mask[:, :18].any(), "far outside stays background"


def test_labels_in_another_utm_zone_are_reprojected(tmp_path) -> None:
    field = shapely.segmentize(pixel_box(5, 5, 40, 40), PIXEL / 4)
    mask = vector_mask(tmp_path, [field], to_crs="EPSG:32632")
    assert mask[8:37, 8:37].all() and mask.sum() == pytest.approx(35 * 35, rel=0.03)


def test_invalid_bowtie_polygon_is_repaired_not_dropped(tmp_path) -> None:
    x0, y0 = ORIGIN
    bowtie = shapely.Polygon(
        [(x0, y0), (x0 + 400, y0 - 400), (x0 + 400, y0), (x0, y0 - 400), (x0, y0)]
    )
    assert not bowtie.is_valid
    mask = vector_mask(tmp_path, [bowtie])
    assert mask.sum() > 300, "both triangles of the bow-tie are kept"


def _wkb_polygon(*rings) -> bytes:
    """Little-endian WKB of a polygon, written by hand so that broken rings can be stored."""
    data = struct.pack("<BII", 1, 3, len(rings))
    for ring in rings:
        data += struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *xy) for xy in ring)
    return data


SQUARE = [(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)]
BOWTIE = [(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)]
BROKEN_FEATURES = {  # WKB, what becomes of it
    "square": (_wkb_polygon(SQUARE), "used"),
    "null": (None, "null"),
    "empty": (shapely.to_wkb(shapely.Polygon()), "empty"),
    "bowtie": (_wkb_polygon(BOWTIE), "repaired"),
    "three_point_ring": (_wkb_polygon([(0, 0), (5, 5), (0, 0)]), "invalid"),
    "unclosed_ring": (_wkb_polygon([(0, 0), (10, 0), (10, 10)]), "repaired"),
    "nan_coordinates": (_wkb_polygon([(0, 0), (10, 0), (float("nan"), 5), (0, 0)]), "invalid"),
    "nan_in_one_part": (
        shapely.to_wkb(
            shapely.MultiPolygon(
                [shapely.box(0, 0, 1, 1), shapely.Polygon([(5, 5), (6, 5), (6, 6), (5, 5)])]
            )
        ).replace(struct.pack("<dd", 6, 6), struct.pack("<dd", float("nan"), 6)),
        "repaired",
    ),
    "line": (shapely.to_wkb(shapely.LineString([(0, 0), (1, 1)])), "not_polygonal"),
    "point": (shapely.to_wkb(shapely.Point(1, 1)), "not_polygonal"),
    "spike": (shapely.to_wkb(shapely.from_wkt("POLYGON((0 0, 10 0, 0 0))")), "invalid"),
    "polygon_and_point": (
        shapely.to_wkb(shapely.GeometryCollection([shapely.box(0, 0, 1, 1), shapely.Point(5, 5)])),
        "used",
    ),
}


@pytest.mark.parametrize("name", BROKEN_FEATURES)
def test_usable_polygons_keeps_repairs_or_drops_each_kind_of_geometry(name) -> None:
    wkb, expected = BROKEN_FEATURES[name]
    geometries, status = usable_polygons(np.array([wkb], dtype=object))
    assert STATUS_NAMES[status[0]] == expected
    geometry = geometries[0]
    if expected in ("used", "repaired"):
        assert geometry.geom_type in ("Polygon", "MultiPolygon")
        assert geometry.is_valid and geometry.area > 0
        assert np.isfinite(shapely.get_coordinates(geometry)).all()
    else:
        assert geometry is None


def test_usable_polygons_repairs_a_bowtie_into_its_two_triangles() -> None:
    geometries, _ = usable_polygons(np.array([_wkb_polygon(BOWTIE)], dtype=object))
    assert len(geometries[0].geoms) == 2 and geometries[0].area == pytest.approx(50)


def write_raw_layer(path, wkbs, crs=UTM):
    """A GeoPackage of raw WKB geometries (broken ones included), one feature each, fid 1..n."""
    pyogrio.raw.write(
        path, geometry=np.array(wkbs, dtype=object), field_data=[np.arange(len(wkbs))],
        fields=["k"], geometry_type="Unknown", crs=crs, driver="GPKG",
    )  # fmt: skip
    return path


@pytest.mark.parametrize("streamed", [False, True])
def test_layer_counts_every_feature_once_and_warns_per_reason(
    tmp_path, monkeypatch, caplog, streamed
) -> None:
    if streamed:
        monkeypatch.setattr(VectorLayer, "in_memory_limit_bytes", 0)
        monkeypatch.setattr(VectorLayer, "scan_batch", 4)  # batches end inside and at the end
    wkbs = [wkb for wkb, _ in BROKEN_FEATURES.values()]
    path = write_raw_layer(tmp_path / "broken.gpkg", wkbs)
    with caplog.at_level(logging.INFO, logger="rs_seg.prepare.vector_labels"):
        layer = VectorLayer(path)
    assert layer.counts.to_dict() == {
        "features": 12,
        "used": 5,
        "repaired": 3,
        "dropped": {"null": 1, "empty": 1, "invalid": 3, "not_polygonal": 2},
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "broken.gpkg: 1 label feature with null geometry was dropped (fid 2)",
        "broken.gpkg: 1 label feature with empty geometry was dropped (fid 3)",
        "broken.gpkg: 3 label features with invalid geometry and no area left after repair "
        "were dropped (fid 5, 7, 11)",
        "broken.gpkg: 2 label features with non-polygon geometry (points or lines) were dropped "
        "(fid 9, 10)",
    ]
    assert "3 label features with invalid geometry were repaired (fid 4, 6, 8)" in caplog.text
    # The strip path reads the same broken features again without failing or recounting.
    assert len(layer.polygons((-100, -100, 100, 100), layer.crs)) == 5
    assert layer.counts.features == 12


def test_only_the_first_feature_ids_are_listed(tmp_path, caplog) -> None:
    path = write_raw_layer(tmp_path / "nulls.gpkg", [_wkb_polygon(SQUARE)] + [None] * 8)
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.vector_labels"):
        VectorLayer(path)
    assert "8 label features with null geometry were dropped (fid 2, 3, 4, 5, 6, ...)" in (
        caplog.text
    )


@pytest.mark.parametrize("streamed", [False, True])
def test_layer_without_any_usable_polygon_is_an_error(tmp_path, monkeypatch, streamed) -> None:
    if streamed:
        monkeypatch.setattr(VectorLayer, "in_memory_limit_bytes", 0)
    lines = [shapely.to_wkb(shapely.LineString([(0, 0), (i, 1)])) for i in range(1, 4)]
    path = write_raw_layer(tmp_path / "lines.gpkg", [*lines, None])
    with pytest.raises(RsSegError, match=r"no usable polygon \(0 used of 4.*1 null, 3 not_pol"):
        VectorLayer(path)


def test_layer_declared_as_lines_is_rejected_before_reading(tmp_path) -> None:
    path = tmp_path / "lines.gpkg"
    pyogrio.raw.write(
        path, geometry=np.array([shapely.to_wkb(shapely.LineString([(0, 0), (1, 1)]))]),
        field_data=[np.arange(1)], fields=["k"], geometry_type="LineString", crs=UTM,
        driver="GPKG",
    )  # fmt: skip
    with pytest.raises(RsSegError, match="must be polygons, found linestring"):
        VectorLayer(path)


def test_windows_are_slices_of_the_loaded_strip(tmp_path) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 100, 50))
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 10, 10), pixel_box(40, 0, 50, 10)])
    masks = VectorWindowMasks(VectorLayer(labels), scene)
    masks.load_strip(Window(0, 32, 50, 32))
    assert masks.mask(Window(0, 40, 16, 16))[:10, :10].all()
    assert masks.mask(Window(0, 32, 16, 16))[:8].sum() == 0
    with pytest.raises(ValueError, match="outside the loaded strip"):
        masks.mask(Window(0, 0, 16, 16))


@settings(max_examples=25, deadline=None)
@given(row0=st.integers(0, 50), col0=st.integers(0, 50), h=st.integers(2, 14), w=st.integers(2, 14))
def test_any_pixel_aligned_box_rasterizes_exactly(tmp_path_factory, row0, col0, h, w) -> None:
    tmp_path = tmp_path_factory.mktemp("box")
    mask = vector_mask(tmp_path, [pixel_box(row0, col0, row0 + h, col0 + w)])
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[row0 : row0 + h, col0 : col0 + w] = 1
    np.testing.assert_array_equal(mask, expected)


def test_touching_fields_are_parted_by_their_burned_outlines(tmp_path) -> None:
    """Two squares sharing an edge: a 2-pixel band on the shared edge, 1 pixel inside elsewhere."""
    left, right = pixel_box(10, 10, 30, 30), pixel_box(10, 30, 30, 50)
    mask = vector_mask(tmp_path, [left, right], boundary=2 * PIXEL)
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[10:30, 10:50] = MASK_BOUNDARY
    expected[11:29, 11:29] = MASK_CROPLAND
    expected[11:29, 31:49] = MASK_CROPLAND
    np.testing.assert_array_equal(mask, expected)
    _, count = ndimage.label(mask == MASK_CROPLAND)
    assert count == 2, "each field is one connected interior"
    assert ((mask > 0) == (vector_mask(tmp_path, [left, right]) > 0)).all(), "cropland unchanged"


def test_without_a_boundary_width_masks_stay_binary(tmp_path) -> None:
    mask = vector_mask(tmp_path, [pixel_box(10, 10, 30, 30), pixel_box(10, 30, 30, 50)])
    assert set(np.unique(mask)) == {MASK_BACKGROUND, MASK_CROPLAND}


@settings(max_examples=30, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 40), st.integers(3, 20), st.integers(3, 30)),
        min_size=1,
        max_size=4,
    ),
    strip=st.integers(1, 40),
    width_px=st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 1.37]),
)
def test_outlines_burn_the_same_in_any_strip(tmp_path_factory, boxes, strip, width_px) -> None:
    """Outlines come from whole fields: a strip (or chip) edge through a field adds no boundary."""
    tmp_path = tmp_path_factory.mktemp("strips")
    polygons = [pixel_box(r, c, r + h, c + w) for r, c, h, w in boxes]
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 64, 64))
    labels = write_labels(tmp_path / "labels.gpkg", polygons)
    masks = VectorWindowMasks(VectorLayer(labels), scene, width_px * PIXEL)
    whole = vector_mask(tmp_path, polygons, boundary=width_px * PIXEL)
    for row in range(0, 64, strip):
        window = Window(0, row, 64, min(strip, 64 - row))
        masks.load_strip(window)
        np.testing.assert_array_equal(masks.mask(window), whole[row : row + strip])


def test_the_boundary_width_is_metres_in_any_crs() -> None:
    from rs_seg.prepare.vector_labels import boundary_width_units

    metres = _info("EPSG:32633", 10.0)
    feet = _info("EPSG:2229", 3.0)
    degrees = _info("EPSG:4326", 1e-4)
    assert boundary_width_units(None, metres) == 20.0, "default: two pixels"
    assert boundary_width_units(15.0, metres) == 15.0
    assert boundary_width_units(3.048, feet) == pytest.approx(10.0, rel=1e-5)
    assert boundary_width_units(None, degrees) == pytest.approx(2e-4)
    assert boundary_width_units(11.132, degrees) == pytest.approx(1e-4)


def _info(crs: str, pixel: float) -> RasterInfo:
    return RasterInfo(
        path=Path("scene.tif"), width=100, height=100, count=1, dtype="uint8",
        crs=rasterio.crs.CRS.from_string(crs), transform=from_origin(0, 0, pixel, pixel),
        nodata=None, descriptions=(None,),
    )  # fmt: skip


def test_label_map_parses_names_numbers_lists_and_ranges() -> None:
    m = LabelMap.parse("1=cropland, 5=ignore")
    assert (m.cropland, m.ignore) == ([1], [5])
    assert LabelMap.parse("255=1").cropland == [255]
    m = LabelMap.parse("10|11|20-22=cropland,0=255")
    assert (m.cropland, m.ignore) == ([10, 11, 20, 21, 22], [0])
    with pytest.raises(ValueError, match="VALUES=TARGET"):
        LabelMap.parse("1")
    with pytest.raises(ValueError, match="target"):
        LabelMap.parse("1=forest")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32"])
def test_apply_label_map_any_dtype(dtype) -> None:
    values = np.array([[0, 1, 5, 2]], dtype=dtype)
    mapped = apply_label_map(values, LabelMap(cropland=[1, 2], ignore=[5]))
    np.testing.assert_array_equal(mapped, [[0, 1, 255, 1]])


def _write_label_raster(path, values, transform, crs=UTM, nodata=None):
    with rasterio.open(
        path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
        dtype=values.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(values[np.newaxis])
    return path


def test_label_raster_not_aligned_is_warped_onto_scene_grid(tmp_path) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 40, 40))
    # Label mosaic at 5 m, larger than the scene and offset by 100 m: value 255 in rows/cols
    # that correspond to scene pixels [10, 20) x [10, 20).
    values = np.zeros((120, 120), dtype=np.uint8)
    values[40:60, 40:60] = 255
    transform = from_origin(ORIGIN[0] - 100, ORIGIN[1] + 100, 5, 5)
    label_path = _write_label_raster(tmp_path / "mosaic.tif", values, transform)
    with open_raster_labels(label_path, LabelMap(cropland=[255]), scene) as masks:
        mask = masks.mask(Window(0, 0, 40, 40))
    expected = np.zeros((40, 40), dtype=np.uint8)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(mask, expected)


def test_label_raster_outside_coverage_and_nodata_is_ignore(tmp_path) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 40, 40))
    values = np.ones((20, 40), dtype=np.uint8)
    values[0, 0] = 9
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    label_path = _write_label_raster(tmp_path / "half.tif", values, transform, nodata=9)
    with open_raster_labels(label_path, LabelMap(cropland=[1]), scene) as masks:
        mask = masks.mask(Window(0, 0, 40, 40))
    assert mask[0, 0] == 255, "label nodata is ignore"
    assert (mask[20:] == 255).all(), "beyond the label raster is ignore"
    assert (mask[1:20] == 1).all()


def test_mismatched_rasters_without_crs_are_rejected(tmp_path) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 40, 40, crs=None))
    values = np.ones((30, 30), dtype=np.uint8)
    path = tmp_path / "mask.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=30, height=30, count=1, dtype="uint8"
    ) as dst:
        dst.write(values[np.newaxis])
    with (
        pytest.raises(RsSegError, match="cannot be aligned"),
        open_raster_labels(path, LabelMap(cropland=[1]), scene),
    ):
        pass


# --- Label raster values: counted, checked against the map, band 1 only ---


def _strips(masks, height, width, size, stride):
    """Load every strip of a size/stride grid, as the chipper does; masks of all windows."""
    windows = grid_windows(height, width, size, stride)
    out = {}
    for row in grid_rows(windows):
        masks.load_strip(strip_window(row))
        out.update({(w.row, w.col): masks.mask(w.window) for w in row})
    return out


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_label_values_count_each_scene_pixel_once_while_strips_are_read(tmp_path, dtype) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 50, 45))
    rng = np.random.default_rng(1)
    values = rng.choice([0, 1, 3, 5, 9], size=(50, 45)).astype(dtype)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    path = _write_label_raster(tmp_path / "labels.tif", values, transform, nodata=9)
    label_map = LabelMap(cropland=[1], ignore=[5, 7])
    with open_raster_labels(path, label_map, scene) as masks:
        windows = _strips(masks, 50, 45, 16, 12)  # strips and windows overlap
        counts = masks.label_values()
    for (row, col), mask in windows.items():  # slices of the strip = what a window read gives
        expected = apply_label_map(values, label_map)
        expected[values == 9] = 255
        r, c = min(row * 12, 50 - 16), min(col * 12, 45 - 16)
        np.testing.assert_array_equal(mask, expected[r : r + 16, c : c + 16])
    found = dict(zip(*np.unique(values, return_counts=True), strict=True))
    assert counts.pixels == 50 * 45 and counts.nodata == found[9]
    assert counts.mapped == {1: found[1], 5: found[5]}
    assert counts.unmapped == {0: found[0], 3: found[3]} and counts.unmapped_other == 0
    assert counts.nodata_values == {9} and counts.multiband == {}
    assert counts.absent(label_map) == {"ignore": [7]}
    assert counts.to_dict(label_map)["absent"] == {"ignore": "7"}


def test_label_values_outside_a_warped_mosaic_are_nodata(tmp_path) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 40, 40))
    values = np.ones((20, 80), dtype=np.uint8)  # 5 m pixels: covers scene rows 0-9 only
    values[:, :20] = 2
    path = _write_label_raster(tmp_path / "mosaic.tif", values, from_origin(*ORIGIN, 5, 5))
    with open_raster_labels(path, LabelMap(cropland=[1]), scene) as masks:
        _strips(masks, 40, 40, 32, 32)
        counts = masks.label_values()
    assert counts.pixels == 40 * 40 and counts.nodata == 30 * 40
    assert counts.mapped == {1: 10 * 30} and counts.unmapped == {2: 10 * 10}


def test_many_distinct_values_are_counted_within_bounded_memory(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(raster_labels_module, "_TRACKED_VALUES", 8)
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 40, 40))
    values = np.arange(40 * 40, dtype=np.float32).reshape(40, 40) / 7  # 1600 distinct values
    values[:20, :5] = 1
    path = _write_label_raster(tmp_path / "continuous.tif", values, from_origin(*ORIGIN, 10, 10))
    label_map = LabelMap(cropland=[1])
    with open_raster_labels(path, label_map, scene) as masks:
        _strips(masks, 40, 40, 8, 8)
        counts = masks.label_values()
    assert counts.mapped == {1: 100 + 1}, "map values are counted exactly (1 = 7/7 occurs once)"
    assert len(counts.unmapped) <= 2 * 8
    assert sum(counts.unmapped.values()) + counts.unmapped_other == 1600 - 101
    total = LabelValueCounts.merge([counts, counts])
    assert len(total.unmapped) <= 8 and total.mapped == {1: 202}
    assert sum(total.unmapped.values()) + total.unmapped_other == 2 * (1600 - 101)
    summary = total.to_dict(label_map)
    assert len(summary["unmapped"]) == 8 and summary["unmapped_other"] > 0


@pytest.mark.parametrize(
    ("dtype", "cropland", "ignore", "message"),
    [
        ("uint8", [1, 300], [], r"label map value 300 \(cropland\) cannot occur in this uint8 "
                                r"label raster \(values 0 to 255\)"),
        ("uint16", [1], [-1], r"value -1 \(ignore\) cannot occur in this uint16"),
        ("uint8", [250, *range(254, 300)], [], r"values 256-299 \(cropland\)"),
        ("int8", [128], [], r"value 128 \(cropland\) cannot occur in this int8 label raster "
                            r"\(values -128 to 127\)"),
        ("float32", [2**24 + 1], [], r"float32 label raster \(integers up to 16777216 exactly"),
    ],
)  # fmt: skip
def test_label_map_values_the_raster_cannot_hold_are_an_error(
    tmp_path, dtype, cropland, ignore, message
) -> None:
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", 8, 8))
    path = _write_label_raster(
        tmp_path / "mask.tif", np.ones((8, 8), dtype=dtype), from_origin(*ORIGIN, PIXEL, PIXEL)
    )
    label_map = LabelMap(cropland=cropland, ignore=ignore)
    with pytest.raises(RsSegError, match=message) as error:
        check_label_raster(path, label_map)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    with pytest.raises(RsSegError, match=message), open_raster_labels(path, label_map, scene):
        pass


def test_map_values_that_fit_the_dtype_are_accepted(tmp_path) -> None:
    path = _write_label_raster(
        tmp_path / "m.tif", np.ones((4, 4), dtype="int16"), from_origin(*ORIGIN, PIXEL, PIXEL)
    )
    assert check_label_raster(path, LabelMap(cropland=[-5, 300], ignore=[32767])) == 1


def test_cropland_value_that_is_the_raster_nodata_is_an_error(tmp_path) -> None:
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    path = _write_label_raster(tmp_path / "m.tif", np.ones((4, 4), np.uint8), transform, nodata=255)
    with pytest.raises(RsSegError, match=r"value 255 \(cropland\) is the nodata value"):
        check_label_raster(path, LabelMap(cropland=[255]))
    check_label_raster(path, LabelMap(cropland=[1], ignore=[255]))  # ignore either way: fine


def test_value_lookup_refuses_values_the_dtype_cannot_hold() -> None:
    with pytest.raises(ValueError, match="300 do not fit uint8"):
        value_lookup(LabelMap(cropland=[1, 300]), np.dtype("uint8"))
    assert value_lookup(LabelMap(cropland=[300]), np.dtype("uint16"))[300] == 1


def test_alpha_bands_are_not_label_bands(tmp_path) -> None:
    def write(name, count, **options):
        path = tmp_path / name
        with rasterio.open(
            path, "w", driver="GTiff", width=4, height=4, count=count, dtype="uint8",
            crs=UTM, transform=from_origin(*ORIGIN, PIXEL, PIXEL), **options,
        ) as dst:  # fmt: skip
            dst.write(np.ones((count, 4, 4), np.uint8))
        return path

    gray_alpha = write("la.tif", 2, photometric="MINISBLACK", alpha="YES")
    rgb = write("rgb.tif", 3, photometric="RGB")
    with rasterio.open(gray_alpha) as src:
        assert src.colorinterp == (ColorInterp.gray, ColorInterp.alpha)
    assert check_label_raster(gray_alpha, LabelMap(cropland=[1])) == 1
    assert check_label_raster(rgb, LabelMap(cropland=[1])) == 3


def _counts(**kwargs):
    return LabelValueCounts(**{"pixels": 1000, **kwargs})


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_check_is_quiet_for_a_plain_binary_raster(caplog) -> None:
    counts = _counts(mapped={1: 300}, unmapped={0: 690}, nodata=10)
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        counts.check(LabelMap(cropland=[1]), None, 2)
    assert _warnings(caplog) == []


def test_cropland_values_found_in_no_scene_are_an_error(tmp_path) -> None:
    counts = _counts(unmapped={0: 700, 1: 300})
    with pytest.raises(RsSegError) as error:
        counts.check(LabelMap(cropland=[255]), tmp_path / "masks", 3)
    assert str(error.value) == (
        f"{tmp_path / 'masks'}: label map cropland value 255 occurs in none of the label "
        "rasters of the 3 scenes (found values 0, 1), so every chip would be background; "
        "check --label-map"
    )
    with pytest.raises(RsSegError, match="cropland values 2-4, 255 occurs in none"):
        counts.check(LabelMap(cropland=[2, 3, 4, 255], ignore=[1]), None, 1)


def test_check_warns_about_absent_map_values_and_unusual_unmapped_ones(caplog) -> None:
    counts = _counts(
        mapped={1: 300, 5: 10}, unmapped={0: 600, 7: 40, 8: 5}, nodata=45,
        multiband={"/x/a.tif": 3},
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        counts.check(LabelMap(cropland=[1, 2], ignore=[5, 6]), None, 2)
    found = "0, 1, 5, 7, 8"
    assert _warnings(caplog) == [
        f"label map value 2 (cropland) never occurs in the label rasters; found values {found}",
        f"label map value 6 (ignore) never occurs in the label rasters; found values {found}",
        "label values 7, 8 are not in the label map and became background: 4.7% of the labelled "
        "pixels besides value 0 (taken as the background class)",
        "1 label raster has several bands and only band 1 is read: a.tif (3 bands)",
    ]


def test_a_few_stray_unmapped_pixels_are_only_counted(caplog) -> None:
    counts = _counts(mapped={1: 300}, unmapped={0: 695, 3: 5})  # 0.5 %: below the share
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        counts.check(LabelMap(cropland=[1]), None, 1)
    assert _warnings(caplog) == []
    assert counts.to_dict(LabelMap(cropland=[1]))["unmapped"] == {"0": 695, "3": 5}


def test_ignore_value_declared_nodata_is_not_reported_absent() -> None:
    counts = _counts(mapped={1: 300}, unmapped={0: 600}, nodata=100, nodata_values={255})
    assert counts.absent(LabelMap(cropland=[1], ignore=[255])) == {}


def test_value_ranges_join_consecutive_integers() -> None:
    assert value_ranges([255, 3, 4, 5, 0, 7, 0.5]) == "0, 0.5, 3-5, 7, 255"
