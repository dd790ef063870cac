"""Field polygons from probability rasters: strip joins, clean-up, attributes, formats, safety."""

from __future__ import annotations

import functools
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import shapes
from rasterio.transform import from_origin
from scipy import ndimage

import rs_seg.infer.boundary_split as boundary_split_module
import rs_seg.infer.polygonize as polygonize_module
import rs_seg.infer.vectorize as vectorize_module
from rs_seg.errors import RsSegError
from rs_seg.infer.vectorize import LAYER, VectorizeSettings, computed_ahead, vectorize
from rs_seg.levels import threshold_to_level
from rs_seg.model.fields import DEFAULT_MIN_AREA, FieldSettings
from tests.helpers import ORIGIN, PIXEL, UTM, pixel_box, vectorize_settings

TRANSFORM = from_origin(*ORIGIN, PIXEL, PIXEL)
PIXEL_AREA = PIXEL * PIXEL


def write_prob(
    path: Path,
    values: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    nodata: int | None = None,
    crs: str | None = UTM,
    bands: int = 1,
) -> Path:
    """A tiled uint8 probability raster; ``valid`` becomes a GDAL internal mask."""
    height, width = values.shape
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": "uint8",
        "tiled": True, "blockxsize": 16, "blockysize": 16, "nodata": nodata,
    }  # fmt: skip
    if crs is not None:
        profile.update(crs=crs, transform=TRANSFORM)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        for band in range(1, bands + 1):
            dst.write(values.astype("uint8"), band)
        if valid is not None:
            dst.write_mask(np.where(valid, 255, 0).astype("uint8"))
    return path


def read_fields(path: Path):
    return pyogrio.read_dataframe(path, layer=LAYER if path.suffix == ".gpkg" else None)


def cropland(values: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return values >= threshold_to_level(threshold)


def reference_polygons(binary: np.ndarray) -> list[shapely.Geometry]:
    """Polygonizing the whole raster at once, as GDAL does it."""
    found = shapes(binary.astype("uint8"), mask=binary, connectivity=4, transform=TRANSFORM)
    return [shapely.geometry.shape(geometry) for geometry, _ in found]


def random_blobs(rng: np.random.Generator, height: int, width: int, density: float) -> np.ndarray:
    """Probability levels with blob-like cropland (smoothed noise) and random values inside."""
    noise = ndimage.uniform_filter(rng.random((height, width)), size=3)
    blobs = noise > np.quantile(noise, 1 - density)
    return np.where(blobs, rng.integers(128, 256, blobs.shape), rng.integers(0, 128, blobs.shape))


def in_raster_order(fields):
    """Fields sorted by their top-left corner, to compare runs whose numbering may differ."""
    bounds = fields.geometry.bounds
    return fields.assign(top=-bounds.maxy, left=bounds.minx).sort_values(["top", "left", "area_ha"])


def assert_same_fields(left, right, *, same_order: bool = True) -> None:
    """Same fields (identical geometry up to float noise, same attributes), numbered 1..N."""
    assert len(left) == len(right)
    numbers = sorted(int(key.rsplit("/", 1)[1]) for key in left.field_id)
    assert numbers == list(range(1, len(left) + 1))
    if not same_order:
        left, right = in_raster_order(left), in_raster_order(right)
    for a, b in zip(left.geometry, right.geometry, strict=True):
        assert a.symmetric_difference(b).area < 1e-6
    np.testing.assert_allclose(left.mean_prob, right.mean_prob, rtol=0, atol=1e-12)
    np.testing.assert_allclose(left.area_ha, right.area_ha, rtol=1e-12)


# --- strips ------------------------------------------------------------------------------------


def test_field_spanning_many_strips_comes_out_whole(tmp_path: Path) -> None:
    values = np.zeros((64, 24), dtype=np.uint8)
    values[2:60, 3:6] = 200  # left arm of a U: its two arms only meet in the last strips
    values[2:60, 15:18] = 200
    values[55:60, 3:18] = 200
    prob = write_prob(tmp_path / "prob.tif", values)
    summary = vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(strip_rows=8), progress=True)
    fields = read_fields(tmp_path / "f.gpkg")
    pixels = int(cropland(values).sum())
    assert summary.polygons == len(fields) == 1
    assert fields.geometry[0].area == pytest.approx(pixels * PIXEL_AREA)
    assert fields.area_ha[0] == pytest.approx(pixels * PIXEL_AREA / 10_000)
    assert shapely.get_num_geometries(fields.geometry[0]) == 1
    assert shapely.is_valid(fields.geometry[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.1, 0.7),
    strip_rows=st.integers(1, 31),
    fill_holes_below=st.sampled_from([0.0, 250.0, 2500.0]),
    min_area=st.sampled_from([0.0, 150.0]),
    with_mask=st.booleans(),
)
def test_strips_give_the_same_fields_as_the_whole_raster(
    seed: int,
    density: float,
    strip_rows: int,
    fill_holes_below: float,
    min_area: float,
    with_mask: bool,
) -> None:
    rng = np.random.default_rng(seed)
    values = random_blobs(rng, 30, 40, density)
    valid = rng.random(values.shape) > 0.05 if with_mask else None
    common = {"fill_holes_below": fill_holes_below, "min_area": min_area}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prob = write_prob(root / "prob.tif", values, valid=valid)
        vectorize(prob, root / "strips.gpkg", vectorize_settings(strip_rows=strip_rows, **common))
        vectorize(prob, root / "whole.gpkg", vectorize_settings(strip_rows=1000, **common))
        stripped, whole = read_fields(root / "strips.gpkg"), read_fields(root / "whole.gpkg")
    # numbering is strip-independent unless small fields were held back as possible islands
    assert_same_fields(stripped, whole, same_order=fill_holes_below <= min_area)
    assert shapely.is_valid(stripped.geometry).all()
    union = shapely.union_all(stripped.geometry)
    assert union.area == pytest.approx(stripped.geometry.area.sum())  # fields never overlap
    if fill_holes_below == 0 and min_area == 0:  # exactly GDAL's polygons of the whole raster
        binary = cropland(values) & (valid if valid is not None else True)
        reference = reference_polygons(binary)
        assert len(stripped) == len(reference)
        assert union.symmetric_difference(shapely.union_all(reference)).area < 1e-6
        assert stripped.area_ha.sum() * 10_000 == pytest.approx(binary.sum() * PIXEL_AREA)


@pytest.mark.parametrize("strip_rows", [1, 3, 4, 100])
def test_fields_touching_at_a_corner_stay_apart(tmp_path: Path, strip_rows: int) -> None:
    values = np.zeros((10, 10), dtype=np.uint8)
    values[1:4, 1:4] = 255
    values[4:7, 4:7] = 255  # touches the first square only at the corner (row 4, col 4)
    prob = write_prob(tmp_path / "prob.tif", values)
    vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(strip_rows=strip_rows))
    fields = read_fields(tmp_path / "f.gpkg")
    assert len(fields) == 2
    assert sorted(fields.geometry.area) == [9 * PIXEL_AREA, 9 * PIXEL_AREA]


# --- clean-up ----------------------------------------------------------------------------------


def field_with_holes() -> np.ndarray:
    values = np.zeros((20, 20), dtype=np.uint8)
    values[1:19, 1:19] = 220
    values[3, 3] = 0  # 100 m² hole
    values[8:13, 8:13] = 0  # 2500 m² hole
    values[15:17, 3:5] = 0  # 400 m² hole ...
    values[10, 10] = 220  # ... and a 1-pixel island inside the large hole
    return values


def test_small_holes_are_filled_and_large_ones_kept(tmp_path: Path) -> None:
    prob = write_prob(tmp_path / "prob.tif", field_with_holes())
    vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(fill_holes_below=1000))
    fields = read_fields(tmp_path / "f.gpkg")
    assert len(fields) == 2  # the island in the large hole is a field of its own
    (polygon,) = fields.geometry[fields.area_ha.idxmax()].geoms
    assert len(polygon.interiors) == 1
    assert shapely.Polygon(polygon.interiors[0]).area == pytest.approx(2500)
    assert polygon.area == pytest.approx((18 * 18 - 25) * PIXEL_AREA)


@pytest.mark.parametrize("strip_rows", [4, 1000])
def test_island_in_a_filled_hole_is_dropped(tmp_path: Path, strip_rows: int) -> None:
    values = np.zeros((80, 20), dtype=np.uint8)
    values[:20] = field_with_holes()
    values[18:79, 1:3] = 220  # the field continues far below its holes
    prob = write_prob(tmp_path / "prob.tif", values)
    settings = VectorizeSettings(fill_holes_below=3000, strip_rows=strip_rows)
    vectorize(prob, tmp_path / "f.gpkg", settings)
    fields = read_fields(tmp_path / "f.gpkg")
    assert len(fields) == 1
    assert fields.geometry[0].area == pytest.approx((18 * 18 + 60 * 2) * PIXEL_AREA)
    assert fields.mean_prob[0] == pytest.approx(220 / 255)  # the field's own pixels only


def test_small_field_in_a_notch_is_kept(tmp_path: Path) -> None:
    values = np.zeros((40, 20), dtype=np.uint8)
    values[1:39, 1:4] = values[1:39, 14:17] = values[30:39, 1:17] = 220  # a U, open at the top
    values[34, 2] = 0  # with a small hole, filled
    values[5:7, 8:10] = 220  # a small field in the notch: held back, then kept (not in a hole)
    prob = write_prob(tmp_path / "prob.tif", values)
    vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(fill_holes_below=3000, strip_rows=4))
    fields = read_fields(tmp_path / "f.gpkg")
    assert sorted(fields.area_ha) == [pytest.approx(0.04), pytest.approx((29 * 6 + 9 * 16) / 100)]


def test_min_area_drops_small_fields(tmp_path: Path) -> None:
    values = np.zeros((12, 12), dtype=np.uint8)
    values[1:3, 1:3] = 255  # 400 m²
    values[5:11, 5:11] = 255  # 3600 m²
    prob = write_prob(tmp_path / "prob.tif", values)
    vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(FieldSettings(min_area=500)))
    fields = read_fields(tmp_path / "f.gpkg")
    assert list(fields.area_ha) == [pytest.approx(0.36)]


def test_simplify_keeps_fields_valid(tmp_path: Path) -> None:
    values = random_blobs(np.random.default_rng(3), 60, 60, 0.5)
    prob = write_prob(tmp_path / "prob.tif", values)
    vectorize(prob, tmp_path / "exact.gpkg", VectorizeSettings())
    vectorize(prob, tmp_path / "simple.gpkg", VectorizeSettings(simplify=15.0, strip_rows=7))
    exact, simple = read_fields(tmp_path / "exact.gpkg"), read_fields(tmp_path / "simple.gpkg")
    assert len(simple) == len(exact)
    assert shapely.is_valid(simple.geometry).all()
    assert (simple.geometry.geom_type == "MultiPolygon").all()
    assert shapely.get_num_coordinates(simple.geometry).sum() < (
        shapely.get_num_coordinates(exact.geometry).sum()
    )


# --- small regions dropped before polygonizing ------------------------------------------------


def without_prefilter(prob: Path, out: Path, settings: VectorizeSettings) -> None:
    """Vectorize with every region polygonized, as before the pre-filter existed.

    ``vectorize`` always pre-filters; here its two record sources are called with
    ``prefilter=False`` instead.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, records in (
            ("field_records", polygonize_module.field_records),
            ("split_field_records", boundary_split_module.field_records),
        ):
            patch.setattr(vectorize_module, name, functools.partial(records, prefilter=False))
        vectorize(prob, out, settings)


def assert_identical_layers(left, right) -> None:
    """Same features in the same order, geometries vertex for vertex, attributes bit for bit."""
    assert list(left.columns) == list(right.columns)
    assert shapely.to_wkb(left.geometry.values).tolist() == (
        shapely.to_wkb(right.geometry.values).tolist()
    )
    attributes = [c for c in left.columns if c != "geometry"]
    assert left[attributes].equals(right[attributes])


def count_polygonized(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the polygons rasterio's ``shapes`` hands to the vectorizer (one entry per strip)."""
    counts: list[int] = []

    def counting(*args, **kwargs):
        counts.append(0)
        for item in shapes(*args, **kwargs):
            counts[-1] += 1
            yield item

    monkeypatch.setattr(polygonize_module, "shapes", counting)
    return counts


def checkerboard(height: int, width: int) -> np.ndarray:
    rows, cols = np.indices((height, width))
    return np.where((rows + cols) % 2 == 0, 230, 20).astype(np.uint8)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["blobs", "noise", "binary"]),
    density=st.floats(0.1, 0.7),
    strip_rows=st.integers(1, 31),
    min_area=st.sampled_from([50.0, 100.0, 150.0, 400.0, 500.0, 1000.0, 3000.0]),
    fill_holes_below=st.sampled_from([0.0, 250.0, 500.0, 2500.0, 10_000.0]),
    with_mask=st.booleans(),
)
def test_prefilter_changes_nothing(
    seed: int,
    kind: str,
    density: float,
    strip_rows: int,
    min_area: float,
    fill_holes_below: float,
    with_mask: bool,
) -> None:
    """Dropping regions whose bounding box is below min_area gives exactly the same layer."""
    rng = np.random.default_rng(seed)
    if kind == "blobs":
        values = random_blobs(rng, 30, 40, density)
    else:  # isolated pixels, diagonal contacts, islands in holes: what the filter removes
        crop = rng.random((30, 40)) < density
        levels = rng.integers(128, 256, crop.shape) if kind == "noise" else 255
        values = np.where(crop, levels, 0)
    valid = rng.random(values.shape) > 0.05 if with_mask else None
    config = VectorizeSettings(
        FieldSettings(min_area=min_area), fill_holes_below=fill_holes_below, strip_rows=strip_rows
    )
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prob = write_prob(root / "prob.tif", values, valid=valid)
        vectorize(prob, root / "filtered.gpkg", config)
        without_prefilter(prob, root / "all.gpkg", config)
        filtered, everything = read_fields(root / "filtered.gpkg"), read_fields(root / "all.gpkg")
    assert_identical_layers(filtered, everything)


def test_checkerboard_polygonizes_only_strip_boundaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = checkerboard(64, 64)  # 2048 one-pixel regions of 100 m², none can reach 500 m²
    prob = write_prob(tmp_path / "prob.tif", values)
    config = VectorizeSettings(FieldSettings(min_area=500), fill_holes_below=500, strip_rows=16)
    counts = count_polygonized(monkeypatch)
    assert vectorize(prob, tmp_path / "f.gpkg", config).polygons == 0
    assert len(read_fields(tmp_path / "f.gpkg")) == 0
    # only pixels on the rows where strips meet may continue: 32 per row, first and last strip
    # have one such row, the middle ones two (the raster's own first and last rows never do)
    assert counts == [32, 64, 64, 32]
    counts.clear()
    without_prefilter(prob, tmp_path / "all.gpkg", config)
    assert counts == [512] * 4


def test_regions_continuing_across_strips_are_kept(tmp_path: Path) -> None:
    values = np.zeros((40, 10), dtype=np.uint8)
    values[:, 4] = 255  # one pixel wide: 400 m² in each 4-row strip, 4000 m² in all
    values[10:12, 7] = 255  # 200 m² inside one strip: dropped early
    values[3:5, 1] = 255  # 200 m² across the first strip boundary: kept until complete, dropped
    prob = write_prob(tmp_path / "prob.tif", values)
    config = VectorizeSettings(FieldSettings(min_area=500), strip_rows=4)
    vectorize(prob, tmp_path / "f.gpkg", config)
    fields = read_fields(tmp_path / "f.gpkg")
    assert list(fields.area_ha) == [pytest.approx(0.4)]
    assert fields.geometry[0].equals(shapely.MultiPolygon([pixel_box(0, 4, 40, 5)]))


@pytest.mark.parametrize("strip_rows", [3, 1000])
def test_dropping_an_island_keeps_the_field_around_it(tmp_path: Path, strip_rows: int) -> None:
    values = np.zeros((24, 24), dtype=np.uint8)
    values[1:23, 1:23] = 220
    values[5:12, 5:12] = 0  # a 4900 m² hole ...
    values[7, 7] = 200  # ... with a 100 m² island (below min_area) ...
    values[8:10, 8:10] = 240  # ... touching a 400 m² island at a corner
    values[16, 16] = 0  # a 100 m² hole
    prob = write_prob(tmp_path / "prob.tif", values)
    expected = {  # fill_holes_below: (field areas in ha, holes left in the large field)
        0.0: ([0.04, 4.34], 2),
        1000.0: ([0.04, 4.35], 1),
        6000.0: ([4.84], 0),  # the large hole is filled and the 400 m² island in it dropped
    }
    for fill, (areas, holes) in expected.items():
        config = VectorizeSettings(
            FieldSettings(min_area=150), fill_holes_below=fill, strip_rows=strip_rows
        )
        vectorize(prob, tmp_path / f"f{fill}.gpkg", config)
        without_prefilter(prob, tmp_path / f"all{fill}.gpkg", config)
        fields = read_fields(tmp_path / f"f{fill}.gpkg")
        assert_identical_layers(fields, read_fields(tmp_path / f"all{fill}.gpkg"))
        assert sorted(fields.area_ha) == pytest.approx(areas)
        (polygon,) = fields.geometry[fields.area_ha.idxmax()].geoms
        assert len(polygon.interiors) == holes
        if fill == 0:
            assert fields.mean_prob[fields.area_ha.idxmin()] == pytest.approx(240 / 255)


# The real CLI (``python -m rs_seg``) in a fresh process that reports its own peak RSS at exit:
# ``wait4``'s ru_maxrss of a child forked from pytest would include pytest's own size at the fork.
CLI_WITH_PEAK_RSS = """
import atexit, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    sys.stderr.write("VmHWM:" + status.split("VmHWM:")[1].split("\\n")[0] + "\\n")
atexit.register(peak)
sys.argv = ["rs-seg", *sys.argv[1:]]
runpy.run_module("rs_seg", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_cli_vectorizes_a_2048_checkerboard_quickly_in_little_memory(tmp_path: Path) -> None:
    """Issue 10: 4.2 M one-pixel regions took 118 s and 3.7 GB; now they are never polygonized.

    Measured here at about 1.5 s and 260 MB (the interpreter and imports are 170 MB of it); the
    limits leave room for a loaded 2-core machine.
    """
    size = 2048
    prob = tmp_path / "prob.tif"
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 1, "dtype": "uint8",
        "crs": UTM, "transform": from_origin(*ORIGIN, 1.0, 1.0), "tiled": True,
        "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(prob, "w", **profile) as dst:
        dst.write(checkerboard(size, size), 1)
        # as rs-seg infer writes it for a cropland model: its threshold, the default minimum area
        fields = FieldSettings(threshold=0.5, boundary_threshold=None, min_area=DEFAULT_MIN_AREA)
        dst.update_tags(**fields.to_tags())
    out = tmp_path / "out.gpkg"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CLI_WITH_PEAK_RSS, "vectorize", str(prob), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("0 fields"), done.stdout
    peak_mb = int(done.stderr.split("VmHWM:")[1].split()[0]) / 1024  # KiB in /proc
    assert seconds < 10
    assert peak_mb < 500
    assert len(read_fields(out)) == 0


# --- attributes --------------------------------------------------------------------------------


def test_attributes_of_a_known_field(tmp_path: Path) -> None:
    values = np.zeros((10, 12), dtype=np.uint8)
    values[2:7, 3:7] = 200  # 5 x 4 pixels
    values[2:7:2, 3:7] = 255
    values[8, 8:11] = 180  # a second field, 3 x 1 pixels
    prob = write_prob(tmp_path / "prob.tif", values)
    vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings(strip_rows=3), scene="s1", model_id="m7")
    fields = read_fields(tmp_path / "f.gpkg")
    assert list(fields.field_id) == ["s1/1", "s1/2"]
    first = fields.iloc[0]
    assert first.geometry.equals(shapely.MultiPolygon([pixel_box(2, 3, 7, 7)]))
    assert first.area_ha == pytest.approx(20 * PIXEL_AREA / 10_000)
    assert first.perimeter_m == pytest.approx(2 * (5 + 4) * PIXEL)
    assert first.mean_prob == pytest.approx((12 * 255 + 8 * 200) / 20 / 255, abs=1e-12)
    assert fields.mean_prob[1] == pytest.approx(180 / 255, abs=1e-12)
    assert set(fields.scene) == {"s1"} and set(fields.model_id) == {"m7"}
    assert fields.date.notna().all()


def test_threshold_uses_the_shared_level(tmp_path: Path) -> None:
    level = threshold_to_level(0.576)
    values = np.zeros((4, 6), dtype=np.uint8)
    values[1, 1:3] = level
    values[1, 4:6] = level - 1
    prob = write_prob(tmp_path / "prob.tif", values)
    summary = vectorize(
        prob, tmp_path / "f.gpkg", VectorizeSettings(FieldSettings(threshold=0.576))
    )
    assert summary.polygons == 1
    assert summary.area_ha == pytest.approx(2 * PIXEL_AREA / 10_000)


def test_nodata_value_and_mask_exclude_pixels(tmp_path: Path) -> None:
    values = np.full((6, 6), 200, dtype=np.uint8)
    values[:, 0] = 255  # nodata value: would be cropland
    prob = write_prob(tmp_path / "value.tif", values, nodata=255)
    assert vectorize(prob, tmp_path / "a.gpkg", VectorizeSettings()).area_ha == pytest.approx(0.3)
    valid = np.ones((6, 6), dtype=bool)
    valid[:3] = False
    prob = write_prob(tmp_path / "mask.tif", values, valid=valid)
    assert vectorize(prob, tmp_path / "b.gpkg", VectorizeSettings()).area_ha == pytest.approx(0.18)


# --- formats -----------------------------------------------------------------------------------


def two_fields(tmp_path: Path) -> Path:
    values = np.zeros((16, 16), dtype=np.uint8)
    values[1:5, 1:5] = 255
    values[8:14, 6:15] = 200
    return write_prob(tmp_path / "prob.tif", values)


def test_geopackage_is_ready_for_qgis(tmp_path: Path) -> None:
    out = tmp_path / "fields.gpkg"
    summary = vectorize(two_fields(tmp_path), out, VectorizeSettings(), metadata={"run": "r1"})
    assert summary.layer == LAYER == "fields"
    info = pyogrio.read_info(out, layer=LAYER)
    assert info["crs"] == UTM
    assert info["geometry_type"] == "MultiPolygon"
    assert info["features"] == summary.polygons == 2
    assert info["layer_metadata"]["run"] == "r1"
    assert info["layer_metadata"]["threshold"] == "0.5"
    with sqlite3.connect(out) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        styles = db.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
    assert "rtree_fields_geom" in tables
    assert [row[:3] for row in styles] == [("fields", "geom", 1)]
    assert "<qgis" in styles[0][3] and "SimpleLine" in styles[0][3]
    assert pyogrio.read_dataframe(out, layer="layer_styles").useAsDefault.tolist() == [1]


def test_geopackage_written_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rs_seg.infer.field_layer as layer_module
    import rs_seg.infer.vectorize as module

    monkeypatch.setattr(module, "BATCH", 2)
    monkeypatch.setattr(layer_module, "BATCH", 2)
    values = np.zeros((20, 20), dtype=np.uint8)
    values[1:19:4, 1:19:4] = 255  # 25 one-pixel fields
    out = tmp_path / "fields.gpkg"
    summary = vectorize(write_prob(tmp_path / "prob.tif", values), out, VectorizeSettings())
    fields = read_fields(out)
    assert summary.polygons == len(fields) == 25
    assert list(fields.field_id) == [f"prob/{n}" for n in range(1, 26)], "scene: the raster's"
    assert pyogrio.read_info(out, layer=LAYER)["layer_metadata"]["level"] == "128"


def test_feet_crs_gives_metric_attributes(tmp_path: Path) -> None:
    values = np.zeros((6, 6), dtype=np.uint8)
    values[1:3, 1:4] = 255  # 6 pixels of 10 x 10 US survey feet
    prob = write_prob(tmp_path / "prob.tif", values, crs="EPSG:2263")
    vectorize(
        prob, tmp_path / "f.gpkg", VectorizeSettings(FieldSettings(min_area=50))
    )  # 55.7 m² survive
    fields = read_fields(tmp_path / "f.gpkg")
    foot = 1200 / 3937
    assert fields.area_ha[0] == pytest.approx(600 * foot**2 / 10_000)
    assert fields.perimeter_m[0] == pytest.approx(100 * foot)
    assert fields.geometry[0].area == pytest.approx(600)  # geometry stays in the raster CRS
    assert (
        vectorize(prob, tmp_path / "g.gpkg", VectorizeSettings(FieldSettings(min_area=60))).polygons
        == 0
    )


def test_flatgeobuf_keeps_the_crs(tmp_path: Path) -> None:
    out = tmp_path / "fields.fgb"
    vectorize(two_fields(tmp_path), out, VectorizeSettings())
    info = pyogrio.read_info(out)
    assert info["crs"] == UTM and info["features"] == 2
    assert read_fields(out).geometry.area.sum() == pytest.approx((16 + 54) * PIXEL_AREA)


def test_geojson_is_rfc7946_wgs84(tmp_path: Path) -> None:
    out = tmp_path / "fields.geojson"
    summary = vectorize(two_fields(tmp_path), out, VectorizeSettings())
    fields = read_fields(out)
    assert pyogrio.read_info(out)["crs"] == "EPSG:4326"
    west, south, east, north = fields.total_bounds
    assert 14.9 < west < east < 15.1 and 47.8 < south < north < 47.9  # UTM 33N origin
    assert fields.area_ha.sum() == pytest.approx(summary.area_ha)  # measured in the scene CRS


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "fields.shp"
    with pytest.raises(RsSegError, match=r"fields\.shp.*\.gpkg, \.fgb, \.geojson, \.parquet"):
        vectorize(two_fields(tmp_path), out, VectorizeSettings())
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb"])
def test_all_nodata_gives_an_empty_layer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    values = np.full((20, 20), 255, dtype=np.uint8)
    prob = write_prob(tmp_path / "prob.tif", values, valid=np.zeros((20, 20), dtype=bool))
    out = tmp_path / f"fields{suffix}"
    with caplog.at_level(logging.WARNING, logger="rs_seg.infer.vectorize"):
        summary = vectorize(prob, out, VectorizeSettings(strip_rows=8))
    assert summary.polygons == 0 and summary.area_ha == 0
    assert "no fields" in caplog.text
    info = pyogrio.read_info(out, layer=LAYER if suffix == ".gpkg" else None)
    assert info["crs"] == UTM
    assert info["geometry_type"] == "MultiPolygon"
    assert list(info["fields"]) == [
        "field_id", "area_ha", "perimeter_m", "mean_prob", "scene", "model_id", "date",
    ]  # fmt: skip
    assert len(read_fields(out)) == 0


def test_no_cropland_gives_an_empty_geojson(tmp_path: Path) -> None:
    prob = write_prob(tmp_path / "prob.tif", np.zeros((8, 8), dtype=np.uint8))
    summary = vectorize(prob, tmp_path / "f.geojson", VectorizeSettings())
    assert summary.polygons == 0
    assert len(read_fields(tmp_path / "f.geojson")) == 0


# --- safety ------------------------------------------------------------------------------------


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    prob = two_fields(tmp_path)
    out = tmp_path / "fields.gpkg"
    out.write_bytes(b"old")
    with pytest.raises(RsSegError, match="--overwrite"):
        vectorize(prob, out, VectorizeSettings())
    with pytest.raises(RsSegError, match="was not written by rs-seg"):
        vectorize(prob, out, VectorizeSettings(), overwrite=True)
    assert out.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*partial*"))
    out.unlink()
    vectorize(prob, out, VectorizeSettings(FieldSettings(threshold=0.9)))
    vectorize(prob, out, VectorizeSettings(), overwrite=True)  # its own output: replaced
    assert len(read_fields(out)) == 2
    assert not list(tmp_path.glob(".*partial*"))


def test_failure_while_writing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rs_seg.infer.field_layer as module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "add_default_style", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        vectorize(two_fields(tmp_path), tmp_path / "fields.gpkg", VectorizeSettings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": 3}, "one band"),
        ({"crs": None}, "no CRS"),
        ({"crs": "EPSG:4326"}, "geographic CRS"),
    ],
)
def test_unusable_rasters_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    prob = write_prob(tmp_path / "prob.tif", np.zeros((8, 8), dtype=np.uint8), **kwargs)
    with pytest.raises(RsSegError, match=message) as error:
        vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings())
    assert str(error.value).startswith(str(prob)) and "\n" not in str(error.value)
    assert not (tmp_path / "f.gpkg").exists()


def test_not_a_raster_is_refused(tmp_path: Path) -> None:
    prob = tmp_path / "prob.tif"
    prob.write_text("not a raster")
    with pytest.raises(RsSegError, match="not a raster"):
        vectorize(prob, tmp_path / "f.gpkg", VectorizeSettings())


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"threshold": 1.5}, {"min_area": -1}, {"strip_rows": 0}]
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(RsSegError):
        vectorize_settings(**kwargs)


def test_wide_rasters_get_shorter_strips_so_memory_does_not_grow_with_width() -> None:
    from rs_seg.infer.polygonize import STRIP_PIXELS, rows_per_strip

    assert rows_per_strip(1024, 2048) == 1024
    assert rows_per_strip(1024, 16384) * 16384 <= STRIP_PIXELS
    assert rows_per_strip(1024, 10**7) == 1, "never zero rows"
    assert rows_per_strip(64, 100) == 64, "a smaller setting is kept"


def test_computed_ahead_keeps_order_raises_errors_and_stops_early() -> None:
    """The thread that computes the next strip's fields while one is written."""
    assert list(computed_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise RsSegError("strip 2 is unreadable")

    items = computed_ahead(failing())
    assert next(items) == 1
    with pytest.raises(RsSegError, match="strip 2"):
        next(items)
    produced = []

    def endless():
        for i in range(10**6):
            produced.append(i)
            yield i

    items = computed_ahead(endless())
    assert next(items) == 0
    items.close()  # the consumer stops: the producer stops too, a result or two later
    assert len(produced) <= 4
