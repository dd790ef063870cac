"""Scene URLs: kept as the GDAL path they are read through, shown as the URL, never an output."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from rs_seg.config import IncomingConfig, InferConfig, InferOptions, StacSource
from rs_seg.errors import RsSegError
from rs_seg.remote import (
    display,
    file_name,
    gdal_name,
    is_remote,
    redact_text,
    redact_url,
    scene_path,
    scene_stem,
)
from rs_seg.timespan import parse_range


@pytest.mark.parametrize(
    ("given", "gdal", "shown"),
    [
        ("https://data.example/cogs/s1.tif", "/vsicurl/https:/data.example/cogs/s1.tif",
         "https://data.example/cogs/s1.tif"),
        ("http://127.0.0.1:8000/a/b.tif?v=x/y", "/vsicurl/http:/127.0.0.1:8000/a/b.tif?v=x/y",
         "http://127.0.0.1:8000/a/b.tif?v=x/y"),
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


SIGNED = (
    "https://user:pa55w0rd@h.example/a/s.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAX%2F20240501&X-Amz-Date=20240501T000000Z&X-Amz-Expires=60"
    "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok1&X-Amz-Signature=abc123&version=2"
)
SECRET_PARTS = ["user", "pa55w0rd", "AKIAX", "tok1", "abc123"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SIGNED, "https://h.example/a/s.tif?version=2"),
        ("https://h/s.tif?X-Goog-Algorithm=a&X-Goog-Credential=b&X-Goog-Signature=c",
         "https://h/s.tif"),
        ("https://acct.blob.core.windows.net/c/s.tif?sv=2022-11-02&st=1&se=2&sr=b&sp=r&sig=q%3D",
         "https://acct.blob.core.windows.net/c/s.tif"),
        ("https://h/s.tif?AWSAccessKeyId=a&Expires=1&Signature=s", "https://h/s.tif"),
        ("https://h/s.tif?token=1&access_token=2&api_key=3&key=4&password=5&signature=6&p=2#x",
         "https://h/s.tif?p=2#x"),
        ("https://h/s.tif?v=1&b=2", "https://h/s.tif?v=1&b=2"),
        ("s3://bucket/key/s.tif", "s3://bucket/key/s.tif"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_user_info_or_signed_parameters(url: str, shown: str) -> None:
    path = scene_path(url)
    assert display(path) == redact_url(url) == shown
    assert gdal_name(path).endswith(url.split("://", 1)[1]), "opened with every secret"
    assert scene_stem(path) == "s"


def test_urls_in_messages_lose_their_secrets() -> None:
    message = (f"'/vsicurl/{SIGNED.replace('//', '/', 1)}' not recognized; s.tif?sig=abc123, "
               "band 1: X-Amz-Security-Token=tok1. code=5 st=3")  # fmt: skip
    assert redact_text(message) == (
        "'/vsicurl/https://h.example/a/s.tif?version=2' not recognized; s.tif?sig=***, band 1: "
        "X-Amz-Security-Token=***. code=5 st=3"
    )
    error = str(RsSegError("scene has no CRS", scene_path(SIGNED)))
    assert error == "https://h.example/a/s.tif?version=2: scene has no CRS"
    assert str(RsSegError(f"cannot open {SIGNED} (HTTP 403)")) == (
        "cannot open https://h.example/a/s.tif?version=2 (HTTP 403)"
    )
    options = "/vsicurl?url=https%3A%2F%2Fu%3Ap%40h%2Fs.tif%3Fsig%3D1&header.Authorization=x"
    assert display(options) == "https://h/s.tif"
    for text in (redact_text(message), error):
        assert not any(part in text for part in SECRET_PARTS), text


def test_a_config_opens_with_the_secrets_and_records_without_them() -> None:
    """JSON is how a config is recorded (a flow run's parameters): it holds no secret."""
    cfg = InferConfig(scene=SIGNED)
    assert gdal_name(cfg.scene) == f"/vsicurl/{SIGNED}"
    assert cfg.model_dump(mode="json")["scene"] == "https://h.example/a/s.tif?version=2"
    assert not any(part in cfg.model_dump_json() for part in SECRET_PARTS)


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


def test_gdals_warnings_logged_by_rasterio_lose_their_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import rs_seg.rasters  # noqa: F401 - installs the filter on rasterio's loggers

    logging.getLogger("rasterio._env").warning(
        "CPLE_AppDefined in HTTP error code: 503 - %s. Retrying again in 1.0 secs", SIGNED
    )
    assert caplog.messages == [
        "CPLE_AppDefined in HTTP error code: 503 - https://h.example/a/s.tif?version=2. "
        "Retrying again in 1.0 secs"
    ]
