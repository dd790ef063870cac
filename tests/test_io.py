"""Outputs appear whole or not at all, and are never replaced without consent."""

from __future__ import annotations

import pytest

from rs_seg.errors import RsSegError
from rs_seg.io import staged_dir, staged_file


def test_staged_dir_appears_only_on_success(tmp_path) -> None:
    final = tmp_path / "out"
    with staged_dir(final) as staging:
        (staging / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_and_keeps_the_old_output(tmp_path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(final, overwrite=True) as staging:
        (staging / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "old.txt").read_text() == "old"


def test_existing_output_is_refused_without_overwrite(tmp_path) -> None:
    final = tmp_path / "fields.gpkg"
    final.write_text("mine")
    with pytest.raises(RsSegError, match="--overwrite"), staged_file(final):
        pass
    with staged_file(final, overwrite=True) as staging:
        assert staging.suffix == ".gpkg" and staging.parent == tmp_path
        staging.write_text("new")
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["fields.gpkg"]


def test_staged_file_that_was_never_written_is_an_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="nothing was written"), staged_file(tmp_path / "x.tif"):
        pass
