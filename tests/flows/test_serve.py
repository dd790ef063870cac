"""``make serve`` (flows/serve.py, flows/server.py): options, schedules, server checks, and the
real thing: a local Prefect server, the four deployments, runs triggered with the Prefect CLI."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows import serve
from flows.server import HEALTH_TIMEOUT_S, START_TIMEOUT_S, check_port, require_api
from rs_seg.errors import RsSegError
from tests.helpers import LEARNABLE_BOXES, ROOT, pixel_box, write_labels, write_learnable_scene

DEMO = ROOT / "configs" / "demo.yaml"
INCOMING = ROOT / "configs" / "incoming.yaml"
PREFECT = Path(sys.executable).parent / "prefect"
YEARLY = "0 0 1 1 *"  # a schedule that never fires during a test, so scheduled runs stay queued


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private PREFECT_HOME (fresh SQLite database), no PREFECT_API_URL, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        **extra,
    }


# --- options and deployments ---------------------------------------------------------------


def test_four_deployments_named_like_their_flows_with_demo_defaults() -> None:
    served = serve.deployments(DEMO, INCOMING, {})
    assert [(d.flow_name, d.name) for d in served] == [(f, f) for f in serve.FLOWS]
    train = served[1].parameters
    assert set(train) == {"train", "prepare", "synth"}, "runs with no -p on a fresh machine"
    assert train["prepare"]["scenes"] == ["data/synthetic/scenes/*.tif"]
    assert train["synth"]["out"] == "data/synthetic" and train["train"]["out"] == "runs/cropland"
    json.dumps(train)  # stored as JSON by the server
    assert served[3].parameters["config"]["incoming"] == "data/incoming"
    assert not served[0].parameters and not served[2].parameters
    assert all(not d.schedules for d in served)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, {"interval": 600}),
        (["--interval", "60"], {"RS_SEG_INCOMING_CRON": "5 * * * *"}, {"interval": 60}),
        (["--cron", "0 3 * * *"], {}, {"cron": "0 3 * * *"}),
        (["--no-schedule"], {"RS_SEG_INCOMING_INTERVAL": "30"}, {}),
        ([], {"RS_SEG_INCOMING_INTERVAL": "30"}, {"interval": 30}),
        ([], {"RS_SEG_INCOMING_CRON": "*/5 * * * *"}, {"cron": "*/5 * * * *"}),
    ],
)
def test_schedule_options_win_over_the_environment(monkeypatch, argv, env, expected) -> None:
    monkeypatch.delenv("RS_SEG_INCOMING_CRON", raising=False)
    monkeypatch.delenv("RS_SEG_INCOMING_INTERVAL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert serve.schedule(serve.parse_args(argv)) == expected


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--cron", "every day"], {}, "--cron: 'every day' is not a valid cron expression"),
        (["--interval", "0"], {}, "--interval must be at least 1 second"),
        ([], {"RS_SEG_INCOMING_INTERVAL": "10m"}, "must be whole seconds, got '10m'"),
    ],
)
def test_bad_schedules_are_one_line_errors(monkeypatch, argv, env, message) -> None:
    monkeypatch.delenv("RS_SEG_INCOMING_CRON", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RsSegError, match=message):
        serve.schedule(serve.parse_args(argv))


def test_schedule_options_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        serve.parse_args(["--no-schedule", "--cron", "0 3 * * *"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_the_schedule_reaches_infer_new_imagery_only() -> None:
    served = serve.deployments(DEMO, INCOMING, {"cron": "0 3 * * *"})
    assert served[3].schedules[0].schedule.cron == "0 3 * * *"
    assert all(not d.schedules for d in served[:3])
    served = serve.deployments(DEMO, INCOMING, {"interval": 90})
    assert served[3].schedules[0].schedule.interval.total_seconds() == 90


def test_config_files_from_options_and_the_environment(tmp_path, monkeypatch) -> None:
    mine = tmp_path / "incoming.yaml"
    mine.write_text(f"incoming:\n  incoming: {tmp_path / 'inbox'}\n  out_dir: {tmp_path}\n")
    monkeypatch.setenv("RS_SEG_INCOMING_CONFIG", str(mine))
    served = serve.deployments(DEMO, None, {})
    assert served[3].parameters["config"]["incoming"] == str(tmp_path / "inbox")
    with pytest.raises(RsSegError, match="config file not found"):
        serve.deployments(tmp_path / "missing.yaml", None, {})
    monkeypatch.setenv("RS_SEG_INCOMING_CONFIG", str(tmp_path / "gone.yaml"))
    with pytest.raises(RsSegError, match=r"gone\.yaml: config file not found"):
        serve.deployments(DEMO, None, {})


def test_missing_default_configs_leave_the_deployments_without_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("RS_SEG_INCOMING_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # neither configs/demo.yaml nor configs/incoming.yaml here
    served = serve.deployments(when={})
    assert not served[1].parameters and not served[3].parameters


def test_the_guide_names_every_deployment_command_and_output() -> None:
    from flows.server import PrefectServer

    served = serve.deployments(DEMO, INCOMING, {"interval": 600})
    text = serve.guide(PrefectServer("http://127.0.0.1:4200/api", started=True), served)
    assert "Prefect UI:  http://127.0.0.1:4200 " in text
    assert "export PREFECT_API_URL=http://127.0.0.1:4200/api" in text
    for name in serve.FLOWS:
        assert f"deployment run {name}/{name}" in text
    assert "also runs every 600 s" in text
    for output in ("data/synthetic", "data/chips", "runs/cropland[-<UTC time>]",
                   "models/latest.json", "data/mapped/<scene>/<model id>/fields.gpkg",
                   "data/mapped/ledger.sqlite"):  # fmt: skip
        assert output in text


# --- server checks -------------------------------------------------------------------------


def test_require_api_names_the_dead_server_and_the_fixes() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with pytest.raises(RsSegError) as exc:
        require_api(url)
    message = str(exc.value)
    assert message.startswith(f"no Prefect server answers at {url} (connection refused): ")
    assert "`make serve`" in message and "`prefect server start`" in message
    assert "\n" not in message


def test_require_api_does_nothing_without_a_configured_server() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: ""}):
        require_api()


@contextlib.contextmanager
def other_web_server() -> Iterator[int]:
    """Something that is not Prefect on a port: answers 404 to everything."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_taken_by_another_program_is_a_clear_error() -> None:
    assert check_port(free_port()) is False
    with other_web_server() as port, pytest.raises(RsSegError) as exc:
        check_port(port)
    assert f"port {port} on 127.0.0.1 is in use by another program" in str(exc.value)
    assert "--port" in str(exc.value)


def run_serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.serve", *args],
        cwd=tmp_path, env=serve_env(tmp_path, **env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_serve_against_a_dead_server_exits_2_with_one_line(tmp_path) -> None:
    port = free_port()
    done = run_serve(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: no Prefect server answers at http://127.0.0.1:{port}/api (connection refused): "
        "start one with `make serve` or `prefect server start`, or unset PREFECT_API_URL to run "
        "flows without a server"
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_serve_on_a_port_taken_by_another_program_exits_2(tmp_path) -> None:
    with other_web_server() as port:
        done = run_serve(tmp_path, "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: port {port} on 127.0.0.1 is in use by another program")


# --- the real thing ------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[str]
    api_url: str
    log: Path
    env: dict[str, str]
    tree: list  # psutil processes: the serving process and the server it started

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The Prefect CLI against this server, as a user in another terminal runs it."""
        return subprocess.run(
            [str(PREFECT), *args], env=self.env | {"PREFECT_API_URL": self.api_url},
            cwd=self.log.parent, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``python -m flows.serve`` as ``make serve`` runs it (demo defaults), in a temporary cwd
    with a fresh PREFECT_HOME, a 1 s runner poll and a 1 s scheduler loop."""
    import psutil

    work = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = serve_env(
        work,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
    )
    log = work / "serve.log"
    command = [sys.executable, "-m", "flows.serve", "--port", str(port), "--cron", YEARLY,
               "--train-config", str(DEMO), "--incoming-config", str(INCOMING)]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
    tree: list = []
    try:
        # The server's own start-up limit (a fresh database: 22 s here with the other engineers'
        # load, 30 s with two busy loops added) plus registering the four deployments.
        wait = START_TIMEOUT_S + 120
        deadline = time.monotonic() + wait
        while "Run them from another terminal" not in log.read_text():
            assert process.poll() is None, f"serve exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"no deployments after {wait:g} s:\n{log.read_text()}"
            )
            time.sleep(0.5)
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        yield Served(process, f"http://127.0.0.1:{port}/api", log, env, tree)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        for proc in psutil.process_iter(["cmdline"]):  # whatever is left of what this test started
            cmdline = proc.info["cmdline"] or []
            if proc.pid == process.pid or ("server" in cmdline and str(port) in cmdline):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def watch(served: Served, deployment: str, **params: object) -> str:
    args = ["deployment", "run", deployment, "--watch"]
    for key, value in params.items():
        args += ["-p", f"{key}={json.dumps(value)}"]
    done = served.prefect(*args)
    text = done.stdout + done.stderr
    assert done.returncode == 0 and "Completed" in text, f"{text}\n--- serve:\n{served.output()}"
    return text


@pytest.mark.slow
def test_served_deployments_train_a_model_and_map_new_imagery(served: Served, tmp_path) -> None:
    scene = write_learnable_scene(tmp_path / "scenes" / "a.tif", 160, LEARNABLE_BOXES)
    labels = write_labels(tmp_path / "fields.gpkg", [pixel_box(*b) for b in LEARNABLE_BOXES])
    prepare = {"scenes": [str(scene)], "labels": str(labels), "out": str(tmp_path / "chips"),
               "chip_size": 32, "split": {"block_chips": 1}}  # fmt: skip
    train = {"out": str(tmp_path / "runs" / "cropland"), "model": {"encoder": "resnet18"},
             "epochs": 1, "batch_size": 4, "num_workers": 0, "accelerator": "cpu"}  # fmt: skip
    models = tmp_path / "models"
    # -p replaces whole parameters: the demo's synth default is switched off explicitly.
    watch(served, "train-cropland/train-cropland",
          train=train, prepare=prepare, synth=None, models_dir=str(models))  # fmt: skip

    latest = json.loads((models / "latest.json").read_text())
    model_id = latest["model_id"]
    assert (models / model_id / "model-bundle.pt").is_file()
    assert (tmp_path / "runs" / "cropland" / "model-bundle.pt").is_file()
    assert (tmp_path / "chips").is_dir()

    inbox = tmp_path / "inbox"
    for i, name in enumerate(["north", "south"]):
        write_learnable_scene(inbox / f"{name}.tif", 96, [(8, 8, 60, 70)], seed=i)
    config = {"incoming": str(inbox), "out_dir": str(tmp_path / "mapped"), "settle_seconds": 0,
              "infer": {"models_dir": str(models), "device": "cpu"}}  # fmt: skip
    watch(served, "infer-new-imagery/infer-new-imagery", config=config)
    for name in ["north", "south"]:
        assert (tmp_path / "mapped" / name / model_id / "fields.gpkg").is_file()
    assert (tmp_path / "mapped" / "ledger.sqlite").is_file()
    assert not (served.log.parent / "data").exists(), "every output went where -p said"


@pytest.mark.slow
def test_the_schedule_queues_runs_of_infer_new_imagery(served: Served) -> None:
    # The scheduler loop runs every second, but on a loaded machine (or when this test runs alone,
    # right after the server started) its first pass can take longer than that.
    deadline = time.monotonic() + 60
    while True:
        done = served.prefect("flow-run", "ls", "--flow-name", "infer-new-imagery",
                              "--state-type", "SCHEDULED", "-o", "json", timeout=60)  # fmt: skip
        queued = json.loads(done.stdout or "[]") if done.returncode == 0 else []
        if queued or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert queued, done.stdout + done.stderr
    assert all(run["auto_scheduled"] for run in queued)


@pytest.mark.slow
def test_ctrl_c_stops_serving_and_the_server_it_started(served: Served) -> None:
    import psutil

    assert len(served.tree) >= 2, "the serving process and its Prefect server"
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(60) == 0
    _, alive = psutil.wait_procs(served.tree, timeout=20)
    assert not alive, f"left running: {alive}"
    assert "Prefect server stopped" in served.output()
    assert "Traceback" not in served.output()
    assert check_port(int(served.api_url.split(":")[-1].split("/")[0])) is False, "port freed"


# --- several machines: a work pool and a worker ------------------------------------------------


def test_pool_needs_a_configured_server(tmp_path) -> None:
    env = serve_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "flows.serve", "--pool", "rs-seg"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: --pool needs the server the workers poll")


@pytest.mark.slow
def test_deployments_registered_on_a_work_pool_run_on_a_worker(tmp_path) -> None:
    """What a second machine does: a worker polls the pool and runs the flow from the checkout."""
    from tests.helpers import make_bundle

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = serve_env(tmp_path, PREFECT_WORKER_QUERY_SECONDS="1",
                    PREFECT_WORKER_PREFETCH_SECONDS="1")  # fmt: skip
    client_env = env | {"PREFECT_API_URL": api}
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S  # what `make serve` waits for its server
        while require_api_problem(api):
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(1)
        registered = subprocess.run(
            [sys.executable, "-m", "flows.serve", "--pool", "rs-seg", "--no-schedule"],
            cwd=ROOT, env=client_env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-3000:]
        assert "registered 4 deployments on work pool 'rs-seg' (process, just created)" in (
            registered.stdout
        )
        worker = subprocess.Popen(
            [str(PREFECT), "worker", "start", "--pool", "rs-seg"], env=client_env, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        scene = write_learnable_scene(tmp_path / "scene.tif", 96, [(8, 8, 60, 70)])
        config = {"scene": str(scene), "out": str(tmp_path / "out" / "fields.gpkg"),
                  "model": str(make_bundle(tmp_path / "m.pt")), "device": "cpu"}  # fmt: skip
        run = subprocess.run(
            [str(PREFECT), "deployment", "run", "infer-scene/infer-scene", "--watch",
             "-p", f"config={json.dumps(config)}"],
            env=client_env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert (tmp_path / "out" / "fields.gpkg").is_file()
        assert (tmp_path / "out" / "fields_prob.tif").is_file()
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(20)
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)


def require_api_problem(api: str) -> str | None:
    from flows.server import api_problem

    return api_problem(api, timeout=HEALTH_TIMEOUT_S)
