"""``chips_up_to_date``: when a scheduled pipeline may skip chip preparation."""

from __future__ import annotations

import os

import pytest

from rs_seg.config import PrepareConfig
from rs_seg.prepare.run import chips_up_to_date, prepare
from tests.helpers import pixel_box, write_labels, write_scene


@pytest.fixture
def prepared(tmp_path) -> PrepareConfig:
    write_scene(tmp_path / "scenes" / "a.tif", 64, 64)
    labels = write_labels(tmp_path / "fields.gpkg", [pixel_box(0, 0, 30, 40)])
    cfg = PrepareConfig(
        scenes=[str(tmp_path / "scenes" / "*.tif")],
        labels=labels,
        out=tmp_path / "chips",
        chip_size=32,
        split={"method": "random"},
    )
    prepare(cfg)
    return cfg


def test_fresh_chips_are_up_to_date_whatever_overwrite_says(prepared) -> None:
    assert chips_up_to_date(prepared) == (True, "up to date")
    assert chips_up_to_date(prepared.model_copy(update={"overwrite": True}))[0]


def test_missing_output_is_not_up_to_date(tmp_path, prepared) -> None:
    current, reason = chips_up_to_date(prepared.model_copy(update={"out": tmp_path / "other"}))
    assert not current and "no index.gpkg" in reason


def test_touching_a_scene_makes_chips_stale(prepared) -> None:
    scene = prepared.out.parent / "scenes" / "a.tif"
    stat = scene.stat()
    os.utime(scene, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    current, reason = chips_up_to_date(prepared)
    assert not current and f"input {scene} changed" in reason


def test_another_chip_size_makes_chips_stale(prepared) -> None:
    current, reason = chips_up_to_date(prepared.model_copy(update={"chip_size": 16}))
    assert (current, reason) == (False, "config changed: chip_size")
    changed = prepared.model_copy(update={"split": prepared.split.model_copy(update={"seed": 3})})
    assert chips_up_to_date(changed) == (False, "config changed: split.seed")


def test_a_new_scene_matching_the_glob_makes_chips_stale(prepared) -> None:
    new = write_scene(prepared.out.parent / "scenes" / "b.tif", 64, 64)
    current, reason = chips_up_to_date(prepared)
    assert not current and reason == f"new input {new}"
    new.unlink()
    assert chips_up_to_date(prepared)[0]


def test_chips_of_another_mask_kind_are_stale(prepared) -> None:
    """Field chips (outlines burned in) are made again for a config that makes cropland masks."""
    binary = prepared.model_copy(update={"boundary_width": 0})
    current, reason = chips_up_to_date(binary)
    assert not current and reason == "the chips hold fields masks, this config makes cropland masks"
