"""Tests for the synthetic scene generator (rs_seg.synthetic)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS
from rasterio.features import rasterize
from rasterio.windows import Window

from rs_seg.config import SynthConfig
from rs_seg.errors import RsSegError
from rs_seg.synthetic import (
    CHUNK_COLS,
    LandCover,
    RenderedWindow,
    band_names,
    generate_scenes,
    render_window,
    reuse_or_generate,
    scene_specs,
)

CROPS = {"wheat", "maize", "barley", "rapeseed", "sugar_beet", "fallow"}


def _cfg(out: Path, **kw: object) -> SynthConfig:
    base: dict[str, object] = {"out": out, "size": 192, "bands": 4, "seed": 7, "scenes": 2}
    base.update(kw)
    return SynthConfig(**base)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _full(cfg: SynthConfig) -> Window:
    return Window(0, 0, cfg.size, cfg.size)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    cfg = _cfg(tmp_path_factory.mktemp("synth") / "out", size=320, scenes=3, seed=3)
    return cfg, generate_scenes(cfg)


# --------------------------------------------------------------------------- layout & format
def test_output_layout(dataset) -> None:
    cfg, result = dataset
    assert result.labels == cfg.out / "fields.gpkg"
    assert result.summary == cfg.out / "summary.json"
    expected = [cfg.out / "scenes" / f"synth_s3_{k:03d}.tif" for k in range(cfg.scenes)]
    assert result.scenes == expected
    assert all(p.is_file() for p in [*result.scenes, result.labels, result.summary])
    assert sorted(p.name for p in cfg.out.iterdir()) == ["fields.gpkg", "scenes", "summary.json"]


def test_geotiff_structure(dataset) -> None:
    cfg, result = dataset
    with rasterio.open(result.scenes[0]) as src:
        assert src.count == cfg.bands
        assert src.dtypes == ("uint16",) * cfg.bands
        assert src.width == src.height == cfg.size
        assert src.nodata == 0
        assert src.block_shapes == [(256, 256)] * cfg.bands
        assert src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert src.crs.to_epsg() == 32633
        assert CRS.from_user_input(src.crs.to_wkt()).utm_zone == "33N"
        assert src.res == (3.0, 3.0)
        left, top = src.transform.c, src.transform.f
        assert 400_000 <= left < 800_000 and 5_000_000 < top < 5_400_000


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 5, 6, 7, 16])
def test_band_sets(tmp_path: Path, bands: int) -> None:
    result = generate_scenes(_cfg(tmp_path / "o", size=64, scenes=1, bands=bands))
    with rasterio.open(result.scenes[0]) as src:
        names = src.descriptions
    assert list(names) == band_names(bands)
    assert len(set(names)) == bands
    assert ("nir" in names) == (bands >= 4)
    assert "red" in names
    if bands >= 3:
        assert names[:3] == ("blue", "green", "red")


def test_values_are_reflectance_like(dataset) -> None:
    _, result = dataset
    data = _read(result.scenes[1])
    valid = data[0] > 0
    values = data[:, valid]
    assert values.min() >= 1
    assert np.percentile(values, 1) >= 50
    assert np.percentile(values, 99) <= 6500
    assert values.max() < 10_000


def _rendering_with(cover: LandCover, size: int = 1536) -> RenderedWindow:
    """The 4-band rendering of the first seed whose scene has at least 500 px of ``cover``."""
    for seed in range(20):
        cfg = SynthConfig(size=size, bands=4, seed=seed, scenes=1)
        rendered = render_window(cfg, 0, _full(cfg))
        if (rendered.classes == cover).sum() >= 500:
            return rendered
    raise AssertionError(f"no scene with {cover.name}")


def test_vegetation_and_water_spectra() -> None:
    rendered = _rendering_with(LandCover.WATER)
    red, nir = (rendered.values[band_names(4).index(b)].astype(float) for b in ("red", "nir"))
    for cover in (LandCover.CROPLAND, LandCover.FOREST, LandCover.WATER):
        assert (rendered.classes == cover).sum() > 500, cover
    crop = rendered.classes == LandCover.CROPLAND
    forest = rendered.classes == LandCover.FOREST
    water = rendered.classes == LandCover.WATER
    assert np.mean(nir[crop] > red[crop]) > 0.97
    assert np.mean(nir[forest] > red[forest]) > 0.97
    assert np.median(nir[crop]) > 2 * np.median(red[crop])
    assert np.median(nir[water]) < 600 < np.median(nir[crop])
    assert np.median(nir[water]) < np.median(red[water])


def test_village_has_bright_buildings() -> None:
    rendered = _rendering_with(LandCover.BUILDING)
    red = rendered.values[2].astype(float)
    building = rendered.classes == LandCover.BUILDING
    crop = rendered.classes == LandCover.CROPLAND
    assert np.median(red[building]) > np.median(red[crop])
    assert (rendered.classes == LandCover.GARDEN).sum() > building.sum() / 2


def test_landscape_has_all_ingredients() -> None:
    cfg = SynthConfig(size=2048, bands=4, seed=1, scenes=1)
    rendered = render_window(cfg, 0, Window(0, 0, 2048, 1024))
    fractions = np.bincount(rendered.classes.ravel(), minlength=len(LandCover))
    fractions = fractions / fractions[1:].sum()
    assert 0.35 <= fractions[LandCover.CROPLAND] <= 0.75
    assert fractions[LandCover.GRASSLAND] > 0.03  # field-like but not cropland
    assert 0.003 < fractions[LandCover.ROAD] < 0.05
    assert fractions[LandCover.FOREST] > 0.01


# --------------------------------------------------------------------------- nodata swath
def test_nodata_swath_along_left_edge(dataset) -> None:
    cfg, result = dataset
    for path in result.scenes:
        data = _read(path)
        nodata = data == 0
        assert (nodata.all(axis=0) == nodata.any(axis=0)).all(), "nodata must be in all bands"
        mask = nodata[0]
        widths = mask.sum(axis=1)
        cols = np.arange(cfg.size)
        assert (mask == (cols[None, :] < widths[:, None])).all(), "nodata only as a left prefix"
        assert widths.min() >= 1
        assert widths.max() <= 0.06 * cfg.size + 1
        assert 0.01 < mask.mean() < 0.07
        assert len(np.unique(widths)) > 1, "the swath edge is slanted"


def test_tiny_scene_has_no_swath(tmp_path: Path) -> None:
    result = generate_scenes(_cfg(tmp_path / "o", size=16, scenes=1))
    assert (_read(result.scenes[0]) > 0).all()


# --------------------------------------------------------------------------- labels
def test_labels_file(dataset) -> None:
    _, result = dataset
    assert [str(name) for name, _ in pyogrio.list_layers(result.labels)] == ["fields"]
    labels = gpd.read_file(result.labels, layer="fields")
    assert labels.crs.to_epsg() == 4326
    assert {"scene_id", "crop", "class", "geometry"} <= set(labels.columns)
    assert set(labels["scene_id"]) == {p.stem for p in result.scenes}
    assert set(labels["class"]) == {"cropland"}
    assert set(labels["crop"]) <= CROPS and len(set(labels["crop"])) >= 3
    assert set(labels.geom_type) <= {"Polygon", "MultiPolygon"}
    assert labels.is_valid.all()
    lon_min, lat_min, lon_max, lat_max = labels.total_bounds
    assert 12 < lon_min < lon_max < 18 and 45 < lat_min < lat_max < 49


def _label_raster(labels: gpd.GeoDataFrame, path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        shapes = labels[labels["scene_id"] == path.stem].to_crs(src.crs).geometry
        raster = rasterize(shapes, out_shape=src.shape, transform=src.transform, fill=0)
        return raster.astype(bool), src.read(1) > 0


def test_labels_agree_with_rendered_pixels(dataset) -> None:
    cfg, result = dataset
    labels = gpd.read_file(result.labels)
    summary = json.loads(result.summary.read_text())
    for k, path in enumerate(result.scenes):
        label, valid = _label_raster(labels, path)
        truth = render_window(cfg, k, _full(cfg)).classes
        assert ((truth != LandCover.NODATA) == valid).all()
        crop = truth == LandCover.CROPLAND
        mismatch = (label != crop) & valid
        assert mismatch.mean() < 0.002, f"{path.stem}: {mismatch.sum()} px disagree"
        fraction = label[valid].mean()
        assert summary["scenes"][k]["cropland_fraction"] == pytest.approx(fraction, abs=0.003)


def test_labels_exclude_roads_and_other_classes(dataset) -> None:
    cfg, result = dataset
    labels = gpd.read_file(result.labels)
    for k, path in enumerate(result.scenes):
        label, valid = _label_raster(labels, path)
        truth = render_window(cfg, k, _full(cfg)).classes
        others = valid & (truth != LandCover.CROPLAND)
        assert (label & others).sum() <= 0.001 * valid.sum()


def test_parcels_are_varied_and_not_axis_aligned(dataset) -> None:
    _, result = dataset
    labels = gpd.read_file(result.labels).to_crs(32633)
    assert len(labels) >= 10
    side = np.sqrt(labels.area.to_numpy()) / 3.0  # pixels
    assert side.max() > 60 and np.median(side) > 25
    tilted = 0
    for rect in shapely.minimum_rotated_rectangle(labels.geometry.to_numpy()):
        corners = np.asarray(rect.exterior.coords)
        edge = corners[1] - corners[0]
        angle = np.degrees(np.arctan2(edge[1], edge[0])) % 90
        tilted += 3 < angle < 87
    assert tilted / len(labels) > 0.5


# --------------------------------------------------------------------------- determinism
def test_same_seed_is_identical(tmp_path: Path) -> None:
    first = generate_scenes(_cfg(tmp_path / "a"))
    second = generate_scenes(_cfg(tmp_path / "b"))
    for a, b in zip(first.scenes, second.scenes, strict=True):
        assert np.array_equal(_read(a), _read(b))
    la, lb = gpd.read_file(first.labels), gpd.read_file(second.labels)
    assert len(la) > 0
    assert la.drop(columns="geometry").equals(lb.drop(columns="geometry"))
    assert list(la.geometry.to_wkb()) == list(lb.geometry.to_wkb())
    sa, sb = (json.loads(r.summary.read_text()) for r in (first, second))
    assert sa["scenes"] == sb["scenes"]


def test_different_seed_differs(tmp_path: Path) -> None:
    first = generate_scenes(_cfg(tmp_path / "a", seed=1))
    second = generate_scenes(_cfg(tmp_path / "b", seed=2))
    a, b = _read(first.scenes[0]), _read(second.scenes[0])
    assert np.mean(a != b) > 0.5
    la, lb = gpd.read_file(first.labels), gpd.read_file(second.labels)
    assert set(la.geometry.to_wkb()).isdisjoint(set(lb.geometry.to_wkb()))


def test_scenes_of_one_run_differ(dataset) -> None:
    _, result = dataset
    a, b = _read(result.scenes[0]), _read(result.scenes[1])
    assert np.mean(a != b) > 0.5


# --------------------------------------------------------------------------- windowing
def _render_in_pieces(cfg: SynthConfig, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.zeros((cfg.bands, cfg.size, cfg.size), dtype=np.uint16)
    classes = np.zeros((cfg.size, cfg.size), dtype=np.uint8)
    for top in range(0, cfg.size, rows):
        for left in range(0, cfg.size, cols):
            window = Window(left, top, min(cols, cfg.size - left), min(rows, cfg.size - top))
            rendered = render_window(cfg, 0, window)
            values[:, top : top + window.height, left : left + window.width] = rendered.values
            classes[top : top + window.height, left : left + window.width] = rendered.classes
    return values, classes


def test_rendering_does_not_depend_on_strip_height(dataset) -> None:
    cfg, result = dataset
    written = _read(result.scenes[0])
    whole = render_window(cfg, 0, _full(cfg))
    assert np.array_equal(whole.values, written)
    for rows, cols in ((37, cfg.size), (100, 64), (cfg.size, 101)):
        values, classes = _render_in_pieces(cfg, rows, cols)
        assert np.array_equal(values, written), (rows, cols)
        assert np.array_equal(classes, whole.classes), (rows, cols)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.integers(0, 150),
    left=st.integers(0, 150),
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    split=st.integers(1, 89),
)
def test_any_window_matches_its_sub_windows(
    top: int, left: int, height: int, width: int, split: int
) -> None:
    cfg = SynthConfig(size=256, bands=5, seed=11, scenes=1)
    whole = render_window(cfg, 0, Window(left, top, width, height))
    cut = min(split, height)
    upper = render_window(cfg, 0, Window(left, top, width, cut))
    assert np.array_equal(whole.values[:, :cut], upper.values)
    if cut < height:
        lower = render_window(cfg, 0, Window(left, top + cut, width, height - cut))
        assert np.array_equal(whole.values[:, cut:], lower.values)
        assert np.array_equal(whole.classes[cut:], lower.classes)


def test_wide_scene_is_written_in_several_chunks(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "o", size=CHUNK_COLS + 100, scenes=1, bands=1)
    result = generate_scenes(cfg)
    window = Window(CHUNK_COLS - 50, 300, 100, 40)  # straddles the chunk boundary
    with rasterio.open(result.scenes[0]) as src:
        written = src.read(window=window)
    assert np.array_equal(written, render_window(cfg, 0, window).values)


# --------------------------------------------------------------------------- scenes & errors
def test_scenes_do_not_overlap(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "o", size=96, scenes=5)
    result = generate_scenes(cfg)
    boxes = []
    for path in result.scenes:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32633
            boxes.append(shapely.box(*src.bounds))
    for a, b in itertools.combinations(boxes, 2):
        assert not a.intersects(b)
    summary = json.loads(result.summary.read_text())
    assert [s["bounds"] for s in summary["scenes"]] == [list(b.bounds) for b in boxes]


def test_scenes_show_different_parts_of_the_landscape() -> None:
    for size, scenes in ((64, 40), (3000, 3)):
        specs = scene_specs(SynthConfig(size=size, scenes=scenes, seed=5))
        windows = [
            shapely.box(s.col_off, s.row_off, s.col_off + size, s.row_off + size) for s in specs
        ]
        assert not any(a.intersects(b) for a, b in itertools.combinations(windows, 2))


def test_small_scenes_start_in_farmland() -> None:
    for seed in range(5):
        cfg = SynthConfig(size=256, bands=1, seed=seed, scenes=2)
        for scene in range(cfg.scenes):
            classes = render_window(cfg, scene, _full(cfg)).classes
            assert (classes == LandCover.CROPLAND).mean() > 0.2, (seed, scene)


def test_large_layouts_wrap_into_rows() -> None:
    specs = scene_specs(SynthConfig(size=20_000, scenes=8))
    tops = {s.transform.f for s in specs}
    assert len(tops) == 2
    boxes = [shapely.box(*s.bounds) for s in specs]
    assert not any(a.intersects(b) for a, b in itertools.combinations(boxes, 2))
    assert all(160_000 < s.bounds[2] <= 1_000_000 for s in specs)


def test_summary_contents(dataset) -> None:
    cfg, result = dataset
    summary = json.loads(result.summary.read_text())
    assert summary["config"]["seed"] == cfg.seed and summary["config"]["size"] == cfg.size
    assert summary["bands"] == ["blue", "green", "red", "nir"]
    assert len(summary["scenes"]) == cfg.scenes
    for entry, path in zip(summary["scenes"], result.scenes, strict=True):
        assert (cfg.out / entry["path"]) == path
        assert entry["scene_id"] == path.stem
        assert entry["width"] == entry["height"] == cfg.size
        assert entry["crs"] == "EPSG:32633"
        data = _read(path)
        assert entry["nodata_fraction"] == pytest.approx(float((data[0] == 0).mean()))
        assert 0 <= entry["cropland_fraction"] <= 1
        assert sum(entry["class_fractions"].values()) == pytest.approx(1.0)


def test_existing_output_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "o", size=32, scenes=1)
    generate_scenes(cfg)
    with pytest.raises(RsSegError, match="already exists"):
        generate_scenes(cfg)
    replaced = generate_scenes(cfg.model_copy(update={"overwrite": True, "seed": 99}))
    assert replaced.scenes[0].name == "synth_s99_000.tif"
    assert not (tmp_path / "o" / "scenes" / "synth_s7_000.tif").exists()


def test_non_utm_crs_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RsSegError, match="UTM"):
        generate_scenes(_cfg(tmp_path / "o", epsg=3857))
    assert not (tmp_path / "o").exists()


def test_too_many_huge_scenes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RsSegError, match="UTM zone"):
        generate_scenes(_cfg(tmp_path / "o", size=200_000, scenes=1000))


def test_other_utm_zone_and_pixel_size(tmp_path: Path) -> None:
    result = generate_scenes(_cfg(tmp_path / "o", epsg=32732, pixel_size=10.0, scenes=1))
    with rasterio.open(result.scenes[0]) as src:
        assert src.crs.to_epsg() == 32732 and src.res == (10.0, 10.0)
    labels = gpd.read_file(result.labels)
    assert -50 < labels.total_bounds[1] < labels.total_bounds[3] < -40


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_scenes(_cfg(tmp_path / "o", size=64), progress=True)
    assert "strip" in capsys.readouterr().err


# --------------------------------------------------------------------------- memory
_PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from rs_seg.config import SynthConfig
    from rs_seg.synthetic import generate_scenes
    size, out = int(sys.argv[1]), Path(sys.argv[2])
    generate_scenes(SynthConfig(out=out, size=size, bands=4, seed=0))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _peak_rss_kib(size: int, out: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(size), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_scene_size(tmp_path: Path) -> None:
    small = _peak_rss_kib(4096, tmp_path / "small")
    large = _peak_rss_kib(8192, tmp_path / "large")
    assert large < 1.3 * small, f"peak RSS {small} KiB at 4096 px, {large} KiB at 8192 px"


def test_generated_scenes_are_reused_while_settings_match(tmp_path: Path) -> None:
    synth = SynthConfig(out=tmp_path / "synth", size=64, bands=3, seed=1)
    first = reuse_or_generate(synth)
    assert first.labels == synth.labels_path == tmp_path / "synth" / "fields.gpkg"
    written = first.scenes[0].stat().st_mtime_ns
    assert reuse_or_generate(synth) == first
    assert first.scenes[0].stat().st_mtime_ns == written, "unchanged settings reuse the scenes"
    regenerated = reuse_or_generate(synth.model_copy(update={"seed": 2}))
    assert regenerated.scenes != first.scenes, "new settings replace them"
    assert not first.scenes[0].exists()
