"""Scene URLs: kept as the GDAL path they are read through, shown as the URL, never an output."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from rs_seg.config import IncomingConfig, InferConfig, InferOptions, StacSource
from rs_seg.remote import display, file_name, is_remote, scene_path, scene_stem
from rs_seg.timespan import parse_range


@pytest.mark.parametrize(
    ("given", "gdal", "shown"),
    [
        ("https://data.example/cogs/s1.tif", "/vsicurl/https:/data.example/cogs/s1.tif",
         "https://data.example/cogs/s1.tif"),
        ("http://127.0.0.1:8000/a/b.tif?sig=x/y", "/vsicurl/http:/127.0.0.1:8000/a/b.tif?sig=x/y",
         "http://127.0.0.1:8000/a/b.tif?sig=x/y"),
        ("s3://bucket/key/s2.tif", "/vsis3/bucket/key/s2.tif", "s3://bucket/key/s2.tif"),
        ("gs://bucket/s3.tif", "/vsigs/bucket/s3.tif", "gs://bucket/s3.tif"),
        ("/vsicurl/https://data.example/s4.tif", "/vsicurl/https:/data.example/s4.tif",
         "https://data.example/s4.tif"),
        ("data/scenes/s5.tif", "data/scenes/s5.tif", "data/scenes/s5.tif"),
    ],
)  # fmt: skip
def test_a_url_is_kept_as_its_gdal_path_and_shown_as_the_url(given, gdal, shown) -> None:
    path = scene_path(given)
    assert str(path) == gdal
    assert display(path) == shown
    assert is_remote(path) == (given != "data/scenes/s5.tif")
    assert scene_path(Path(given)) == path, "a URL that went through Path() still converts"


def test_names_come_from_the_url_path_without_the_query() -> None:
    path = scene_path("https://h.example/a/scene.v2.tif?X-Amz-Signature=ab.cd")
    assert file_name(path) == "scene.v2.tif"
    assert scene_stem(path) == "scene.v2"
    assert scene_stem(Path("C:/data/s.tif")) == "s", "a drive letter is not a URL scheme"


def test_infer_config_reads_a_url_scene_and_writes_it_back_as_the_url() -> None:
    cfg = InferConfig(scene="https://h.example/s.tif", out=Path("fields.gpkg"))
    assert cfg.scene == Path("/vsicurl/https://h.example/s.tif")
    assert cfg.model_dump(mode="json")["scene"] == "https://h.example/s.tif"
    assert InferConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert InferOptions().for_scene(cfg.scene, Path("o.gpkg")).scene == cfg.scene


@pytest.mark.parametrize("field", ["out", "prob_out", "mask_out"])
def test_a_url_is_never_an_output(field: str) -> None:
    with pytest.raises(ValidationError, match="is a URL; outputs are written to local files"):
        InferConfig(scene="a.tif", **{field: "s3://bucket/fields.gpkg"})
    with pytest.raises(ValidationError, match="is a URL"):
        IncomingConfig(incoming="inbox", merged="https://h.example/all.gpkg")


def test_unsupported_url_schemes_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="ftp:// URLs are not supported"):
        InferConfig(scene="ftp://h.example/s.tif")


def test_incoming_takes_a_folder_or_a_stac_source_exactly_one() -> None:
    assert IncomingConfig(stac={"href": "catalog.json"}).source == "STAC catalog.json"
    for wrong in ({}, {"incoming": "inbox", "stac": {"href": "catalog.json"}}):
        with pytest.raises(ValidationError, match="exactly one"):
            IncomingConfig(**wrong)


def test_datetime_ranges_as_stac_apis_take_them() -> None:
    utc = dt.UTC
    assert parse_range("2024-05-01/2024-05-31") == (
        dt.datetime(2024, 5, 1, tzinfo=utc),
        dt.datetime(2024, 5, 31, 23, 59, 59, 999999, tzinfo=utc),
    )
    assert parse_range("../2024-05-01T10:00:00+02:00") == (
        None, dt.datetime(2024, 5, 1, 8, tzinfo=utc),
    )  # fmt: skip
    assert parse_range("2024-05-01T10:00:00/")[1] is None
    wrong = [("2024-06-01/2024-05-01", "start is after the end"),
             ("May/June", "not an ISO 8601"), ("a/b/c", "expected START/END")]  # fmt: skip
    for bad, message in wrong:
        with pytest.raises(ValidationError, match=message):
            StacSource(href="c.json", datetime=bad)
    with pytest.raises(ValidationError, match="west <= east"):
        StacSource(href="c.json", bbox=(10, 0, 5, 1))
