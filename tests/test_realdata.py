"""Chip preparation on real data from ../shared/data (skipped when the data is absent)."""

from __future__ import annotations

import pytest

from rs_seg.config import PrepareConfig
from rs_seg.prepare.index import read_index
from rs_seg.prepare.run import prepare
from rs_seg.prepare.vector_labels import VectorLayer, polygon_cover_fraction
from rs_seg.rasters import RasterInfo
from tests.helpers import SHARED_DATA

NAIP = SHARED_DATA / "naip-fields"


@pytest.mark.realdata
@pytest.mark.slow
def test_naip_chips_reproduce_the_polygon_cropland_fraction(tmp_path) -> None:
    cfg = PrepareConfig(
        scenes=[str(NAIP / "scenes" / "*.tif")], labels=NAIP / "fields.gpkg", out=tmp_path / "c"
    )
    summary = prepare(cfg)
    chips = read_index(summary.out)
    assert summary.scenes == 30 and len(chips) == 30 * 16
    assert {k: v["chips"] for k, v in summary.splits.items() if v["chips"]} == {
        "train": 384, "val": 48, "test": 48,
    }  # fmt: skip
    assert chips.groupby("scene")["split"].nunique().max() == 1, "small scenes stay whole"
    layer = VectorLayer(NAIP / "fields.gpkg")
    covered = area = 0.0
    for path in chips["scene_path"].unique():
        c, a = polygon_cover_fraction(layer, RasterInfo.read(path))
        covered, area = covered + c, area + a
    chip_fraction = chips["cropland_px"].sum() / chips["labelled_px"].sum()
    assert chip_fraction == pytest.approx(covered / area, abs=0.01)
