"""Chip preparation end to end on tiny scenes: what a user finds in the output folder."""

from __future__ import annotations

import json
import logging

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rs_seg.config import LabelMap, PrepareConfig
from rs_seg.errors import RsSegError
from rs_seg.prepare.chips import RasterLabels, SceneInput
from rs_seg.prepare.index import read_index
from rs_seg.prepare.run import expand_paths, pair_chip_folder, plan_prepare, prepare, unique_names
from rs_seg.prepare.vector_labels import VectorLayer
from tests.helpers import ORIGIN, PIXEL, UTM, pixel_box, read_chip, write_labels, write_scene


def run(tmp_path, scenes, labels, **kwargs):
    cfg = PrepareConfig(
        scenes=[str(s) for s in scenes], labels=labels, out=tmp_path / "chips", **kwargs
    )
    return prepare(cfg)


@pytest.mark.parametrize("compression", ["zstd", "deflate"])
def test_chips_are_georeferenced_copies_of_scene_windows(
    tmp_path, scene_factory, compression
) -> None:
    scene = scene_factory("a", 300, 400, bands=4)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 100, 100)])
    summary = run(tmp_path, [scene], labels, chip_size=128, compression=compression)
    chips = read_index(summary.out)
    assert len(chips) == 3 * 4
    with rasterio.open(scene) as src:
        for row in chips.itertuples():
            window = Window(row.col_off, row.row_off, 128, 128)
            with rasterio.open(row.image_path) as chip:
                assert chip.crs == src.crs
                assert chip.transform.almost_equals(window_transform(window, src.transform))
                assert chip.count == 4 and chip.dtypes[0] == "uint16"
                assert chip.compression.name == compression
                np.testing.assert_array_equal(chip.read(), src.read(window=window))


def test_mask_values_follow_labels_nodata_and_padding(tmp_path, scene_factory) -> None:
    scene = scene_factory("small", 100, 120, nodata_cols=10)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(20, 30, 60, 80)], to_crs="EPSG:4326")
    summary = run(tmp_path, [scene], labels, chip_size=128)
    chips = read_index(summary.out)
    assert len(chips) == 1, "a scene smaller than a chip gives one padded chip"
    mask = read_chip(chips.iloc[0].mask_path)[0]
    assert mask.shape == (128, 128)
    assert (mask[:, :10] == 255).all(), "nodata pixels are ignore"
    assert (mask[100:, :] == 255).all() and (mask[:, 120:] == 255).all(), "padding is ignore"
    assert mask[22:58, 32:78].all() and (mask[22:58, 32:78] == 1).all()
    assert set(np.unique(mask)) == {0, 1, 2, 255}, "the field's outline is boundary (2)"
    assert (mask[20, 32:78] == 2).all() and (mask[59, 32:78] == 2).all()
    assert summary.target == "fields" and summary.boundary_width is None
    row = chips.iloc[0]
    assert row.nodata_fraction == pytest.approx(10 / 120, abs=1e-6)
    assert row.labelled_px == 100 * 110
    assert row.cropland_px == pytest.approx(40 * 50, abs=60)


def test_chips_mostly_nodata_are_skipped(tmp_path, scene_factory) -> None:
    scene = scene_factory("edge", 64, 256, nodata_cols=90)  # chip at col 64: 26/64 nodata
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 120, 64, 200)])
    summary = run(tmp_path, [scene], labels, chip_size=64, max_nodata_fraction=0.5)
    chips = read_index(summary.out)
    assert sorted(chips["col_off"]) == [64, 128, 192]
    assert summary.skipped == {"mostly_nodata": 1}


def test_aoi_marks_everything_outside_as_ignore(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 128, 256)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 64, 64)])
    aoi = write_labels(tmp_path / "aoi.gpkg", [pixel_box(0, 0, 128, 100)], to_crs="EPSG:4326")
    summary = run(tmp_path, [scene], labels, chip_size=128, aoi=aoi)
    chips = read_index(summary.out).sort_values("col_off")
    assert list(chips["col_off"]) == [0], "the chip entirely outside the AOI is dropped"
    mask = read_chip(chips.iloc[0].mask_path)[0]
    assert (mask[:, 100:] == 255).all() and (mask[:, :98] != 255).all()
    assert summary.skipped == {"unlabelled": 1}


def test_index_and_summary_describe_the_split(tmp_path, scene_factory) -> None:
    scenes = [
        scene_factory(f"s{i}", 256, 256, origin=(500_000 + i * 5000, 5_300_000)) for i in range(10)
    ]
    polygons = [
        shapely.box(500_000 + i * 5000, 5_299_000 - 500, 500_000 + i * 5000 + 800, 5_299_000 + 500)
        for i in range(10)
    ]
    labels = write_labels(tmp_path / "l.gpkg", polygons, to_crs="EPSG:4326")
    summary = run(tmp_path, scenes, labels, chip_size=128)
    index = pyogrio.read_dataframe(summary.index)
    assert index.crs.to_epsg() == 4326
    assert {"chip_id", "scene", "row", "col", "image", "mask", "cropland_fraction",
            "nodata_fraction", "split", "block"} <= set(index.columns)  # fmt: skip
    assert index.geometry.notna().all()
    stored = json.loads((summary.out / "summary.json").read_text())
    assert stored["splits"]["train"]["chips"] == summary.splits["train"]["chips"]
    assert sum(v["chips"] for v in stored["splits"].values()) == 40
    fraction = index["cropland_px"].sum() / index["labelled_px"].sum()
    assert fraction == pytest.approx(10 * 80 * 100 / (10 * 256 * 256), abs=0.01)
    assert (summary.out / "prepare.yaml").exists()


@pytest.mark.parametrize("suffix", [".shp", ".geojson", ".fgb"])
def test_vector_label_formats(tmp_path, scene_factory, suffix) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / f"l{suffix}", [pixel_box(0, 0, 32, 64)], to_crs="EPSG:4326")
    chips = read_index(run(tmp_path, [scene], labels, chip_size=64).out)
    assert chips.iloc[0].cropland_fraction == pytest.approx(0.5, abs=0.02)


def test_streamed_labels_give_the_same_chips_as_labels_in_memory(
    tmp_path, scene_factory, monkeypatch
) -> None:
    scene = scene_factory("a", 200, 300)
    fields = [pixel_box(r, c, r + 30, c + 45) for r in range(0, 200, 40) for c in range(0, 300, 60)]
    labels = write_labels(tmp_path / "l.gpkg", fields, to_crs="EPSG:4326")
    in_memory = read_index(run(tmp_path, [scene], labels, chip_size=64).out)
    monkeypatch.setattr(VectorLayer, "in_memory_limit_bytes", 0)
    streamed = read_index(
        prepare(
            PrepareConfig(scenes=[str(scene)], labels=labels, out=tmp_path / "s", chip_size=64)
        ).out
    )
    assert streamed["cropland_px"].tolist() == in_memory["cropland_px"].tolist()
    for a, b in zip(in_memory["mask_path"], streamed["mask_path"], strict=True):
        np.testing.assert_array_equal(read_chip(a), read_chip(b))


def test_label_where_filters_polygons(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 32, 64)])
    cfg = dict(chip_size=64, label_where="class = 'cropland'")
    assert read_index(run(tmp_path, [scene], labels, **cfg).out).iloc[0].cropland_px == 32 * 64


def test_raster_labels_with_value_map_per_scene_template(tmp_path, scene_factory) -> None:
    scene = scene_factory("tile_1", 64, 64)
    values = np.zeros((64, 64), dtype=np.uint8)
    values[:32] = 7
    values[60:] = 99
    with rasterio.open(scene) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    with rasterio.open(tmp_path / "tile_1_mask.tif", "w", **profile) as dst:
        dst.write(values[np.newaxis])
    summary = run(
        tmp_path, [scene], tmp_path / "{stem}_mask.tif", chip_size=64,
        label_map=LabelMap(cropland=[7], ignore=[99]),
    )  # fmt: skip
    mask = read_chip(read_index(summary.out).iloc[0].mask_path)[0]
    assert (mask[:32] == 1).all() and (mask[32:60] == 0).all() and (mask[60:] == 255).all()
    assert summary.target == "cropland", "label rasters have no outlines: binary masks"
    assert json.loads((summary.out / "summary.json").read_text())["target"] == "cropland"


def test_field_outlines_follow_the_fields_across_chip_edges(tmp_path, scene_factory) -> None:
    """Two touching fields cut by chip edges: the band lies on their outlines, not on the edges."""
    scene = scene_factory("a", 128, 128)
    fields = [pixel_box(20, 20, 100, 60), pixel_box(20, 60, 100, 100)]
    labels = write_labels(tmp_path / "l.gpkg", fields, to_crs="EPSG:4326")
    summary = run(tmp_path, [scene], labels, chip_size=64, boundary_width=2 * PIXEL)
    mosaic = np.zeros((128, 128), dtype=np.uint8)
    for row in read_index(summary.out).itertuples():
        mosaic[row.row_off : row.row_off + 64, row.col_off : row.col_off + 64] = read_chip(
            row.mask_path
        )[0]
    interior = mosaic[25:95, 25:95]
    assert (mosaic[25:95, 59:61] == 2).all(), "the shared edge is boundary on both sides"
    assert (interior[:, :33] == 1).all() and (interior[:, 37:] == 1).all(), "no band on chip edges"
    assert (mosaic[63:65, 25:55] == 1).all() and (mosaic[63:65, 65:95] == 1).all(), "chip edge"
    assert json.loads((summary.out / "summary.json").read_text())["target"] == "fields"
    binary = run(tmp_path / "b", [scene], labels, chip_size=64, boundary_width=0)
    assert binary.target == "cropland"
    assert (
        max(int(read_chip(r.mask_path)[0].max() % 255) for r in read_index(binary.out).itertuples())
        == 1
    )


def write_voc_folder(root, n=4, size=32, crs=None):
    for i in range(n):
        scene_class = "farm" if i % 2 else "town"
        write_scene(
            root / "image" / scene_class / f"{i}.tif", size, size, crs=crs, nodata=None, seed=i
        )
        mask = np.full((size, size), 1 if scene_class == "farm" else 0, dtype=np.uint8)
        mask[:4] = 5
        path = root / "label_gray" / scene_class / f"{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(
            path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8"
        ) as dst:
            dst.write(mask[np.newaxis])


def test_georeferenced_chip_folder_gets_footprints(tmp_path) -> None:
    root = tmp_path / "voc"
    write_voc_folder(root, n=4, crs="EPSG:32633")
    cfg = PrepareConfig(
        chips_dir=root, image_glob="image/**/*.tif", mask_glob="label_gray/**/*.tif",
        label_map=LabelMap.parse("1=cropland,5=ignore"), out=tmp_path / "chips", chip_size=32,
    )  # fmt: skip
    chips = read_index(prepare(cfg).out)
    assert chips.geometry.notna().all() and chips.crs.to_epsg() == 4326


def test_existing_chip_folder_is_indexed_with_label_map(tmp_path) -> None:
    root = tmp_path / "voc"
    write_voc_folder(root, n=6)
    pairs = pair_chip_folder(root, "image/**/*.tif", "label_gray/**/*.tif")
    assert [p.name for p in pairs] == ["farm_1", "farm_3", "farm_5", "town_0", "town_2", "town_4"]
    cfg = PrepareConfig(
        chips_dir=root, image_glob="image/**/*.tif", mask_glob="label_gray/**/*.tif",
        label_map=LabelMap.parse("1=cropland,5=ignore"), out=tmp_path / "chips", chip_size=32,
    )  # fmt: skip
    summary = prepare(cfg)
    chips = read_index(summary.out)
    assert len(chips) == 6 and chips.geometry.isna().all(), "no CRS: indexed without footprints"
    farm = read_chip(chips.set_index("scene").loc["farm_1", "mask_path"])[0]
    assert (farm[:4] == 255).all() and (farm[4:] == 1).all()
    assert sum(s["chips"] for s in summary.splits.values()) == 6


def test_unique_names_disambiguate_equal_stems(tmp_path) -> None:
    paths = [tmp_path / "a" / "1.tif", tmp_path / "b" / "1.tif"]
    assert unique_names(paths) == ["a_1", "b_1"]
    assert unique_names([tmp_path / "x.tif", tmp_path / "y.tif"]) == ["x", "y"]


def test_expand_paths_globs_and_plain_paths(tmp_path, scene_factory) -> None:
    a = scene_factory("a", 8, 8)
    b = scene_factory("b", 8, 8)
    assert expand_paths([str(tmp_path / "scenes" / "*.tif"), str(a)]) == [a, b]


def test_overwrite_replaces_output_completely(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 10, 10)])
    run(tmp_path, [scene], labels, chip_size=32)
    stale = tmp_path / "chips" / "images" / "a" / "stale.tif"  # inside what prepare writes
    stale.write_text("old")
    run(tmp_path, [scene], labels, chip_size=64, overwrite=True)
    assert not stale.exists()
    assert len(read_index(tmp_path / "chips")) == 1
    assert not list(tmp_path.glob(".chips*")), "no staging folder left behind"


def test_overwrite_refuses_a_folder_holding_anything_prepare_did_not_write(
    tmp_path, scene_factory
) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 10, 10)])
    run(tmp_path, [scene], labels, chip_size=32)
    (tmp_path / "chips" / "notes.txt").write_text("mine")
    with pytest.raises(RsSegError, match=r"'notes\.txt', which rs-seg prepare did not write"):
        run(tmp_path, [scene], labels, chip_size=64, overwrite=True)
    assert (tmp_path / "chips" / "notes.txt").read_text() == "mine"
    assert len(read_index(tmp_path / "chips")) == 4


def test_an_output_folder_holding_the_inputs_is_refused(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 10, 10)])
    cfg = PrepareConfig(scenes=[str(scene)], labels=labels, out=scene.parent, overwrite=True)
    with pytest.raises(RsSegError, match="is \\(or holds\\) the input"):
        prepare(cfg)
    assert scene.exists() and labels.exists()


def test_pixel_size_is_preserved(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 64, 64)
    labels = write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 10, 10)])
    summary = run(tmp_path, [scene], labels, chip_size=32)
    with rasterio.open(read_index(summary.out).iloc[0].mask_path) as chip:
        assert chip.res == (PIXEL, PIXEL) and chip.nodata == 255


# --- Label features with null, empty, invalid or non-polygon geometry (issue 10, item 9) ---


def _broken_label_scenes(scene_factory):
    """Two 128 px scenes side by side (b starts where a ends), so features can touch both."""
    a = scene_factory("a", 128, 128)
    b = scene_factory("b", 128, 128, origin=(ORIGIN[0] + 128 * PIXEL, ORIGIN[1]))
    return [a, b]


def _bowtie(row0, col0, row1, col1):
    x0, y1, x1, y0 = pixel_box(row0, col0, row1, col1).bounds
    return shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1), (x0, y0)])


VALID_FIELDS = [pixel_box(0, 0, 40, 40), pixel_box(70, 100, 120, 160), pixel_box(10, 150, 50, 200)]
BOWTIE_FIELD = _bowtie(70, 10, 110, 50)


def _write_geometries(path, geometries):
    frame = gpd.GeoDataFrame({"k": range(len(geometries))}, geometry=geometries, crs=UTM)
    frame.to_file(path)
    return path


def _masks(summary):
    chips = read_index(summary.out).sort_values("chip_id")
    return {c: read_chip(p)[0] for c, p in zip(chips["chip_id"], chips["mask_path"], strict=True)}


def test_broken_label_features_are_counted_warned_about_and_leave_masks_alone(
    tmp_path, scene_factory, monkeypatch, caplog
) -> None:
    scenes = _broken_label_scenes(scene_factory)
    x0, y0 = ORIGIN
    line = shapely.LineString([(x0, y0 - 500), (x0 + 2500, y0 - 500)])  # crosses both scenes
    spike = shapely.Polygon([(x0, y0), (x0 + 300, y0), (x0, y0)])  # 3-point ring: no area
    broken = _write_geometries(
        tmp_path / "broken.gpkg",
        [VALID_FIELDS[0], None, BOWTIE_FIELD, shapely.Polygon(), VALID_FIELDS[1], line, spike,
         VALID_FIELDS[2]],
    )  # fmt: skip
    clean = _write_geometries(tmp_path / "clean.gpkg", VALID_FIELDS)
    repaired = _write_geometries(
        tmp_path / "repaired.gpkg", [*VALID_FIELDS, shapely.make_valid(BOWTIE_FIELD)]
    )
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.vector_labels"):
        summary = run(tmp_path / "broken", scenes, broken, chip_size=64)
    expected = {
        "features": 8,
        "used": 4,
        "repaired": 1,
        "dropped": {"null": 1, "empty": 1, "invalid": 1, "not_polygonal": 1},
    }
    assert summary.labels == expected, "each feature counted once, though some touch two scenes"
    assert json.loads((summary.out / "summary.json").read_text())["labels"] == expected
    assert (
        "label features: 4 used of 8 (1 repaired), dropped: 1 null, 1 empty, 1 invalid, "
        "1 not_polygonal"
    ) in summary.report()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "broken.gpkg: 1 label feature with null geometry was dropped (fid 2)",
        "broken.gpkg: 1 label feature with empty geometry was dropped (fid 4)",
        "broken.gpkg: 1 label feature with invalid geometry and no area left after repair was "
        "dropped (fid 7)",
        "broken.gpkg: 1 label feature with non-polygon geometry (points or lines) was dropped "
        "(fid 6)",
    ]

    masks = _masks(summary)
    for chip_id, mask in _masks(run(tmp_path / "repaired", scenes, repaired, chip_size=64)).items():
        np.testing.assert_array_equal(masks[chip_id], mask, err_msg=chip_id)
    clean_masks = _masks(run(tmp_path / "clean", scenes, clean, chip_size=64))
    assert masks.keys() == clean_masks.keys() and len(masks) == 8
    for chip_id, mask in masks.items():
        differs = mask != clean_masks[chip_id]
        if chip_id != "a/r001_c000":  # the only chip the bow-tie (rows 70-109, cols 10-49) is in
            assert not differs.any(), chip_id
            continue
        rows, cols = np.nonzero(differs)
        assert rows.min() >= 70 - 64 and rows.max() < 110 - 64, "only the bow-tie's pixels"
        assert cols.min() >= 10 and cols.max() < 50 and (mask[differs] > 0).all(), "cropland"
        assert differs.sum() == pytest.approx(40 * 40 / 2, rel=0.1), "both triangles are kept"

    monkeypatch.setattr(VectorLayer, "in_memory_limit_bytes", 0)
    monkeypatch.setattr(VectorLayer, "scan_batch", 3)
    streamed = run(tmp_path / "streamed", scenes, broken, chip_size=64)
    assert streamed.labels == expected
    for chip_id, mask in _masks(streamed).items():
        np.testing.assert_array_equal(mask, masks[chip_id])


def test_raster_labels_have_no_feature_counts(tmp_path, scene_factory) -> None:
    scene = scene_factory("tile_1", 64, 64)
    with rasterio.open(scene) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    with rasterio.open(tmp_path / "tile_1_mask.tif", "w", **profile) as dst:
        dst.write(np.ones((1, 64, 64), dtype=np.uint8))
    summary = run(
        tmp_path,
        [scene],
        tmp_path / "{stem}_mask.tif",
        chip_size=64,
        label_map=LabelMap.parse("1=1"),
    )
    assert summary.labels is None and "label features" not in summary.report()
    assert json.loads((summary.out / "summary.json").read_text())["labels"] is None


# --- Label raster values: counted, checked against the map, band 1 only ---


def _label_raster_like(scene, path, bands, dtype="uint8", nodata=None):
    """A label raster on the grid of ``scene`` holding ``bands`` (one 2-D array per band)."""
    with rasterio.open(scene) as src:
        profile = src.profile | {"count": len(bands), "dtype": dtype, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.stack(bands).astype(dtype))
    return path


def _label_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _two_labelled_scenes(tmp_path, scene_factory):
    """Scenes a and b (64 px), masks {stem}_mask.tif: a is 0/1 with a block of 7, b is 0/5."""
    a_values = np.zeros((64, 64), np.uint8)
    a_values[:, :32] = 1
    a_values[60:, :] = 7  # a class the map forgets: 256 px
    b_values = np.zeros((64, 64), np.uint8)  # a region without cropland
    b_values[:8] = 5
    scenes = [scene_factory("a", 64, 64), scene_factory("b", 64, 64, seed=1)]
    for scene, values in zip(scenes, [a_values, b_values], strict=True):
        _label_raster_like(scene, tmp_path / f"{scene.stem}_mask.tif", [values])
    return scenes, tmp_path / "{stem}_mask.tif"


def test_raster_label_values_are_counted_over_all_scenes_and_warned_about(
    tmp_path, scene_factory, caplog
) -> None:
    scenes, labels = _two_labelled_scenes(tmp_path, scene_factory)
    label_map = LabelMap.parse("1=cropland,5|6=ignore")
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        summary = run(tmp_path, scenes, labels, chip_size=32, stride=24, label_map=label_map)
    expected = {
        "pixels": 2 * 64 * 64,  # each pixel once, though strips and chips overlap
        "nodata": 0,
        "cropland": {"1": 60 * 32},
        "ignore": {"5": 8 * 64},
        "unmapped": {"0": 60 * 32 + 56 * 64, "7": 4 * 64},
        "unmapped_other": 0,
        "absent": {"ignore": "6"},
        "multiband_rasters": 0,
    }
    assert summary.label_values == expected
    assert json.loads((summary.out / "summary.json").read_text())["label_values"] == expected
    assert (
        "label values: cropland 1 (1920 px), ignore 5 (512 px), unmapped (background) "
        "0 (5504 px), 7 (256 px); no label 0 px; ignore 6 never found"
    ) in summary.report()
    assert _label_warnings(caplog) == [
        "label map value 6 (ignore) never occurs in the label rasters; found values 0, 1, 5, 7",
        "label value 7 is not in the label map and became background: 3.1% of the labelled "
        "pixels besides value 0 (taken as the background class)",
    ], "scene b has no cropland: legitimate, not warned about"
    chips = read_index(summary.out).set_index("chip_id")
    assert chips["cropland_px"].sum() > 0 and summary.labels is None


def test_label_map_whose_cropland_occurs_in_no_scene_is_an_error_and_writes_nothing(
    tmp_path, scene_factory
) -> None:
    scenes, labels = _two_labelled_scenes(tmp_path, scene_factory)
    with pytest.raises(RsSegError) as error:
        run(tmp_path, scenes, labels, chip_size=32, label_map=LabelMap.parse("255=cropland"))
    assert str(error.value) == (
        f"{labels}: label map cropland value 255 occurs in none of the label rasters of the 2 "
        "scenes (found values 0, 1, 5, 7), so every chip would be background; check --label-map"
    )
    assert not (tmp_path / "chips").exists() and not list(tmp_path.glob(".chips*"))


def test_label_map_value_a_shared_raster_cannot_hold_is_refused_by_the_plan(
    tmp_path, scene_factory
) -> None:
    scene = scene_factory("a", 32, 32)
    mask = _label_raster_like(scene, tmp_path / "mask.tif", [np.ones((32, 32))])
    cfg = PrepareConfig(
        scenes=[str(scene)], labels=mask, out=tmp_path / "chips", chip_size=32,
        label_map=LabelMap(cropland=[1, 300]),
    )  # fmt: skip
    message = r"mask.tif: label map value 300 \(cropland\) cannot occur in this uint8 label raster"
    with pytest.raises(RsSegError, match=message):
        plan_prepare(cfg)  # before any output or staging folder exists
    assert not list(tmp_path.glob("*chips*"))


def test_label_map_value_a_per_scene_raster_cannot_hold_is_refused(tmp_path, scene_factory) -> None:
    scenes, labels = _two_labelled_scenes(tmp_path, scene_factory)
    _label_raster_like(scenes[1], tmp_path / "b_mask.tif", [np.ones((64, 64))], dtype="int8")
    label_map = LabelMap(cropland=[1], ignore=[200])
    with pytest.raises(RsSegError, match=r"b_mask.tif: label map value 200 \(ignore\) cannot occur "
                       r"in this int8 label raster \(values -128 to 127\)"):  # fmt: skip
        run(tmp_path, scenes, labels, chip_size=32, label_map=label_map)
    assert not list(tmp_path.glob("*chips*"))
    inputs = [SceneInput(s.stem, s, tmp_path / f"{s.stem}_mask.tif") for s in scenes]
    with pytest.raises(RsSegError, match=r"b_mask\.tif: label map value 200"):
        RasterLabels(label_map).check(inputs)  # every header at once, no pixels read


def test_multiband_label_rasters_are_read_from_band_1_and_warned_about_once(
    tmp_path, scene_factory, caplog
) -> None:
    scenes = [scene_factory("a", 64, 64), scene_factory("b", 64, 64, seed=1)]
    values = np.zeros((64, 64), np.uint8)
    values[:20] = 1
    noise = np.random.default_rng(0).integers(0, 255, (64, 64))
    for scene in scenes:
        _label_raster_like(scene, tmp_path / f"{scene.stem}_mask.tif", [values, noise, noise])
    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        summary = run(
            tmp_path, scenes, tmp_path / "{stem}_mask.tif", chip_size=64,
            label_map=LabelMap.parse("1=cropland"),
        )  # fmt: skip
    assert _label_warnings(caplog) == [
        "2 label rasters have several bands and only band 1 is read: a_mask.tif (3 bands), "
        "b_mask.tif (3 bands)"
    ]
    assert summary.label_values["multiband_rasters"] == 2
    assert summary.label_values["cropland"] == {"1": 2 * 20 * 64}
    for path in read_index(summary.out)["mask_path"]:
        mask = read_chip(path)[0]
        assert (mask[:20] == 1).all() and (mask[20:] == 0).all()


def test_chip_folder_masks_are_label_rasters_too(tmp_path, caplog) -> None:
    root = tmp_path / "voc"
    write_voc_folder(root, n=4)  # masks: 1 (farm) or 0 (town), first 4 rows 5
    town = root / "label_gray" / "town" / "2.tif"
    with rasterio.open(town, "r+") as dst:
        dst.write(np.full((1, 4, 32), 7, np.uint8), window=Window(0, 28, 32, 4))
    farm = root / "label_gray" / "farm" / "3.tif"  # a grayscale mask saved with three bands
    with rasterio.open(farm) as src:
        gray = src.read(1)
        profile = src.profile | {"count": 3}
    with rasterio.open(farm, "w", **profile) as dst:
        dst.write(np.stack([gray] * 3))

    def cfg(label_map, out="chips"):
        return PrepareConfig(
            chips_dir=root, image_glob="image/**/*.tif", mask_glob="label_gray/**/*.tif",
            label_map=LabelMap.parse(label_map), out=tmp_path / out, chip_size=32,
        )  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="rs_seg.prepare.raster_labels"):
        summary = prepare(cfg("1=cropland,5=ignore"))
    assert summary.label_values == {
        "pixels": 4 * 32 * 32, "nodata": 0, "cropland": {"1": 2 * 28 * 32},
        "ignore": {"5": 4 * 4 * 32}, "unmapped": {"0": 28 * 32 + 24 * 32, "7": 4 * 32},
        "unmapped_other": 0, "absent": {}, "multiband_rasters": 1,
    }  # fmt: skip
    assert _label_warnings(caplog) == [
        "label value 7 is not in the label map and became background: 3.1% of the labelled "
        "pixels besides value 0 (taken as the background class)",
        "1 label raster has several bands and only band 1 is read: 3.tif (3 bands)",
    ]
    farm_mask = read_chip(read_index(summary.out).set_index("scene").loc["farm_3", "mask_path"])
    assert (farm_mask[0, 4:] == 1).all()

    with pytest.raises(RsSegError, match=r"voc: label map cropland value 2 occurs in none of the "
                       r"label rasters of the 4 scenes \(found values 0, 1, 5, 7\)"):  # fmt: skip
        prepare(cfg("2=cropland", "wrong"))
    with pytest.raises(RsSegError, match=r"farm/1.tif: label map value 256 \(ignore\) cannot"):
        prepare(cfg("1=cropland,256=ignore", "too_big"))
    assert not list(tmp_path.glob("*wrong*")) and not list(tmp_path.glob("*too_big*"))


def test_vector_labels_have_no_label_values(tmp_path, scene_factory) -> None:
    scene = scene_factory("a", 32, 32)
    summary = run(tmp_path, [scene], write_labels(tmp_path / "l.gpkg", [pixel_box(0, 0, 8, 8)]))
    assert summary.label_values is None and "label values" not in summary.report()
