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
