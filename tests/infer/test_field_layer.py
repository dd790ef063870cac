"""The one field layer writer: same schema per scene and merged, keys, dates, GeoParquet, style."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest

from rs_seg.errors import RsSegError
from rs_seg.infer.field_layer import LAYER, field_style, field_style_sld
from rs_seg.infer.vectorize import VectorizeSettings, vectorize
from rs_seg.model.fields import FieldSettings
from rs_seg.ops.incoming import write_merged
from tests.infer.test_vectorize import write_prob

SLD = "{http://www.opengis.net/sld}"
SE = "{http://www.opengis.net/se}"
OGC = "{http://www.opengis.net/ogc}"


def scene_prob(path: Path, offset: int = 0) -> Path:
    """Three fields (one touching the raster edge) in a 24 x 24 probability raster."""
    values = np.zeros((24, 24), dtype=np.uint8)
    values[1:6, 1 + offset : 7 + offset] = 230
    values[10:20, 3:9] = 200
    values[12:24, 14:24] = 255
    return write_prob(path, values)


def column_types(gpkg: Path) -> dict[str, str]:
    with sqlite3.connect(gpkg) as db:
        return {row[1]: row[2] for row in db.execute(f"PRAGMA table_info({LAYER})")}


def gpkg_version(gpkg: Path) -> int:
    with sqlite3.connect(gpkg) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def mapped(tmp_path: Path, name: str, offset: int = 0) -> Path:
    """A scene's field file as ``rs-seg infer`` leaves it: ``<scene>/fields.gpkg``."""
    out = tmp_path / "mapped" / name / "fields.gpkg"
    out.parent.mkdir(parents=True)
    prob = scene_prob(tmp_path / f"{name}_prob.tif", offset)
    vectorize(prob, out, VectorizeSettings(), scene=name, model_id="m1")
    return out


def test_keys_are_scene_and_number_unique_and_stable_across_runs(tmp_path: Path) -> None:
    prob = scene_prob(tmp_path / "north_prob.tif")
    first, second = tmp_path / "a.gpkg", tmp_path / "b.gpkg"
    vectorize(prob, first, VectorizeSettings(strip_rows=8))
    vectorize(prob, second, VectorizeSettings(strip_rows=5))
    a, b = (pyogrio.read_dataframe(p, layer=LAYER) for p in (first, second))
    assert list(a.field_id) == ["north/1", "north/2", "north/3"], "scene: the raster's name"
    assert list(a.field_id) == list(b.field_id), "same inputs, same keys (any strip height)"
    assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry, strict=True))
    assert set(a.scene) == {"north"}


def test_merged_layer_has_the_per_scene_schema_version_and_style(tmp_path: Path) -> None:
    outputs = [mapped(tmp_path, "north"), mapped(tmp_path, "south", offset=2)]
    merged = tmp_path / "merged" / "fields.gpkg"
    assert write_merged(outputs, merged) == 6
    assert gpkg_version(merged) == gpkg_version(outputs[0]) == 10200, "GeoPackage 1.2"
    assert column_types(merged) == column_types(outputs[0])
    assert column_types(merged)["date"] == "DATE" and column_types(merged)["field_id"] == "TEXT"
    table = pyogrio.read_dataframe(merged, layer=LAYER)
    assert table.field_id.is_unique
    assert list(table.field_id) == [f"{s}/{n}" for s in ("north", "south") for n in (1, 2, 3)]
    per_scene = pyogrio.read_dataframe(outputs[1], layer=LAYER)
    assert np.allclose(table.area_ha[3:], per_scene.area_ha)
    with sqlite3.connect(merged) as db:
        qml, sld, default = db.execute(
            "SELECT styleQML, styleSLD, useAsDefault FROM layer_styles"
        ).fetchone()
    assert qml == field_style() and sld == field_style_sld() and default == 1


def test_merged_metadata_names_models_thresholds_and_sources_relative_to_itself(
    tmp_path: Path,
) -> None:
    outputs = [mapped(tmp_path, "north"), mapped(tmp_path, "south")]
    merged = tmp_path / "merged" / "fields.gpkg"
    write_merged(outputs, merged)
    meta = pyogrio.read_info(merged, layer=LAYER)["layer_metadata"]
    assert meta["model_id"] == "m1" and meta["threshold"] == "0.5"
    assert meta["rs_seg_version"] and meta["merged_at"].endswith("+00:00")
    assert json.loads(meta["scenes"]) == ["north", "south"]
    sources = json.loads(meta["source_files"])
    assert sources == ["../mapped/north/fields.gpkg", "../mapped/south/fields.gpkg"]
    resolved = [(merged.parent / source).resolve() for source in sources]
    assert resolved == [o.resolve() for o in outputs]


def test_one_scene_merged_twice_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    north = mapped(tmp_path, "north")
    merged = tmp_path / "merged.gpkg"
    with pytest.raises(RsSegError, match=r"north/1.*more than one merged file"):
        write_merged([north, north], merged)
    assert not merged.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "mapped", "north_prob.tif",
    ]  # fmt: skip


# --- fiboa GeoParquet --------------------------------------------------------------------------


def test_geoparquet_has_fiboa_core_columns_and_reads_in_geopandas(tmp_path: Path) -> None:
    import geopandas as gpd
    import pyarrow.parquet as pq

    prob = scene_prob(tmp_path / "north_prob.tif")
    out, gpkg = tmp_path / "fields.parquet", tmp_path / "fields.gpkg"
    summary = vectorize(prob, out, VectorizeSettings(), model_id="m1")
    vectorize(prob, gpkg, VectorizeSettings(), model_id="m1")
    schema = pq.read_schema(out)
    types = {f.name: str(f.type) for f in schema}
    assert types == {
        "id": "string", "geometry": "binary",
        "bbox": "struct<xmin: double, ymin: double, xmax: double, ymax: double>",
        "area": "float", "perimeter": "float", "determination_method": "string",
        "determination_datetime": "timestamp[ms, tz=UTC]",
        "determination_details": "string", "mean_prob": "double", "scene": "string",
        "model_id": "string",
    }  # fmt: skip
    meta = schema.metadata
    fiboa = json.loads(meta[b"fiboa"])
    assert fiboa["fiboa_version"] == "0.2.0" and fiboa["fiboa_extensions"] == []
    geo = json.loads(meta[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and column["encoding"] == "WKB"
    assert column["geometry_types"] == ["MultiPolygon"] and column["crs"]["id"]["code"] == 32633
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    fields = gpd.read_parquet(out)
    table = pq.read_table(out)
    bounds = np.array([[box[k] for k in ("xmin", "ymin", "xmax", "ymax")]
                       for box in table["bbox"].to_pylist()])  # fmt: skip
    assert np.allclose(bounds, fields.geometry.bounds.to_numpy())
    # the row group's bbox statistics say where it lies: what lets readers skip row groups
    stats = pq.ParquetFile(out).metadata.row_group(0).column(2).statistics
    assert stats.has_min_max and np.isclose(stats.min, bounds[:, 0].min())
    reference = pyogrio.read_dataframe(gpkg, layer=LAYER)
    assert fields.crs.to_epsg() == 32633 and len(fields) == summary.polygons == 3
    assert list(fields["id"]) == list(reference.field_id)
    assert np.allclose(fields["area"], reference.area_ha, rtol=1e-6)
    assert np.allclose(fields["perimeter"], reference.perimeter_m, rtol=1e-6)
    assert set(fields["determination_method"]) == {"auto-imagery"}
    assert all(a.equals(b) for a, b in zip(fields.geometry, reference.geometry, strict=True))


def test_geoparquet_is_written_in_row_groups_and_an_empty_one_keeps_its_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    import rs_seg.infer.field_layer as layer_module
    import rs_seg.infer.vectorize as module

    monkeypatch.setattr(module, "BATCH", 1)
    monkeypatch.setattr(layer_module, "BATCH", 1)
    out = tmp_path / "fields.parquet"
    vectorize(scene_prob(tmp_path / "north_prob.tif"), out, VectorizeSettings())
    assert pq.ParquetFile(out).metadata.num_row_groups == 3, "one per batch: bounded memory"
    empty = tmp_path / "empty.parquet"
    vectorize(write_prob(tmp_path / "zero.tif", np.zeros((8, 8))), empty, VectorizeSettings())
    table = pq.read_table(empty)
    assert table.num_rows == 0 and "fiboa" in {k.decode() for k in table.schema.metadata}


def test_geoparquet_replaces_only_its_own_kind(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    prob = scene_prob(tmp_path / "north_prob.tif")
    out = tmp_path / "fields.parquet"
    vectorize(prob, out, VectorizeSettings())
    vectorize(prob, out, VectorizeSettings(FieldSettings(threshold=0.95)), overwrite=True)
    assert pq.read_table(out).num_rows == 1, "0.95 keeps the 255 field only"
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"a": [1]}), users)
    before = users.read_bytes()
    with pytest.raises(RsSegError, match="not written by rs-seg"):
        vectorize(prob, users, VectorizeSettings(), overwrite=True)
    assert users.read_bytes() == before


def test_geoparquet_merged_layer(tmp_path: Path) -> None:
    import geopandas as gpd

    outputs = [mapped(tmp_path, "north"), mapped(tmp_path, "south")]
    merged = tmp_path / "all.parquet"
    assert write_merged(outputs, merged) == 6
    fields = gpd.read_parquet(merged)
    assert fields["id"].is_unique and set(fields.scene) == {"north", "south"}


# --- style -------------------------------------------------------------------------------------


def test_style_outlines_fields_without_fill_and_labels_area_up_close() -> None:
    qml = ET.fromstring(field_style())
    layers = qml.findall("./renderer-v2/symbols/symbol/layer")
    assert [layer.get("class") for layer in layers] == ["SimpleLine", "SimpleLine"]
    widths = [float(layer.find("./prop[@k='line_width']").get("v")) for layer in layers]
    colours = [layer.find("./prop[@k='line_color']").get("v") for layer in layers]
    assert widths[0] > widths[1], "a dark casing under a bright line"
    assert colours == ["20,20,20,190", "255,221,0,255"]
    assert qml.get("labelsEnabled") == "1"
    text = qml.find("./labeling/settings/text-style")
    assert "area_ha" in text.get("fieldName") and text.get("isExpression") == "1"
    rendering = qml.find("./labeling/settings/rendering")
    assert rendering.get("scaleVisibility") == "1" and float(rendering.get("scaleMax")) > 0
    aliases = {a.get("field"): a.get("name") for a in qml.iter("alias")}
    assert aliases["area_ha"] == "Area (ha)" and qml.findtext("previewExpression") == '"field_id"'


def test_sld_twin_has_the_same_lines_and_a_scale_limited_label() -> None:
    sld = ET.fromstring(field_style_sld())
    assert sld.tag == f"{SLD}StyledLayerDescriptor" and sld.get("version") == "1.1.0"
    rules = list(sld.iter(f"{SE}Rule"))
    strokes = [
        {p.get("name"): p.text for p in line.iter(f"{SE}SvgParameter")}
        for line in rules[0].iter(f"{SE}LineSymbolizer")
    ]
    assert [s["stroke"] for s in strokes] == ["#141414", "#ffdd00"]
    assert float(strokes[0]["stroke-width"]) > float(strokes[1]["stroke-width"])
    assert not list(sld.iter(f"{SE}PolygonSymbolizer")), "no fill"
    assert rules[1].findtext(f"{SE}MaxScaleDenominator") == "25000"
    label = rules[1].find(f"{SE}TextSymbolizer/{SE}Label")
    assert label.find(f"{OGC}Function/{OGC}PropertyName").text == "area_ha"


def test_cli_writes_geoparquet_and_gdal_reads_it_where_it_has_the_driver(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import geopandas as gpd
    from typer.testing import CliRunner

    from rs_seg.cli import app

    prob = scene_prob(tmp_path / "north_prob.tif")
    out = tmp_path / "fields.parquet"
    args = ["vectorize", str(prob), "-o", str(out), "--threshold", "0.5", "--min-area", "0"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 fields" in result.output and len(gpd.read_parquet(out)) == 3
    ogrinfo = shutil.which("ogrinfo")
    formats = ogrinfo and subprocess.run([ogrinfo, "--formats"], capture_output=True, text=True)
    if not formats or "parquet" not in formats.stdout.lower():
        pytest.skip("no GDAL with the (Geo)Parquet driver here (GDAL >= 3.5 built with Arrow)")
    info = subprocess.run([str(ogrinfo), "-so", "-al", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "Feature Count: 3" in info.stdout, info.stderr


def test_a_merged_layer_in_degrees_keeps_the_scenes_metric_areas(tmp_path: Path) -> None:
    outputs = [mapped(tmp_path, "north"), mapped(tmp_path, "south", offset=2)]
    merged = tmp_path / "wgs84.gpkg"
    write_merged(outputs, merged, "EPSG:4326")
    table = pyogrio.read_dataframe(merged, layer=LAYER)
    scenes = [pyogrio.read_dataframe(o, layer=LAYER) for o in outputs]
    assert table.crs.to_epsg() == 4326
    assert np.allclose(table.area_ha, np.concatenate([s.area_ha for s in scenes]))
    assert np.allclose(table.perimeter_m, np.concatenate([s.perimeter_m for s in scenes]))


def test_an_empty_geojson_layer_is_still_known_as_rs_segs(tmp_path: Path) -> None:
    """GDAL stores no columns for a GeoJSON without features, so its provenance says it is ours:
    ``--overwrite`` replaces rs_seg's empty result, never a user's empty collection."""
    from rs_seg.staging import fields_written_by_rs_seg

    empty = write_prob(tmp_path / "empty_prob.tif", np.zeros((24, 24), dtype=np.uint8))
    out = tmp_path / "fields.geojson"
    vectorize(empty, out, VectorizeSettings(), scene="s", model_id="m1")
    document = json.loads(out.read_text())
    assert document["features"] == [] and "rs_seg_version" in document["rs_seg"]
    assert fields_written_by_rs_seg(out)
    vectorize(scene_prob(tmp_path / "full_prob.tif"), out, VectorizeSettings(), overwrite=True)
    assert len(json.loads(out.read_text())["features"]) == 3
    users = tmp_path / "users.geojson"
    users.write_text('{"type": "FeatureCollection", "name": "fields", "features": []}')
    assert not fields_written_by_rs_seg(users)
