"""The run folder: where a training run keeps what training and evaluation write, and its status.

One :class:`RunFolder` names every file, so the trainer, evaluation and the model registry agree
on them. ``run.json`` says what state a run is in and, while it runs, who runs it, so a killed run
reads as *interrupted*. A run that replaces an earlier one trains in a hidden sibling and takes
its place in one atomic exchange once it is evaluated.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rs_seg.errors import RsSegError
from rs_seg.model.bundle import BUNDLE_FILE
from rs_seg.staging import FolderKind, check_folder_output, process_alive, publish_dir, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (or of a registered model's folder, which holds a subset)."""

    path: Path
    CONFIG: ClassVar[str] = "train.yaml"
    NAMES: ClassVar[tuple[str, ...]] = (
        CONFIG, "normalization.json", "history.json", "run.json", "checkpoints", BUNDLE_FILE,
        "metrics.json", "report", "chip-cache",
    )  # fmt: skip

    @property
    def config(self) -> Path:
        """``train.yaml``: the training config and the settings a resume must match."""
        return self.path / self.CONFIG

    @property
    def normalization(self) -> Path:
        """Band means and standard deviations of the train split (and the bands read)."""
        return self.path / "normalization.json"

    @property
    def history(self) -> Path:
        """One row per finished epoch."""
        return self.path / "history.json"

    @property
    def status(self) -> Path:
        """``run.json``: running, failed, interrupted, trained or evaluated."""
        return self.path / "run.json"

    @property
    def checkpoints(self) -> Path:
        """The folder of Lightning checkpoints."""
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The latest epoch's checkpoint, which ``--resume`` continues from."""
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        """The checkpoint of the epoch with the best validation IoU, which is evaluated."""
        return self.checkpoints / "best.ckpt"

    @property
    def bundle(self) -> Path:
        """The model bundle evaluation writes."""
        return self.path / BUNDLE_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.json``: validation and test scores, the threshold, provenance."""
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        """The training report folder (Markdown and figures)."""
        return self.path / "report"


RUN_FOLDER = FolderKind("rs-seg train", RunFolder.CONFIG, RunFolder.NAMES)
"""What a run folder holds (training, then evaluation): ``--overwrite`` replaces only such a one."""


def best_epoch_of(history: list[dict[str, float]]) -> int | None:
    """The epoch with the best validation IoU (what best.ckpt holds); None before any epoch."""
    return int(max(history, key=lambda r: r["val_iou"])["epoch"]) if history else None


# A checkpoint must hold these to be resumed from (Lightning writes them every epoch).
_CHECKPOINT_KEYS = ("state_dict", "optimizer_states", "epoch", "loops")


def checkpoint_problem(path: Path) -> str | None:
    """Why a Lightning checkpoint cannot be resumed from, or None when it reads back whole.

    A checkpoint is a zip file: its directory sits at the end (a truncated file has none) and
    every member carries a CRC that :meth:`zipfile.ZipFile.testzip` verifies; the pickled
    structure is then opened with ``mmap`` so no tensor data is copied into memory.
    """
    import torch  # only here: reading a run's status needs no torch

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"damaged (CRC error in {bad})"
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (zipfile.BadZipFile, EOFError) as exc:
        return f"incomplete or damaged ({' '.join(str(exc).split())[:120]})"
    except Exception as exc:  # torch.load raises many types for damaged files
        return f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    if not isinstance(checkpoint, dict):
        return "not a Lightning checkpoint"
    missing = [key for key in _CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def write_status(run: Path, status: str, **extra: Any) -> None:
    """``run.json``: what state the run folder is in (running, failed, trained, evaluated).

    A ``running`` status also records who runs it (``host``, ``pid`` and the process start time),
    so that :func:`read_status` can tell a live run from one that was killed.
    """
    path = RunFolder(run).status
    data = json.loads(path.read_text()) if path.exists() else {}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if status == "running":
        for stale in ("error", "resumable"):  # from an earlier attempt this one resumes
            data.pop(stale, None)
        pid = int(extra.get("pid") or os.getpid())
        data.update(
            pid=pid,
            host=socket.gethostname(),
            process_started=process_start_time(pid),
            started=now,
        )
    data.update(status=status, updated=now)
    data.update(extra)
    write_json(path, data)


def read_status(run: Path) -> dict[str, Any]:
    """``run.json`` of a run folder ({} when there is none), with dead runs told apart.

    A ``running`` status whose process is gone (same host, and no process with that pid, or one
    started at another time: a reused pid) is reported as ``interrupted`` with ``resumable``
    saying whether ``--resume`` has a checkpoint to continue from. A run on another host is
    reported as written, since its process cannot be checked from here.
    """
    path = RunFolder(Path(run)).status
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RsSegError(f"unreadable run status ({type(exc).__name__})", path) from None
    if not isinstance(data, dict):
        raise RsSegError("unreadable run status (not a JSON object)", path)
    if data.get("status") == "running" and _run_process_gone(data):
        resumable = RunFolder(Path(run)).last_checkpoint.exists()
        data.update(
            status="interrupted",
            resumable=resumable,
            error=f"the training process (pid {data.get('pid')}) ended without recording why "
            "(killed?)",
        )
    return data


def _run_process_gone(status: dict[str, Any]) -> bool:
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False  # another machine's run, or a status without a pid: cannot tell

    if not process_alive(pid):  # no such process, or a zombie
        return True
    started, recorded = process_start_time(pid), status.get("process_started")
    # The pid lives, but a process started at another time is one that reused it.
    return started is not None and isinstance(recorded, int | float) and abs(started - recorded) > 1


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from psutil or else ``/proc``.

    None when the process is gone or a zombie, or where neither psutil nor ``/proc`` can tell.
    """
    try:
        # optional: without psutil, /proc tells the start time
        import psutil
    except ImportError:
        return _proc_start_time(pid)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(process.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return _proc_start_time(pid)


def _proc_start_time(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return round(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), 2)


def replacement_folder(out: Path) -> Path:
    """Where a new run that will replace the run in ``out`` trains: a hidden sibling.

    The name is fixed, so ``--resume`` finds an interrupted replacement and the DDP processes of
    a torchrun launch find the folder rank 0 trains in. It takes ``out``'s place only once the
    new run is trained and evaluated (:func:`publish_replacement`).
    """
    return out.with_name(f".{out.name}.next")


def replaced_by(run: Path) -> Path | None:
    """The run folder that ``run`` is the replacement of (None for a run trained in place)."""
    name = Path(run).name
    if name.startswith(".") and name.endswith(".next"):
        return Path(run).with_name(name[1 : -len(".next")])
    return None


def publish_replacement(run: Path) -> Path:
    """Put an evaluated replacement where the run it replaces is, in one atomic exchange.

    Returns where the run is now. The earlier run is removed only after the exchange; if it was
    given foreign files meanwhile, nothing is replaced and the new run stays where it trained.
    """
    out = replaced_by(run)
    if out is None:
        return Path(run)
    if os.path.lexists(out):
        check_folder_output(out, True, RUN_FOLDER)
    publish_dir(Path(run), out)
    write_status(out, read_status(out).get("status", "evaluated"), replaces=None)
    log.info("%s now holds the new run (the earlier one is removed)", out)
    return out
