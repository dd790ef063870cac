"""Labels land on the right pixels whatever their CRS or format."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin
from rasterio.windows import Window

from rs_seg.config import LabelMap
from rs_seg.errors import RsSegError
from rs_seg.labels import (
    STATUS_NAMES,
    VectorLayer,
    VectorWindowMasks,
    apply_label_map,
    open_raster_labels,
    usable_polygons,
)
from rs_seg.rasters import RasterInfo
from tests.conftest import ORIGIN, PIXEL, UTM, pixel_box, write_labels, write_scene


def vector_mask(tmp_path, polygons, crs=UTM, to_crs=None, height=64, width=64):
    scene = RasterInfo.read(write_scene(tmp_path / "scene.tif", height, width))
    labels = write_labels(tmp_path / "labels.gpkg", polygons, crs=crs, to_crs=to_crs)
    masks = VectorWindowMasks(VectorLayer(labels), scene)
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
    with caplog.at_level(logging.INFO, logger="rs_seg.labels"):
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
    with caplog.at_level(logging.WARNING, logger="rs_seg.labels"):
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
