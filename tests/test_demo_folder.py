"""`make demo --out DIR` replaces only a folder the demo made, and only after it succeeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.demo import _check_demo_folder, _previous_results_aside
from rs_seg.errors import RsSegError


def test_a_folder_the_demo_did_not_make_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "thesis.docx").write_text("years of work")
    with pytest.raises(RsSegError, match=r"'thesis\.docx', which make demo did not write"):
        _check_demo_folder(home)
    assert sorted(p.name for p in home.iterdir()) == ["models", "thesis.docx"]


def test_earlier_results_come_back_when_the_new_run_fails(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    (demo / "models").mkdir(parents=True)
    (demo / "models" / "latest.json").write_text("old")
    (demo / "fields.gpkg").write_text("old fields")
    with pytest.raises(RuntimeError), _previous_results_aside(demo):
        assert not (demo / "models").exists()
        (demo / "models").mkdir()
        (demo / "models" / "half.json").write_text("new")
        raise RuntimeError("training failed")
    assert (demo / "models" / "latest.json").read_text() == "old"
    assert not (demo / "models" / "half.json").exists()
    assert sorted(p.name for p in demo.iterdir()) == ["demo.json", "fields.gpkg", "models"]


def test_earlier_results_go_only_after_success(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    (demo / "mapped").mkdir(parents=True)
    (demo / "mapped" / "stale.txt").write_text("old")
    with _previous_results_aside(demo):
        (demo / "mapped").mkdir()
    assert sorted(p.name for p in demo.iterdir()) == ["demo.json", "mapped"]
    assert list((demo / "mapped").iterdir()) == []
