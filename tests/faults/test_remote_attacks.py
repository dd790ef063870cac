"""``rs-seg infer URL`` against secrets in the URL and a server that stops sending.

A scene URL may carry credentials (``user:password@``, a presigned query): they must reach the
server and nothing else, neither the outputs (COG tags, layer metadata, styles) nor stdout,
stderr or an error line. A server that accepts the connection and then sends nothing must end
the scene in one line, at the deadline given, and must not keep Ctrl-C or SIGTERM waiting.
Served by tests/range_server.py; every command runs in a child process (real signals).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest
import rasterio
from rasterio.errors import RasterioIOError

from rs_seg.config import IncomingConfig
from rs_seg.ops.incoming import SceneJob, record
from rs_seg.ops.ledger import Ledger
from rs_seg.remote import display, scene_path
from tests.helpers import assert_one_line_error, hidden_leftovers, make_bundle, rs_seg
from tests.range_server import RangeServer
from tests.stac_helpers import FAST_RETRIES, serving_scene

USER, PASSWORD = "mapper-7f3a", "pw-9d2e-hunter2"
SIGNATURE = "5e1fa0c3d2b4968877aa01ccdeadbeef"
CREDENTIAL = "AKIAEXAMPLE7Q3Z"
TOKEN = "tok-b0c4-session"
AZURE_SIG, GENERIC_TOKEN, API_KEY = "azSIG%2Bq9", "gen-token-61", "apik-55x"
SECRETS = [USER, PASSWORD, SIGNATURE, CREDENTIAL, TOKEN, "azSIG", GENERIC_TOKEN, API_KEY]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "m.pt", task="fields")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeServer]:
    """A scene behind basic auth and a presigned query: read only with every secret."""
    with serving_scene(tmp_path / "www", monkeypatch) as served:
        served.require(USER, PASSWORD, **{"X-Amz-Signature": SIGNATURE,
                                          "X-Amz-Security-Token": TOKEN})  # fmt: skip
        yield served


def secret_url(server: RangeServer) -> str:
    """The scene's URL with user info, an S3 presigned query, an Azure SAS and two tokens."""
    query = (
        f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}%2F20240501%2Fus-east-1"
        "%2Fs3%2Faws4_request&X-Amz-Date=20240501T000000Z&X-Amz-Expires=3600"
        f"&X-Amz-SignedHeaders=host&X-Amz-Security-Token={TOKEN}&X-Amz-Signature={SIGNATURE}"
        f"&sv=2022-11-02&se=2030-01-01&sp=r&sig={AZURE_SIG}&token={GENERIC_TOKEN}"
        f"&api_key={API_KEY}&version=3"
    )
    base = server.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    return f"{base}/scene.tif?{query}"


def assert_no_secrets(where: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret!r} in {where}"


def assert_no_secrets_in_files(folder: Path) -> None:
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files
    for path in files:
        assert_no_secrets(str(path), path.read_bytes())


def infer(url: str, out: Path, bundle: Path, *extra: str, env: dict[str, str] | None = None):
    """``rs-seg -v infer URL``: verbose, so every log line there is gets checked."""
    return rs_seg("-v", "infer", url, "-o", out / "fields.gpkg", "--model", bundle,
                  "--device", "cpu", "--min-area", "0", *extra, cwd=out.parent,
                  env={**FAST_RETRIES, **(env or {})})  # fmt: skip


@pytest.mark.slow  # a command in a child process: ~8 s of imports
def test_secrets_in_the_url_reach_the_server_and_no_output_or_log(
    tmp_path: Path, server: RangeServer, bundle: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    server.fail("cut", count=1, after=2)  # GDAL's warnings and rs_seg's name the file
    result = infer(secret_url(server), out, bundle, "--mask-out", str(out / "mask.tif"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert server.faults.count == 0 and "warning:" in result.stderr
    assert_no_secrets("stdout", result.stdout)
    assert_no_secrets("stderr", result.stderr)
    assert_no_secrets_in_files(out)
    shown = f"{server.url}/scene.tif?version=3"
    with rasterio.open(out / "fields_prob.tif") as src:
        assert src.tags()["scene"] == shown, "provenance: the URL, without its secrets"
    assert pyogrio.read_info(out / "fields.gpkg", layer="fields")["layer_metadata"]["scene"] == (
        shown
    )


@pytest.mark.slow  # a command in a child process: ~8 s of imports
def test_a_stalled_server_ends_the_scene_at_its_deadline_in_one_line(
    tmp_path: Path, server: RangeServer, bundle: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    server.fail("stall", after=2)  # the header reads, then nothing
    started = time.monotonic()
    result = infer(secret_url(server), out, bundle, "--timeout", "3",
                   env={"GDAL_HTTP_LOW_SPEED_TIME": "600"})  # fmt: skip
    line = assert_one_line_error(
        result, f"error: {server.url}/scene.tif?version=3: ",
        "the scene did not finish within its deadline (timeout 3 s)",
    )  # fmt: skip
    assert server.stalled > 0, line
    assert_no_secrets("stderr", result.stderr)
    assert list(out.iterdir()) == [] and hidden_leftovers(out) == [], "nothing half-written"
    assert time.monotonic() - started < 90, "imports, 3 s, and no wait for GDAL's 600 s"


@pytest.mark.slow  # a command in a child process: ~8 s of imports
@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)  # fmt: skip
def test_a_signal_acts_within_seconds_during_a_stalled_read(
    tmp_path: Path, server: RangeServer, bundle: Path, signum: int, status: int, said: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "600")  # GDAL would wait 10 minutes a try
    out = tmp_path / "out"
    out.mkdir()
    server.fail("stall", after=2)
    child = subprocess.Popen(
        [sys.executable, "-m", "rs_seg", "-v", "infer", secret_url(server), "-o",
         str(out / "f.gpkg"), "--model", str(bundle), "--device", "cpu"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while server.stalled == 0:
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the read never stalled"
            time.sleep(0.05)
        time.sleep(0.5)  # stalled inside GDAL, not about to stall
        sent = time.monotonic()
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode == status, stderr[-2000:]
    assert f"{said}: no partial output was kept" in stderr and "Traceback" not in stderr
    # the line comes at once; the exit takes the interpreter's teardown (torch: seconds on a
    # loaded machine, as for a local scene) and never GDAL's 600 s
    assert took < 30, f"{took:.1f} s from the signal to the exit"
    assert_no_secrets("stderr", stderr)
    assert list(out.iterdir()) == [] and hidden_leftovers(out) == []


def test_a_failed_scene_is_recorded_without_the_urls_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger row, the log line and the flow's result of a new-imagery scene that failed."""
    served = RangeServer(tmp_path, url="http://bucket.example/scenes")
    url = secret_url(served)
    cfg = IncomingConfig(incoming=str(tmp_path / "inbox"), out_dir=tmp_path / "out")
    job = SceneJob(scene_path(url), "f" * 64, tmp_path / "m.pt", "m1", "m1")
    Ledger(cfg.ledger_path).claim(job.fingerprint, job.ledger_key, display(job.scene))
    gdal_error = RasterioIOError(f"/vsicurl/{url}: HTTP error code: 403")  # not an RsSegError
    result = record(cfg, job, gdal_error)
    assert (
        result.error == "/vsicurl/http://bucket.example/scenes/scene.tif?version=3: HTTP "
        "error code: 403"
    )
    assert_no_secrets("the log", caplog.text)
    assert_no_secrets_in_files(tmp_path / "out")
