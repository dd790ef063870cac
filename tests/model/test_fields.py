"""FieldSettings: one type for tuned, stored, tagged and applied field settings."""

from __future__ import annotations

import pytest

from rs_seg.errors import RsSegError
from rs_seg.field_rule import GROW
from rs_seg.levels import threshold_to_level
from rs_seg.model.fields import BOUNDARY_TAG, GROW_TAG, MIN_AREA_TAG, THRESHOLD_TAG, FieldSettings


def test_tags_round_trip_for_both_tasks() -> None:
    split = FieldSettings(threshold=0.4, boundary_threshold=0.3, min_area=250.0, grow=2)
    assert FieldSettings.from_tags(split.to_tags()) == split
    connected = split.without_split()
    assert BOUNDARY_TAG not in connected.to_tags()
    assert FieldSettings.from_tags(connected.to_tags()) == connected
    assert FieldSettings.from_tags({"threshold_used": "0.5"}) is None  # no field settings stored


def test_overrides_replace_only_what_the_user_gave() -> None:
    tuned = FieldSettings(threshold=0.4, boundary_threshold=0.3, min_area=250.0)
    assert tuned.overridden() == tuned
    assert tuned.overridden(min_area=0.0) == FieldSettings(
        threshold=0.4, boundary_threshold=0.3, min_area=0.0
    )
    assert tuned.overridden(threshold=0.6, boundary_threshold=0.7, grow=5).boundary_threshold == 0.7
    cropland = FieldSettings(threshold=0.5, boundary_threshold=None)
    assert (
        cropland.overridden(boundary_threshold=0.7) == cropland
    )  # no boundary band to apply it to


@pytest.mark.parametrize(
    ("tags", "flag"),
    [
        ({THRESHOLD_TAG: "high"}, "--threshold"),
        ({THRESHOLD_TAG: "1.5"}, "--threshold"),
        ({THRESHOLD_TAG: "0.5", BOUNDARY_TAG: "nan"}, "--boundary-threshold"),
        ({THRESHOLD_TAG: "0.5", MIN_AREA_TAG: "-1"}, "--min-area"),
        ({THRESHOLD_TAG: "0.5", GROW_TAG: "3.5"}, "--grow"),
    ],
)
def test_a_bad_stored_setting_names_the_flag_that_overrides_it(tags: dict, flag: str) -> None:
    with pytest.raises(RsSegError, match=f"pass {flag}$"):
        FieldSettings.from_tags(tags)


def test_the_rule_is_the_settings_in_levels_and_pixels() -> None:
    rule = FieldSettings(threshold=0.4, boundary_threshold=0.3, min_area=500.0).rule(100.0)
    assert (rule.level, rule.boundary_level, rule.min_pixels, rule.grow) == (
        threshold_to_level(0.4), threshold_to_level(0.3), 5.0, GROW,
    )  # fmt: skip
    assert FieldSettings(boundary_threshold=None).rule(None).boundary_level is None
