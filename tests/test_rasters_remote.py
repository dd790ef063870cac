"""COGs over HTTP: read in byte ranges, transient failures retried, a lasting one in one line.

Served by a loopback server that speaks ``Range`` (tests/range_server.py) and can fail on
demand; GDAL reads through ``/vsicurl/`` with the settings of ``rs_seg.rasters.REMOTE_ENV``.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from rs_seg.errors import RsSegError
from rs_seg.rasters import GDAL_ENV, REMOTE_ENV, RasterInfo, open_raster, scene_deadline
from rs_seg.remote import scene_path
from rs_seg.staging import forget_interrupts, raise_interrupt
from tests.range_server import RangeServer, serving
from tests.stac_helpers import write_cog


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeServer]:
    """A loopback server of ``tmp_path/www``; GDAL retries twice, without waiting long."""
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")
    with serving(tmp_path / "www") as served:
        yield served


def fetched(server: RangeServer, name: str) -> int:
    """Bytes the GETs of ``name`` asked for."""
    total = 0
    for request in server.data_requests(name):
        assert request.range is not None, "every read is a range request, never the whole file"
        start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", request.range).groups())
        total += end - start + 1
    return total


def test_a_cog_url_is_read_in_ranges_window_by_window(server: RangeServer) -> None:
    local = write_cog(server.root / "big.tif", 512, blocksize=128)
    size = local.stat().st_size
    with rasterio.Env(**GDAL_ENV), open_raster(scene_path(f"{server.url}/big.tif")) as src:
        window = Window(384, 384, 64, 64)
        remote = src.read(window=window)
    with rasterio.open(local) as src:
        assert np.array_equal(remote, src.read(window=window))
    assert 0 < fetched(server, "big.tif") < size / 4, "one corner's tiles, not the scene"
    asked = {r.path for r in server.requests}
    assert asked == {"/big.tif"}, f"no folder listing or sidecar probes: {asked}"


def test_the_header_of_a_url_reads_like_a_files(server: RangeServer) -> None:
    local = write_cog(server.root / "s.tif", 64)
    remote = RasterInfo.read(scene_path(f"{server.url}/s.tif"))
    assert (remote.width, remote.crs, remote.transform) == (64, *_geo(local))


def _geo(path: Path) -> tuple:
    with rasterio.open(path) as src:
        return src.crs, src.transform


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_a_transient_failure_is_retried(server: RangeServer, kind: str) -> None:
    local = write_cog(server.root / "s.tif", 256, blocksize=64)
    with open_raster(scene_path(f"{server.url}/s.tif")) as src:
        server.fail(kind, count=2)  # the next two requests fail, the third succeeds
        remote = src.read()
    with rasterio.open(local) as src:
        assert np.array_equal(remote, src.read())
    assert server.faults.count == 0, "both failures were met, and retried"


def test_a_lasting_failure_is_one_line_naming_the_url(server: RangeServer) -> None:
    write_cog(server.root / "s.tif", 256, blocksize=64)
    url = f"{server.url}/s.tif"
    with pytest.raises(RsSegError) as caught, open_raster(scene_path(url), "scene") as src:
        server.fail("503")  # every request from now on
        before = len(server.data_requests("s.tif"))
        src.read()
    message = str(caught.value)
    assert message.startswith(f"{url}: reading the scene failed after 2 retries per request and "
                              "2 per read (")  # fmt: skip
    assert "\n" not in message
    asked = len(server.data_requests("s.tif")) - before
    assert asked >= 3 * 3 and asked % 3 == 0, "each request retried twice, each read thrice"


def test_a_transfer_cut_short_is_read_again_with_gdals_cache_cleared(server: RangeServer) -> None:
    local = write_cog(server.root / "s.tif", 256, blocksize=64)
    with open_raster(scene_path(f"{server.url}/s.tif")) as src:
        server.fail("cut", count=1)  # GDAL keeps the half it got, and does not retry
        remote = src.read()
    with rasterio.open(local) as src:
        assert np.array_equal(remote, src.read())


def test_another_files_error_in_the_block_is_not_blamed_on_the_url(server: RangeServer) -> None:
    write_cog(server.root / "s.tif", 64)
    with pytest.raises(RasterioIOError, match=r"scratch\.tif"):  # noqa: SIM117 - raised inside
        with open_raster(scene_path(f"{server.url}/s.tif")):
            raise RasterioIOError("scratch.tif: write failed")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("missing.tif", "scene not found (HTTP 404)"),
     ("text.tif", "not a raster GDAL can read (scene), or the server failed to send it")],
)  # fmt: skip
def test_open_errors_name_the_url(server: RangeServer, name: str, expected: str) -> None:
    server.root.mkdir(parents=True, exist_ok=True)
    (server.root / "text.tif").write_text("not a raster")
    url = f"{server.url}/{name}"
    with pytest.raises(RsSegError, match=re.escape(f"{url}: {expected}")):
        RasterInfo.read(scene_path(url))


def test_an_unreachable_server_is_one_line() -> None:
    with serving(Path("/nonexistent")) as gone:
        url = f"{gone.url}/s.tif"
    with pytest.raises(RsSegError, match=re.escape(f"{url}: cannot open scene: ")) as caught:
        RasterInfo.read(scene_path(url))
    assert "\n" not in str(caught.value)


# --- a server that stops sending ----------------------------------------------------------------


def test_the_default_settings_give_a_silent_server_up_within_minutes() -> None:
    """Each try waits at most LOW_SPEED_TIME for a byte; GDAL_HTTP_TIMEOUT alone waited 60 s."""
    window = float(REMOTE_ENV["GDAL_HTTP_LOW_SPEED_TIME"])
    tries = int(REMOTE_ENV["GDAL_HTTP_MAX_RETRY"]) + 1
    waits = float(REMOTE_ENV["GDAL_HTTP_RETRY_DELAY"]) * (2.5**tries - 1) / 1.5  # GDAL's backoff
    assert float(REMOTE_ENV["GDAL_HTTP_LOW_SPEED_LIMIT"]) >= 1
    assert float(REMOTE_ENV["GDAL_HTTP_CONNECTTIMEOUT"]) <= 20
    assert tries * window + waits < 180, "one read of a stalled server ends within 3 minutes"


def test_a_stalled_server_ends_the_read_in_one_line(
    server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "1")  # no byte for 1 s: the request is over
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")
    write_cog(server.root / "s.tif", 256, blocksize=64)
    url = f"{server.url}/s.tif"
    started = time.monotonic()
    with pytest.raises(RsSegError) as caught, open_raster(scene_path(url), "scene") as src:
        server.fail("stall")  # the connection is accepted, and nothing comes
        src.read()
    assert str(caught.value) == (
        f"{url}: no data from the server for 1 s on each of 2 tries; stopped reading the scene"
    )
    # GDAL's tries of the one read (its merged range, then a block: 2 or 3 requests), and no
    # read again on top (3 reads of 3): the server is silent, asking again only waits longer
    assert server.stalled < 6
    assert time.monotonic() - started < 30


def test_the_scene_deadline_ends_a_read_the_server_stalls(
    server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "600")  # GDAL alone would wait 10 minutes
    write_cog(server.root / "s.tif", 256, blocksize=64)
    url = f"{server.url}/s.tif"
    scene = scene_path(url)
    started = time.monotonic()
    with (
        pytest.raises(RsSegError) as caught,
        scene_deadline(scene, 2.0),
        open_raster(scene, "scene") as src,
    ):
        server.fail("stall")
        src.read()
    message = str(caught.value)
    assert message.startswith(f"{url}: no data from the server for ")
    assert message.endswith("the scene did not finish within its deadline (timeout 2 s)")
    assert time.monotonic() - started < 30
    with open_raster(scene, "scene") as src:  # no deadline left behind
        server.fail("503", count=0)
        assert src.read(1, window=Window(0, 0, 8, 8)).shape == (8, 8)


def test_a_deadline_passed_stops_the_next_read_before_it_starts(server: RangeServer) -> None:
    write_cog(server.root / "s.tif", 64)
    scene = scene_path(f"{server.url}/s.tif")
    with scene_deadline(scene, 0.01), open_raster(scene, "scene") as src:
        time.sleep(0.05)
        before = len(server.requests)
        with pytest.raises(RsSegError, match=r"did not finish within its deadline \(timeout"):
            src.read()
    assert len(server.requests) == before, "no request after the deadline"


def test_an_interrupt_ends_a_stalled_read_on_a_reading_thread(
    server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C runs on the main thread; a pipeline's reader blocked in GDAL must still let go."""
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "600")
    write_cog(server.root / "s.tif", 256, blocksize=64)
    with ThreadPoolExecutor(1) as pool, open_raster(scene_path(f"{server.url}/s.tif")) as src:
        server.fail("stall")
        reading = pool.submit(src.read)
        while server.stalled == 0:
            time.sleep(0.02)
        with contextlib.suppress(KeyboardInterrupt):
            raise_interrupt(signal.SIGINT, None)  # what the CLI's handler does
        try:
            with pytest.raises(KeyboardInterrupt):
                reading.result(timeout=10)
        finally:
            forget_interrupts()


def test_a_dataset_closed_under_a_read_given_up_on_is_closed_when_it_returns(
    server: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "600")
    write_cog(server.root / "s.tif", 256, blocksize=64)
    scene = scene_path(f"{server.url}/s.tif")
    with pytest.raises(RsSegError), scene_deadline(scene, 0.3), open_raster(scene) as src:
        server.fail("stall")
        src.read()
    assert not src.closed, "GDAL is still reading it: closing now would free it under the read"
    server.stopping.set()  # the server hangs up: GDAL's read fails and returns
    for _ in range(200):
        if src.closed:
            break
        time.sleep(0.05)
    assert src.closed, "closed by the read's own thread once GDAL returned"
