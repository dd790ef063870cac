"""What every benchmark script shares: child processes, the machine, result files, plots, tables.

Why one module: each claim in BENCHMARKS.md rests on the same measurement rules (a fresh child
process per run, dirty pages flushed before it, peak RSS from ``wait4``, the machine and the date
written beside the figures), and those rules must not drift apart between scripts that each kept
their own copy. The scripts are run as ``python benchmarks/bench_x.py``, so ``benchmarks/`` is on
``sys.path`` and they ``import _harness``.

This module imports only the standard library at import time (matplotlib, rasterio and psutil only
inside the functions that need them): a parent that stays small keeps its children's peak RSS
their own (``bench_vectorize.py`` relies on that), and a child pays for nothing it does not use.

The child protocol: ``python SCRIPT --child KIND ARGUMENTS_JSON [RESULT_PATH]`` calls
``children[KIND](**ARGUMENTS)`` and writes the returned dict as JSON, to ``RESULT_PATH`` when given
(for children whose stdout is a log, e.g. Prefect's), otherwise as the last line of stdout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TREE_SAMPLE_S = 0.25  # how often TreeSampler adds up the RSS of a process tree
LOG_TAIL_LINES = 40

Child = Callable[..., dict]


# --- child processes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A process run to completion: what ``wait4`` and the clock say about it.

    ``cpu_seconds`` is user + system time of the process and the descendants it reaped (less
    disturbed by other work on the machine than wall time); ``peak_rss_mb`` is ``ru_maxrss``, the
    largest of those processes, not a sum (``peak_tree_rss_mb`` is the sum, where sampled);
    ``load_average`` is the 1-minute load when it started, to judge its wall time by.
    """

    command: list[str]
    exit_code: int
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    load_average: float
    stdout: str
    peak_tree_rss_mb: float | None = None
    tree_processes: int | None = None

    def last_json(self) -> dict:
        """The JSON object on the last line of stdout (libraries may print before it)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, sampled every TREE_SAMPLE_S.

    ``wait4`` gives the largest single process only; a flow with a Prefect server and Dask workers
    needs the whole tree. psutil is imported here, in the parent's thread, only when asked for.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.processes = pid, 0, 1
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.wait(TREE_SAMPLE_S):
            total, count = 0, 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    total += process.memory_info().rss
                    count += 1
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.processes = max(self.processes, count)


def log_tail(log: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a child's log, to show why it failed."""
    if log is None or not log.exists():
        return ""
    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    return f"; log tail:\n{tail}"


def run_process(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    sample_tree: bool = False,
    check: bool = True,
) -> Finished:
    """Run a command to completion in a fresh process and measure it.

    Dirty pages of the previous run (gigabytes of chips or rasters) are flushed first, so that
    writeback does not land on whichever run happens to come next. A fresh process per run means
    its ``ru_maxrss`` is that run's own peak, with nothing left over from earlier runs. stdout is
    captured, or with ``log`` stdout and stderr both go to that file. With ``check``, a non-zero
    exit raises ``SystemExit`` (with the log's tail).
    """
    command = [str(part) for part in command]
    os.sync()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    sampler = None
    with contextlib.ExitStack() as stack:
        if log is None:
            stdout, stderr = subprocess.PIPE, None
        else:
            stdout, stderr = stack.enter_context(log.open("w")), subprocess.STDOUT
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True
        )
        if sample_tree:
            sampler = TreeSampler(process.pid)
            sampler.start()
        output = ""
        if process.stdout is not None:
            output = process.stdout.read()
            process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
        if sampler is not None:
            sampler.done.set()
            sampler.join()
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code  # reaped by wait4: Popen must not wait for it again
    if check and code != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {code}{log_tail(log)}")
    return Finished(
        command=command,
        exit_code=code,
        wall_seconds=wall,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        load_average=load,
        stdout=output,
        peak_tree_rss_mb=None if sampler is None else sampler.peak / 2**20,
        tree_processes=None if sampler is None else sampler.processes,
    )


def child_command(script: str | Path, kind: str, arguments: Mapping[str, Any]) -> list[str]:
    """The command line that runs ``children[kind](**arguments)`` of a script in a fresh process."""
    return [sys.executable, str(Path(script).resolve()), "--child", kind, json.dumps(arguments)]


def run_child(
    script: str | Path,
    kind: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    run_dir: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    sample_tree: bool = False,
    allow_failure: bool = False,
) -> dict:
    """One measurement in a fresh process: its JSON result plus ``wall_seconds`` and peak RSS.

    Times inside the child (imports excluded) are the child's own business; ``wall_seconds`` is
    the parent's clock around the whole process. ``peak_rss_mb`` comes from ``wait4``, and with
    ``sample_tree`` also ``peak_tree_rss_mb`` and ``tree_processes`` (``TreeSampler``).

    With ``run_dir`` the child's stdout and stderr go to ``run_dir/child.log`` and its result to
    ``run_dir/result.json`` (for children that log to stdout). With ``allow_failure`` a child that
    dies (e.g. killed for memory) is a result, ``{"failed": ..., "peak_rss_mb": ...}``, not a crash.
    """
    command = child_command(script, kind, arguments or {})
    log = result_path = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        result_path, log = run_dir / "result.json", run_dir / "child.log"
        result_path.unlink(missing_ok=True)
        command.append(str(result_path))
    finished = run_process(command, cwd=cwd, env=env, log=log, sample_tree=sample_tree, check=False)
    code = finished.exit_code
    if code != 0 and allow_failure:
        return {"failed": f"exit status {code}", "peak_rss_mb": finished.peak_rss_mb}
    if code != 0 or (result_path is not None and not result_path.exists()):
        raise SystemExit(f"child {kind} failed with exit status {code}{log_tail(log)}")
    if result_path is not None:
        result = json.loads(result_path.read_text())
    else:
        result = finished.last_json()
    result["wall_seconds"] = finished.wall_seconds
    result["peak_rss_mb"] = finished.peak_rss_mb
    if sample_tree:
        result["peak_tree_rss_mb"] = finished.peak_tree_rss_mb
        result["tree_processes"] = finished.tree_processes
    return result


def child_main(children: Mapping[str, Child], argv: Sequence[str]) -> None:
    """The child side of ``run_child``: ``KIND ARGUMENTS_JSON [RESULT_PATH]``."""
    kind, arguments, *result_path = argv
    text = json.dumps(children[kind](**json.loads(arguments)))
    if result_path:
        Path(result_path[0]).write_text(text)
    else:
        print(text, flush=True)


def entry(main: Callable[[], int | None], children: Mapping[str, Child]) -> None:
    """A script's ``__main__``: ``--child ...`` runs one measurement, anything else ``main()``."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(children, sys.argv[2:])
    else:
        sys.exit(main())


def generated(data_dir: Path, make: Callable[[], dict], message: str) -> dict:
    """Inputs made once and kept in the work folder (synthetic scenes take minutes to write).

    ``data_dir/bench_meta.json``, written after ``make()`` returned, says they are complete; a
    folder without it (an interrupted run) is removed and made again.
    """
    meta = data_dir / "bench_meta.json"
    if meta.exists():
        return json.loads(meta.read_text())
    shutil.rmtree(data_dir, ignore_errors=True)
    print(message, flush=True)
    result = make()
    data_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(result))
    return result


# --- summaries -----------------------------------------------------------------------------------


def median_of(runs: Iterable[Mapping[str, Any]], key: str) -> float | None:
    """Median of ``key`` over the runs that have it (throughput is noisy: medians, not means)."""
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def peak_of(runs: Iterable[Mapping[str, Any]], key: str = "peak_rss_mb") -> float:
    """The largest peak over the runs (memory is a limit, so the worst run counts)."""
    return max(r[key] for r in runs)


def rss_runs(runs: Iterable[Mapping[str, Any]]) -> list[int]:
    """Each run's peak RSS in whole MB, to show how much it varies."""
    return [round(r["peak_rss_mb"]) for r in runs]


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` says only ``x86_64`` on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    """Total RAM (``MemTotal``)."""
    return int(Path("/proc/meminfo").read_text().split()[1]) * 1024


def gpus() -> list[str]:
    """NVIDIA GPUs as ``name, memory`` from ``nvidia-smi``, without importing torch; [] if none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip()]


def version(name: str) -> str | None:
    """An installed distribution's version, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(*, gdal: bool = True, packages: Iterable[str] = (), **extra: Any) -> dict:
    """The machine the figures were measured on: they mean nothing without it.

    CPU model, cores, RAM, GPUs and Python, then ``extra`` (what only a child knows, such as the
    torch device it resolved), then rasterio and GDAL (``gdal``; imports rasterio), then the
    versions of ``packages``.
    """
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(memory_bytes() / 1024**3, 1),
        "gpus": gpus(),
        "python": platform.python_version(),
        **extra,
    }
    if gdal:
        import rasterio

        info["rasterio"] = rasterio.__version__
        info["gdal"] = rasterio.__gdal_version__
    info.update({name: version(name) for name in packages})
    return info


# --- result files --------------------------------------------------------------------------------


def today() -> str:
    return dt.date.today().isoformat()


def report(benchmark: str, machine: Mapping[str, Any], **fields: Any) -> dict:
    """A result document: which benchmark, when and on what, then its figures."""
    return {"benchmark": benchmark, "date": today(), "machine": dict(machine), **fields}


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write a result document (indented, so that a rerun's diff is readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


# --- plots ---------------------------------------------------------------------------------------


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: PNG files only, no display needed.

    Imported on first use, so that children and parents that never plot do not carry matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(
    ax: Any,
    series: Sequence[tuple[str, Sequence[float | None], str | None]],
    *,
    width: float = 0.8,
    value_format: str | None = None,
    fontsize: float = 7,
) -> None:
    """Bars side by side: group ``i`` at x = i, one bar per series ``(label, values, color)``.

    The bars of a group share ``width``; a value of None leaves its bar out; ``value_format``
    (e.g. ``"{:.0f}"``) writes each value on its bar; color None takes the next default color.
    """
    count = max(1, len(series))
    bar = width / count
    for j, (label, values, color) in enumerate(series):
        xs = [i + (j - (count - 1) / 2) * bar for i, v in enumerate(values) if v is not None]
        heights = [v for v in values if v is not None]
        bars = ax.bar(xs, heights, bar, label=label, color=color)
        if value_format is not None:
            ax.bar_label(bars, [value_format.format(v) for v in heights], fontsize=fontsize)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write a figure to PNG and close it (figures left open keep their memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


# --- tables --------------------------------------------------------------------------------------


class Table:
    """Fixed-width console table: columns ``(title, format spec)``, e.g. ``("Mpx/s", ">8.3f")``.

    The title takes the spec's alignment and width; so does a value given as a string (a
    composite like ``"1.0-2.0"``, or ``"-"``), while numbers take the whole spec. A row may give
    fewer values than there are columns.
    """

    def __init__(self, *columns: tuple[str, str]) -> None:
        self.columns = columns

    @staticmethod
    def _layout(spec: str) -> str:
        """The alignment and width of a format spec (``">8.3f"`` -> ``">8"``)."""
        align = spec[0] if spec and spec[0] in "<>^" else ""
        digits = spec[len(align) :]
        width = digits[: len(digits) - len(digits.lstrip("0123456789"))]
        return align + width

    def header(self) -> str:
        return " ".join(format(title, self._layout(spec)) for title, spec in self.columns)

    def row(self, *values: Any) -> str:
        cells = []
        for (_, spec), value in zip(self.columns, values, strict=False):
            cells.append(format(value, self._layout(spec) if isinstance(value, str) else spec))
        return " ".join(cells)


def print_checks(checks: Iterable[Mapping[str, Any]], name: str = "check") -> None:
    """One line per goal or check: ``met`` or ``MISSED``, what it is, the value (and limit)."""
    for check in checks:
        limit = f" (limit {check['limit']})" if "limit" in check else ""
        print(f"{'met ' if check['met'] else 'MISSED'} {check[name]}: {check['value']}{limit}")
