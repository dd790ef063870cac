"""New imagery: each scene mapped exactly once per model, failures retried, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from rs_seg.incoming import IncomingConfig, plan, process_scene
from tests.conftest import write_scene
from tests.test_inference import make_bundle


def run_once(cfg: IncomingConfig) -> dict[str, list[str]]:
    outcome: dict[str, list[str]] = {"mapped": [], "skipped": [], "failed": []}
    for job in plan(cfg):
        result = process_scene(cfg, job)
        outcome[result.status].append(result.scene.name)
    return outcome


@pytest.mark.slow
def test_new_scenes_are_mapped_once_and_again_for_a_new_model(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for i in range(3):
        write_scene(inbox / f"s{i}.tif", 64, 64, seed=i)
    first_model = make_bundle(tmp_path / "m1.pt", seed=1)
    cfg = IncomingConfig(incoming=str(inbox), out_dir=tmp_path / "out", model=first_model)

    assert run_once(cfg)["mapped"] == ["s0.tif", "s1.tif", "s2.tif"]
    assert run_once(cfg) == {"mapped": [], "skipped": ["s0.tif", "s1.tif", "s2.tif"], "failed": []}
    write_scene(inbox / "s3.tif", 64, 64, seed=3)
    assert run_once(cfg)["mapped"] == ["s3.tif"]
    (inbox / "copy_of_s0.tif").write_bytes((inbox / "s0.tif").read_bytes())
    assert run_once(cfg)["mapped"] == [], "same content under another name is not mapped twice"

    new_model = cfg.model_copy(update={"model": make_bundle(tmp_path / "m2.pt", seed=2)})
    assert len(run_once(new_model)["mapped"]) == 4, "a new model maps every scene again"
    sticky = new_model.model_copy(update={"reprocess_on_model_change": False})
    sticky_run = run_once(sticky)
    assert sticky_run["mapped"] == ["copy_of_s0.tif", "s1.tif", "s2.tif", "s3.tif"]
    assert sticky_run["skipped"] == ["s0.tif"], "identical content counts once"
    assert run_once(sticky)["mapped"] == []
    outputs = list((tmp_path / "out").rglob("fields.gpkg"))
    assert len(outputs) == 8, "4 scenes x 2 models, each in its own <scene>/<model id> folder"


@pytest.mark.slow
def test_a_corrupt_scene_is_recorded_and_retried_without_blocking_others(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write_scene(inbox / "good.tif", 64, 64)
    (inbox / "broken.tif").write_text("half a file")
    cfg = IncomingConfig(
        incoming=str(inbox), out_dir=tmp_path / "out", model=make_bundle(tmp_path / "m.pt")
    )
    outcome = run_once(cfg)
    assert outcome["mapped"] == ["good.tif"] and outcome["failed"] == ["broken.tif"]
    write_scene(inbox / "broken.tif", 64, 64, seed=5)  # the upload completes
    assert run_once(cfg) == {"mapped": ["broken.tif"], "skipped": ["good.tif"], "failed": []}
    assert (tmp_path / "out" / "good").is_dir() and (tmp_path / "out" / "broken").is_dir()


def test_an_empty_inbox_needs_no_model(tmp_path: Path) -> None:
    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
                         models_dir=tmp_path / "no-models")  # fmt: skip
    (tmp_path / "inbox").mkdir()
    assert plan(cfg) == [], "a schedule set up before the first model idles quietly"


def test_an_inbox_with_scenes_but_no_model_says_how_to_get_one(tmp_path: Path) -> None:
    from rs_seg.errors import RsSegError

    write_scene(tmp_path / "inbox" / "a.tif", 32, 32)
    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
                         models_dir=tmp_path / "no-models")  # fmt: skip
    with pytest.raises(RsSegError, match="no-models"):
        plan(cfg)


def write_fields(path: Path, scene: str, epsg: int, count: int) -> Path:
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, box

    x0 = 500_000 if epsg != 4326 else 15.0
    step = 100 if epsg != 4326 else 0.001
    polygons = [MultiPolygon([box(x0 + i * step, x0, x0 + (i + 0.5) * step, x0 + step / 2)])
                for i in range(count)]  # fmt: skip
    table = gpd.GeoDataFrame({"field_id": range(1, count + 1), "scene": scene},
                             geometry=polygons, crs=epsg)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_file(path, layer="fields", driver="GPKG")
    return path


def test_merged_layer_holds_every_mapped_scene_in_one_crs(tmp_path: Path) -> None:
    import pyogrio

    from rs_seg.incoming import write_merged

    outputs = [
        write_fields(tmp_path / "north" / "fields.gpkg", "north", 32633, 3),
        write_fields(tmp_path / "east" / "fields.gpkg", "east", 32634, 2),
    ]
    merged = tmp_path / "all" / "fields.gpkg"
    merged.parent.mkdir()
    assert write_merged(outputs, merged) == 5
    info = pyogrio.read_info(merged, layer="fields")
    assert info["features"] == 5 and info["crs"] == "EPSG:32633", "the first scene's CRS"
    table = pyogrio.read_dataframe(merged, layer="fields")
    assert list(table["scene"]) == ["north"] * 3 + ["east"] * 2
    assert table.geometry.is_valid.all() and table.total_bounds[0] > 100_000
    styles = pyogrio.read_dataframe(merged, layer="layer_styles", read_geometry=False)
    assert list(styles["f_table_name"]) == ["fields"], "opens styled in QGIS"
    assert list(merged.parent.iterdir()) == [merged], "no temporary files left"
    assert write_merged(outputs[1:], merged, "EPSG:4326") == 2, "rewritten, never appended twice"
    assert pyogrio.read_info(merged, layer="fields")["crs"] == "EPSG:4326"
    assert write_merged([], tmp_path / "none.gpkg") == 0
    assert not (tmp_path / "none.gpkg").exists()


@pytest.mark.slow
def test_merged_outputs_come_from_the_ledger_for_the_current_model(tmp_path: Path) -> None:
    from rs_seg.incoming import mapped_outputs

    inbox = tmp_path / "inbox"
    for i in range(2):
        write_scene(inbox / f"s{i}.tif", 64, 64, seed=i)
    cfg = IncomingConfig(
        incoming=str(inbox), out_dir=tmp_path / "out", model=make_bundle(tmp_path / "m1.pt")
    )
    run_once(cfg)
    first = mapped_outputs(cfg, plan(cfg))
    assert [p.parts[-3] for p in first] == ["s0", "s1"]
    newer = cfg.model_copy(update={"model": make_bundle(tmp_path / "m2.pt", seed=2)})
    assert mapped_outputs(newer, plan(newer)) == [], "nothing mapped with the new model yet"
    run_once(newer)
    assert len(mapped_outputs(newer, plan(newer))) == 2
    assert set(mapped_outputs(newer, plan(newer))).isdisjoint(first)
