"""Bad inputs to ``rs-seg infer`` and ``rs-seg vectorize`` end in one line, early, naming the user's
file: geographic and out-of-domain rasters, hostile raster tags, non-UTF-8 names, GDAL's own
warnings; never a traceback and never a hidden staging name."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import typer
from rasterio.transform import from_origin
from typer.testing import CliRunner

import rs_seg.infer.run as infer_run
from rs_seg.cli import app
from rs_seg.cli_runtime import reports_errors
from rs_seg.config import InferConfig
from rs_seg.errors import RsSegError
from rs_seg.infer.run import run_infer
from rs_seg.model.fields import FieldSettings
from tests.helpers import (
    assert_one_line_error,
    hidden_leftovers,
    make_bundle,
    rs_seg,
    uint8_profile,
    write_scene,
)

US_FOOT = 1200 / 3937  # metres per US survey foot (EPSG:2263's unit)
BAD = b"\xff".decode("utf-8", "surrogateescape")  # how Python keeps a non-UTF-8 byte of a name


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("model") / "model-bundle.pt", chip=64)


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_refused(result, *fragments: str) -> str:
    """Exit 2, one ``error:`` line holding ``fragments``, no traceback, no staging name."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output and ".partial-" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def write_prob(
    path: Path, crs: str, pixel: float = 10.0, origin: tuple[float, float] = (500_000, 5_300_000)
) -> Path:
    """A one-band probability raster: two 20 x 20 px fields of p = 0.9 in 64 x 64 px."""
    levels = np.zeros((1, 64, 64), dtype=np.uint8)
    levels[0, 4:24, 4:24] = levels[0, 30:50, 30:50] = 230
    profile = uint8_profile(64, 64, bands=1, block=64)
    profile.update(crs=crs, transform=from_origin(*origin, pixel, pixel), nodata=255)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(levels)
        fields = FieldSettings(threshold=0.5, boundary_threshold=None, min_area=0.0)
        dst.update_tags(threshold_used="0.500000", **fields.to_tags())
    return path


def write_geographic_scene(path: Path) -> Path:
    """A 3-band scene in EPSG:4326 at 15°E, 48°N (UTM zone 33N)."""
    return write_scene(path, 96, 96, crs="EPSG:4326", origin=(15, 48), pixel=1e-4)


def test_a_geographic_scene_is_refused_in_one_line_before_any_prediction(
    tmp_path: Path, bundle: Path
) -> None:
    """Once refused after the whole prediction, naming the staged probability raster."""
    write_geographic_scene(tmp_path / "geo.tif")
    result = rs_seg("infer", "geo.tif", "-o", "f.gpkg", "--model", bundle, cwd=tmp_path)
    line = assert_one_line_error(
        result, "geo.tif: scene is in a geographic CRS (EPSG:4326)",
        "gdalwarp -t_srs EPSG:32633 geo.tif geo_utm.tif",
    )  # fmt: skip
    assert ".partial-" not in result.stderr and "input values" not in result.stderr, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo.tif"]


def test_the_scene_is_checked_before_any_output_is_staged(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("reached after the scene check")

    monkeypatch.setattr(infer_run, "staged_files", never)
    monkeypatch.setattr(infer_run, "predict_scene", never)
    scenes = {
        "geo.tif": write_geographic_scene(tmp_path / "geo.tif"),
        "bands.tif": write_scene(tmp_path / "bands.tif", 32, 32, bands=4),
        "nocrs.tif": write_scene(tmp_path / "nocrs.tif", 32, 32, crs=None),
    }
    for name, scene in scenes.items():
        cfg = InferConfig(scene=scene, out=tmp_path / "f.gpkg", model=bundle)
        with pytest.raises(RsSegError, match=re.escape(name)):
            run_infer(cfg)


def test_geojson_of_a_raster_outside_its_crs_domain_is_refused_before_polygonizing(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL's 'Point outside of projection domain' was a traceback after all the work."""
    prob = write_prob(tmp_path / "far_prob.tif", "EPSG:32633", origin=(9e7, 9e7))
    result = invoke("vectorize", prob, "-o", tmp_path / "f.geojson")
    assert_refused(result, "far_prob.tif", "cannot be written as GeoJSON", ".gpkg")
    assert invoke("vectorize", prob, "-o", tmp_path / "f.gpkg").exit_code == 0
    monkeypatch.setattr(infer_run, "staged_files", None)  # never reached
    scene = write_scene(tmp_path / "far.tif", 32, 32, origin=(9e7, 9e7))
    with pytest.raises(RsSegError, match=r"far\.tif: its extent lies outside"):
        run_infer(InferConfig(scene=scene, out=tmp_path / "g.geojson", model=bundle))


def test_vectorize_refuses_a_geographic_raster_saying_how_to_reproject(tmp_path: Path) -> None:
    prob = write_prob(tmp_path / "geo_prob.tif", "EPSG:4326", pixel=1e-4, origin=(15, 48))
    result = invoke("vectorize", prob, "-o", tmp_path / "f.gpkg")
    assert_refused(result, "geo_prob.tif: probability raster is in a geographic CRS",
                   "gdalwarp -t_srs EPSG:32633")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo_prob.tif"]


def test_fields_of_a_raster_in_us_feet_have_the_areas_of_the_same_raster_in_metres(
    tmp_path: Path,
) -> None:
    """Areas, perimeters and the m² minimum area are converted with the CRS's unit."""
    layers = {}
    for name, crs, pixel in [("m", "EPSG:32633", 10.0), ("ft", "EPSG:2263", 10 / US_FOOT)]:
        prob = write_prob(tmp_path / f"{name}_prob.tif", crs, pixel, origin=(1e6, 2e5))
        out = tmp_path / f"{name}.gpkg"
        result = invoke("vectorize", prob, "-o", out, "--min-area", "30000", "--simplify", "0")
        assert result.exit_code == 0, result.output
        layers[name] = pyogrio.read_dataframe(out, layer="fields")
    # 20 x 20 px of 100 m² = 4 ha each; --min-area 30000 m² keeps both
    for column in ("area_ha", "perimeter_m"):
        np.testing.assert_allclose(layers["ft"][column], layers["m"][column], rtol=1e-9)
    np.testing.assert_allclose(layers["m"]["area_ha"], [4.0, 4.0])


@pytest.mark.parametrize(
    ("tags", "fragments"),
    [
        (
            {"field_threshold_used": "5"},
            ("field_threshold_used tag '5' is out of range", "--threshold"),
        ),
        ({"field_threshold_used": "nan"}, ("field_threshold_used tag 'nan'", "--threshold")),
        ({"field_threshold_used": "abc"}, ("unreadable field_threshold_used tag", "--threshold")),
        ({"min_area_used": "-5"}, ("min_area_used tag '-5' is out of range", "--min-area")),
        ({"min_area_used": "inf"}, ("min_area_used tag 'inf'", "--min-area")),
        ({"boundary_threshold_used": "nan"}, ("boundary_threshold_used", "--boundary-threshold")),
    ],
)
def test_out_of_range_raster_tags_are_refused_naming_the_raster(
    tmp_path: Path, tags: dict[str, str], fragments: tuple[str, ...]
) -> None:
    prob = write_prob(tmp_path / "p_prob.tif", "EPSG:32633")
    with rasterio.open(prob, "r+") as dst:
        dst.update_tags(**tags)
    result = invoke("vectorize", prob, "-o", tmp_path / "f.gpkg")
    assert_refused(result, str(prob), *fragments)


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--threshold", "1"), ("--threshold", "nan"), ("--min-area", "-1"), ("--simplify", "nan"),
     ("--fill-holes-below", "-2"), ("--boundary-threshold", "0")],
)  # fmt: skip
def test_vectorize_flags_have_the_ranges_of_the_infer_schema(
    tmp_path: Path, flag: str, value: str
) -> None:
    prob = write_prob(tmp_path / "p_prob.tif", "EPSG:32633")
    result = invoke("vectorize", prob, "-o", tmp_path / "f.gpkg", flag, value)
    assert_refused(result, flag.removeprefix("--").replace("-", "_"))


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (("infer", f"s{BAD}.tif", "-o", "f.gpkg"), "s\\xff.tif"),
        (("infer", "s.tif", "-o", f"f{BAD}.gpkg"), "f\\xff.gpkg"),
        (("infer", "s.tif", "-o", "f.gpkg", "--prob-out", f"p{BAD}.tif"), "p\\xff.tif"),
        (("infer", "s.tif", "-o", "f.gpkg", "--mask-out", f"m{BAD}.tif"), "m\\xff.tif"),
        (("vectorize", f"p{BAD}_prob.tif", "-o", "f.gpkg"), "p\\xff_prob.tif"),
        (("vectorize", "p_prob.tif", "-o", f"f{BAD}.gpkg"), "f\\xff.gpkg"),
    ],
)
def test_names_that_are_not_utf8_are_refused_in_one_printable_line(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch, arguments: tuple, named: str
) -> None:
    """rasterio and pyogrio raised UnicodeEncodeError tracebacks on such names."""
    monkeypatch.chdir(tmp_path)
    write_scene(tmp_path / "s.tif", 32, 32)
    write_prob(tmp_path / "p_prob.tif", "EPSG:32633")
    shutil.copy(tmp_path / "s.tif", tmp_path / f"s{BAD}.tif")  # GDAL cannot even write them
    shutil.copy(tmp_path / "p_prob.tif", tmp_path / f"p{BAD}_prob.tif")
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--model", str(bundle)] if arguments[0] == "infer" else []
    result = invoke(*arguments, *extra)
    assert_refused(result, named, "not valid UTF-8", "rename")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_name_that_is_not_utf8_deep_in_a_command_is_still_one_line() -> None:
    """The last net: a surrogate a library refuses to encode, wherever it comes from."""

    @reports_errors
    def command() -> None:
        f"ledger{BAD}.sqlite".encode()

    probe = typer.Typer()
    probe.command()(command)
    result = CliRunner().invoke(probe, [], catch_exceptions=False)
    assert_refused(result, "ledger\\xff.sqlite", "not valid UTF-8")


def test_gdal_warnings_are_one_rs_seg_line_each(tmp_path: Path) -> None:
    """pyogrio raised GDAL's warnings as Python warnings: file, line and repeats on stderr."""
    prob = write_prob(tmp_path / "p_prob.tif", "EPSG:32633")
    assert invoke("vectorize", prob, "-o", tmp_path / "f.gpkg").exit_code == 0
    with sqlite3.connect(tmp_path / "f.gpkg") as db:  # a GeoPackage another tool damaged
        db.execute("PRAGMA application_id = 0")
    result = invoke("vectorize", prob, "-o", tmp_path / "f.gpkg", "--overwrite")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # four raw warnings before, two of them repeats
    assert lines[0].startswith("warning: GDAL: GPKG: bad application_id=0x00000000 on "), lines


def test_an_all_nodata_scene_warns_without_staging_names(tmp_path: Path, bundle: Path) -> None:
    """The empty-layer warning named the hidden staging copy of the probability raster."""
    scene = write_scene(tmp_path / "empty.tif", 64, 64, nodata_cols=64)
    result = invoke("infer", scene, "-o", tmp_path / "f.fgb", "--model", bundle)
    assert result.exit_code == 0, result.output
    assert ".partial-" not in result.stderr
    assert f"{tmp_path / 'f_prob.tif'}: no fields" in result.stderr
    assert not hidden_leftovers(tmp_path)
