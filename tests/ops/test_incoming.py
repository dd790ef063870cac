"""New imagery: each scene mapped exactly once per model, failures retried, nothing lost; scenes
still being copied wait for a later run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs_seg.ops.incoming import IncomingConfig, map_scenes, plan, scan
from tests.helpers import ROOT, ephemeral_prefect_env, make_bundle, with_model, write_scene


def run_once(cfg: IncomingConfig, now: float | None = None) -> dict[str, list[str]]:
    outcome: dict[str, list[str]] = {"mapped": [], "skipped": [], "failed": [], "waiting": []}
    found = scan(cfg, now)
    for result in [*found.waiting, *map_scenes(cfg, found.jobs)]:
        outcome[result.status].append(result.scene.name)
    return {k: sorted(v) for k, v in outcome.items() if v or k != "waiting"}


def incoming(
    tmp_path: Path, settle_seconds: float = 0, merged: Path | None = None, **infer
) -> IncomingConfig:
    """Scenes the tests write are complete at once: no settle interval unless a test sets one.

    The other keywords are settings of rs-seg infer (``infer:``).
    """
    return IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out",
                          settle_seconds=settle_seconds, merged=merged, infer=infer)  # fmt: skip


@pytest.mark.slow
def test_new_scenes_are_mapped_once_and_again_for_a_new_model(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for i in range(3):
        write_scene(inbox / f"s{i}.tif", 64, 64, seed=i)
    first_model = make_bundle(tmp_path / "m1.pt", seed=1)
    cfg = incoming(tmp_path, model=first_model)

    assert run_once(cfg)["mapped"] == ["s0.tif", "s1.tif", "s2.tif"]
    assert run_once(cfg) == {"mapped": [], "skipped": ["s0.tif", "s1.tif", "s2.tif"], "failed": []}
    write_scene(inbox / "s3.tif", 64, 64, seed=3)
    assert run_once(cfg)["mapped"] == ["s3.tif"]
    (inbox / "copy_of_s0.tif").write_bytes((inbox / "s0.tif").read_bytes())
    assert run_once(cfg)["mapped"] == [], "same content under another name is not mapped twice"

    new_model = with_model(cfg, make_bundle(tmp_path / "m2.pt", seed=2))
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
    write_scene(inbox / "broken.tif", 64, 64, bands=2)  # reads, but the model needs 3 bands
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"))
    outcome = run_once(cfg)
    assert outcome["mapped"] == ["good.tif"] and outcome["failed"] == ["broken.tif"]
    assert not (tmp_path / "out" / "broken").exists(), "a failed scene leaves no folder behind"
    write_scene(inbox / "broken.tif", 64, 64, seed=5)  # replaced by a good one
    assert run_once(cfg) == {"mapped": ["broken.tif"], "skipped": ["good.tif"], "failed": []}
    assert (tmp_path / "out" / "good").is_dir() and (tmp_path / "out" / "broken").is_dir()


def test_an_empty_inbox_needs_no_model(tmp_path: Path) -> None:
    cfg = incoming(tmp_path, models_dir=tmp_path / "no-models")
    (tmp_path / "inbox").mkdir()
    assert plan(cfg) == [], "a schedule set up before the first model idles quietly"
    write_scene(tmp_path / "inbox" / "a.tif", 32, 32)
    copying = cfg.model_copy(update={"settle_seconds": 30})
    [waiting] = scan(copying).waiting
    assert re.fullmatch(r"size or mtime changed \d+ s ago \(settles after 30 s\)", waiting.reason)
    assert scan(copying).jobs == [], "nothing complete yet: no model needed either"


def test_an_inbox_with_scenes_but_no_model_says_how_to_get_one(tmp_path: Path) -> None:
    from rs_seg.errors import RsSegError

    write_scene(tmp_path / "inbox" / "a.tif", 32, 32)
    cfg = incoming(tmp_path, models_dir=tmp_path / "no-models")
    with pytest.raises(RsSegError, match="no-models"):
        plan(cfg)


def write_fields(path: Path, scene: str, epsg: int, count: int) -> Path:
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, box

    x0 = 500_000 if epsg != 4326 else 15.0
    step = 100 if epsg != 4326 else 0.001
    polygons = [MultiPolygon([box(x0 + i * step, x0, x0 + (i + 0.5) * step, x0 + step / 2)])
                for i in range(count)]  # fmt: skip
    columns = {
        "field_id": [f"{scene}/{n}" for n in range(1, count + 1)],
        "area_ha": 0.5,
        "perimeter_m": 300.0,
        "mean_prob": 0.8,
        "scene": scene,
        "model_id": "m",
        "date": gpd.pd.Timestamp("2026-12-01"),
    }  # the columns rs-seg infer writes
    table = gpd.GeoDataFrame(columns, geometry=polygons, crs=epsg)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_file(path, layer="fields", driver="GPKG")
    return path


def test_merged_layer_holds_every_mapped_scene_in_one_crs(tmp_path: Path) -> None:
    import pyogrio

    from rs_seg.ops.incoming import write_merged

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


def test_merged_layer_never_replaces_a_users_file_or_an_input(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from rs_seg.errors import RsSegError
    from rs_seg.ops.incoming import write_merged

    outputs = [write_fields(tmp_path / "north" / "fields.gpkg", "north", 32633, 3)]
    roads = tmp_path / "roads.gpkg"
    gpd.GeoDataFrame({"name": ["A1"]}, geometry=[box(0, 0, 1, 1)], crs=32633).to_file(roads)
    before = roads.read_bytes()
    with pytest.raises(RsSegError, match="was not written by rs-seg"):
        write_merged(outputs, roads)
    assert roads.read_bytes() == before
    with pytest.raises(RsSegError, match=r"is \(or holds\) the input"):
        write_merged(outputs, outputs[0])


@pytest.mark.slow
def test_merged_outputs_come_from_the_ledger_for_the_current_model(tmp_path: Path) -> None:
    from rs_seg.ops.incoming import mapped_outputs

    inbox = tmp_path / "inbox"
    for i in range(2):
        write_scene(inbox / f"s{i}.tif", 64, 64, seed=i)
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m1.pt"))
    run_once(cfg)
    first = mapped_outputs(cfg, plan(cfg))
    assert [p.parts[-3] for p in first] == ["s0", "s1"]
    newer = with_model(cfg, make_bundle(tmp_path / "m2.pt", seed=2))
    assert mapped_outputs(newer, plan(newer)) == [], "nothing mapped with the new model yet"
    run_once(newer)
    assert len(mapped_outputs(newer, plan(newer))) == 2
    assert set(mapped_outputs(newer, plan(newer))).isdisjoint(first)


# --- scenes still being copied: settle interval and completeness read ---------------------------


def half_copied(source: Path, target: Path, fraction: float, preallocate: bool = False) -> None:
    """``target`` as a copy of ``source`` stopped at ``fraction``: truncated, or at full size
    with a zero tail (a copier that pre-allocates the file, then fills it)."""
    data = source.read_bytes()
    done = data[: int(len(data) * fraction)]
    target.write_bytes(done + (b"\0" * (len(data) - len(done)) if preallocate else b""))


def out_entries(cfg: IncomingConfig) -> list[str]:
    return sorted(p.name for p in cfg.out_dir.iterdir() if p.name != "ledger.sqlite")


@pytest.mark.slow
def test_a_scene_copied_in_two_steps_waits_until_complete(tmp_path: Path) -> None:
    """Truncated, then completed: waits while changing, waits while unreadable, then maps once."""
    from rs_seg.ops.ledger import Ledger, content_fingerprint

    source = write_scene(tmp_path / "source" / "late.tif", 96, 96, seed=4)
    write_scene(tmp_path / "inbox" / "early.tif", 64, 64)
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"), settle_seconds=30)
    late = tmp_path / "inbox" / "late.tif"
    half_copied(source, late, 0.5)
    t0 = time.time()
    for scene in (late, tmp_path / "inbox" / "early.tif"):
        os.utime(scene, (t0, t0))
    found = scan(cfg, now=t0)
    assert [w.reason for w in found.waiting] == [
        "size or mtime changed 0 s ago (settles after 30 s)"
    ] * 2, "both just written"
    assert run_once(cfg, now=t0 + 31) == {
        "mapped": ["early.tif"], "skipped": [], "failed": [], "waiting": ["late.tif"]
    }  # fmt: skip
    [waiting] = scan(cfg, now=t0 + 32).waiting
    assert waiting.reason.startswith("cannot be read to the end (last block of band 1): ")
    assert "if the copy has finished, the file is damaged" in waiting.reason
    assert out_entries(cfg) == ["early"], "nothing under out_dir for the waiting scene"
    assert [Path(e.path).name for e in Ledger(cfg.ledger_path).entries()] == ["early.tif"]

    late.write_bytes(source.read_bytes())  # the copy completes
    [waiting] = scan(cfg, now=t0 + 40).waiting
    assert waiting.reason == "size or mtime changed 0 s ago (settles after 30 s)", (
        "changed since the last scan: the settle interval starts again"
    )
    assert run_once(cfg, now=t0 + 71) == {"mapped": ["late.tif"], "skipped": ["early.tif"],
                                          "failed": []}  # fmt: skip
    entries = {Path(e.path).name: e for e in Ledger(cfg.ledger_path).entries()}
    assert entries["late.tif"].fingerprint == content_fingerprint(source), "the complete file"
    assert (entries["late.tif"].status, entries["late.tif"].attempts) == ("done", 1)
    assert sorted(p.name for p in (cfg.out_dir / "late").rglob("*")) == [
        entries["late.tif"].model_id, "fields.gpkg", "fields_prob.qml", "fields_prob.tif"
    ]  # fmt: skip


@pytest.mark.slow
def test_a_preallocated_scene_waits_while_its_writer_keeps_changing_it(tmp_path: Path) -> None:
    """Full size from the start, tail still zeros: only the settle rule can tell, so it must."""
    from rs_seg.ops.incoming import read_problem
    from rs_seg.ops.ledger import Ledger, content_fingerprint

    source = write_scene(tmp_path / "source" / "big.tif", 96, 96, seed=6)
    scene = tmp_path / "inbox" / "big.tif"
    scene.parent.mkdir()
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"), settle_seconds=30)
    t0 = time.time()

    def written(fraction: float, at: float) -> None:
        half_copied(source, scene, fraction, preallocate=True)
        os.utime(scene, (at, at))  # the writer's clock, as an NFS server would stamp it

    written(0.3, t0)
    assert scene.stat().st_size == source.stat().st_size
    assert read_problem(scene) is None, "uncompressed zeros read fine: the read alone can't tell"
    assert [w.reason for w in scan(cfg, now=t0 + 1).waiting] == [
        "size or mtime changed 1 s ago (settles after 30 s)"
    ]
    written(0.6, t0 + 20)
    assert [w.reason for w in scan(cfg, now=t0 + 35).waiting] == [
        "size or mtime changed 0 s ago (settles after 30 s)"
    ], "first seen 35 s ago, but it changed since: not settled"
    written(1.0, t0 + 40)
    assert scan(cfg, now=t0 + 45).jobs == []
    assert Ledger(cfg.ledger_path).entries() == [], "waiting is no claim"
    assert out_entries(cfg) == []
    assert run_once(cfg, now=t0 + 76) == {"mapped": ["big.tif"], "skipped": [], "failed": []}
    [entry] = Ledger(cfg.ledger_path).entries()
    assert entry.fingerprint == content_fingerprint(source) and entry.status == "done"


def test_the_completeness_read_catches_truncated_and_zero_filled_compressed_scenes(
    tmp_path: Path,
) -> None:
    import rasterio

    from rs_seg.ops.incoming import read_problem

    plain = write_scene(tmp_path / "plain.tif", 300, 300, seed=2)
    with rasterio.open(plain) as src:
        profile, data = src.profile, src.read()
    tiled = tmp_path / "tiled.tif"
    with rasterio.open(
        tiled,
        "w",
        **profile | {"compress": "deflate", "tiled": True, "blockxsize": 128, "blockysize": 128},
    ) as dst:
        dst.write(data)  # fmt: skip
    assert read_problem(plain) is None and read_problem(tiled) is None
    for source in (plain, tiled):
        half_copied(source, tmp_path / "cut.tif", 0.9)
        assert read_problem(tmp_path / "cut.tif").startswith("cannot be read to the end")
    half_copied(tiled, tmp_path / "zeros.tif", 0.6, preallocate=True)
    assert read_problem(tmp_path / "zeros.tif").startswith("cannot be read to the end")
    half_copied(plain, tmp_path / "stub.tif", 0.001)  # not even the whole header yet
    assert read_problem(tmp_path / "stub.tif").startswith("cannot be opened as a raster: ")
    (tmp_path / "notes.tif").write_text("not a raster")
    assert read_problem(tmp_path / "notes.tif").startswith("cannot be opened as a raster: ")


def test_an_archive_older_than_the_settle_interval_maps_at_the_first_scan(tmp_path: Path) -> None:
    from rs_seg.ops.ledger import Ledger

    scene = write_scene(tmp_path / "inbox" / "old.tif", 32, 32)
    os.utime(scene, (time.time() - 3600, time.time() - 3600))
    cfg = incoming(tmp_path, settle_seconds=30, model=make_bundle(tmp_path / "m.pt"))
    found = scan(cfg)
    assert [job.scene for job in found.jobs] == [scene] and found.waiting == []
    reads: list[Path] = []
    import rs_seg.ops.incoming as incoming_module

    real = incoming_module.read_problem
    incoming_module.read_problem = lambda p: reads.append(p) or real(p)
    try:
        scan(cfg)
    finally:
        incoming_module.read_problem = real
    assert reads == [], "read once per size and mtime, not on every scan"
    assert Ledger(cfg.ledger_path).entries() == [], "scanning claims nothing"


@pytest.mark.slow
def test_a_scene_folder_appears_whole_and_failures_leave_nothing(tmp_path: Path, monkeypatch):
    import pyogrio

    import rs_seg.ops.incoming as inference  # map_scene calls the run_infer it imported
    from rs_seg.errors import RsSegError
    from rs_seg.ops.incoming import map_scene, scene_outputs

    write_scene(tmp_path / "inbox" / "a.tif", 64, 64)
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"), device="cpu")
    [job] = plan(cfg)
    final = scene_outputs(cfg, job)
    seen = []
    real = inference.run_infer

    def watched(infer_cfg):
        seen.append((final.exists(), infer_cfg.out.parent.name))
        return real(infer_cfg)

    monkeypatch.setattr(inference, "run_infer", watched)
    result = map_scene(cfg, job)
    [(existed, staging)] = seen
    assert not existed and staging.startswith(f".{job.model_id}.partial-"), "built aside"
    assert sorted(p.name for p in final.iterdir()) == [
        "fields.gpkg", "fields_prob.qml", "fields_prob.tif",
    ]  # fmt: skip
    assert sorted(p.name for p in final.parent.iterdir()) == [job.model_id], "no staging left"
    meta = pyogrio.read_info(result.fields, layer="fields")["layer_metadata"]
    assert meta["probability_raster"] == "fields_prob.tif", "relative to the layer's folder"
    assert (final / meta["scene"]).resolve() == job.scene.resolve(), "resolves from the file"
    assert map_scene(cfg, job).status == "mapped", "mapping again replaces its own folder"

    (final / "notes.txt").write_text("mine")
    with pytest.raises(RsSegError, match=r"notes\.txt"):
        map_scene(cfg, job)
    assert (final / "notes.txt").read_text() == "mine", "a folder holding user files is kept"

    source = write_scene(tmp_path / "source.tif", 64, 64, seed=9)
    half_copied(source, tmp_path / "inbox" / "cut.tif", 0.6)
    cut = job.__class__(tmp_path / "inbox" / "cut.tif", "f" * 20, job.model, job.model_id,
                        job.ledger_key)  # fmt: skip
    with pytest.raises(RsSegError, match=r"cut\.tif"):
        map_scene(cfg, cut)  # mapped without the scan's checks, as a retry or a race would
    assert not (cfg.out_dir / "cut").exists(), "no empty <scene> folder left behind"


FLOW_SCRIPT = """
import json, sys
from prefect.client.orchestration import get_client
from rs_seg.config import IncomingConfig
from flows.infer_new_imagery import infer_new_imagery
result = infer_new_imagery(IncomingConfig.model_validate_json(sys.argv[1]))
with get_client(sync_client=True) as client:
    artifacts = [a.data for a in client.read_artifacts() if a.key == "infer-new-imagery"]
print("RESULT " + json.dumps({"result": result, "artifacts": artifacts}))
"""


@pytest.mark.slow
def test_the_flow_reports_waiting_scenes_and_maps_them_later(tmp_path: Path) -> None:
    source = write_scene(tmp_path / "source.tif", 96, 96, seed=3)
    old = time.time() - 7200  # settled; fresh.tif stays unsettled however slow the flow starts
    for name in ("done.tif", "cut.tif"):
        if name == "done.tif":
            write_scene(tmp_path / "inbox" / name, 64, 64)
        else:
            half_copied(source, tmp_path / "inbox" / name, 0.5)
        os.utime(tmp_path / "inbox" / name, (old, old))  # settled, long ago
    half_copied(source, tmp_path / "inbox" / "fresh.tif", 0.5, preallocate=True)
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"), device="cpu",
                   settle_seconds=3600, merged=tmp_path / "all.gpkg")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", FLOW_SCRIPT, cfg.model_dump_json()],
        env=ephemeral_prefect_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout.split("RESULT ", 1)[1])
    result, [artifact] = output["result"], output["artifacts"]
    assert (result["mapped"], result["waiting"], result["failed"]) == (1, 2, 0)
    rows = {Path(r["scene"]).name: r for r in result["results"]}
    assert rows["done.tif"]["status"] == "mapped"
    assert rows["cut.tif"]["reason"].startswith("cannot be read to the end")
    assert rows["fresh.tif"]["reason"].startswith("size or mtime changed ")
    assert rows["fresh.tif"]["reason"].endswith(" s ago (settles after 3600 s)")
    assert "waiting 2" in artifact and "| fresh.tif | waiting |" in artifact
    assert "cannot be read to the end" in artifact
    logs = done.stdout + done.stderr
    assert "fresh.tif waiting (mapped by a later run once complete)" in logs
    assert sorted(p.name for p in cfg.out_dir.iterdir()) == ["done", "ledger.sqlite"]
    assert result["merged"]["scenes"] == 1


@pytest.mark.slow
def test_scenes_sharing_a_file_name_get_their_own_folders_and_field_ids(tmp_path: Path) -> None:
    """``inbox/**/*.tif`` with ``a/x.tif`` and ``b/x.tif``: each mapped into its own folder,
    named the same whatever else is in the inbox, and merged without a field id twice."""
    import pyogrio

    from rs_seg.ops.incoming import mapped_outputs, write_merged

    inbox = tmp_path / "inbox"
    for seed, name in enumerate(("x.tif", "a/x.tif", "b/x.tif", "b/x.tiff")):
        write_scene(inbox / name, 64, 64, seed=seed)
    cfg = incoming(tmp_path, model=make_bundle(tmp_path / "m.pt"), device="cpu", min_area=0)
    cfg = cfg.model_copy(update={"incoming": f"{inbox}/**/*.ti*"})
    found = scan(cfg)
    names = {str(job.scene.relative_to(inbox)): job.scene_name for job in found.jobs}
    assert names["x.tif"] == "x", "a plain top-level stem is kept"
    assert len(set(names.values())) == 4, names
    results = map_scenes(cfg, found.jobs)
    assert [r.status for r in results] == ["mapped"] * 4
    folders = sorted(p.parent.parent.name for p in (tmp_path / "out").rglob("fields.gpkg"))
    assert folders == sorted(names.values()), "four scenes, four folders: no map lost"
    for result in results:
        table = pyogrio.read_dataframe(result.fields, layer="fields", read_geometry=False)
        name = result.fields.parent.parent.name
        assert all(f.startswith(f"{name}/") for f in table["field_id"]), "ids carry the name"
    merged = tmp_path / "all.gpkg"
    assert write_merged(mapped_outputs(cfg, found.jobs), merged) == sum(r.polygons for r in results)
    assert sum(r.polygons for r in results) > 0
    (inbox / "c").mkdir()
    write_scene(inbox / "c" / "x.tif", 64, 64, seed=9)
    again = {str(job.scene.relative_to(inbox)): job.scene_name for job in scan(cfg).jobs}
    assert {k: again[k] for k in names} == names, "names do not depend on the other scenes"
    flat = incoming(tmp_path, model=tmp_path / "m.pt")  # the inbox folder itself: top level only
    assert [job.scene_name for job in scan(flat).jobs] == ["x"]
