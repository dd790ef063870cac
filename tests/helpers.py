"""Builders and checks shared by test modules (no test module imports another test module)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rs_seg.config import ModelConfig
from tests.conftest import PIXEL, UTM

ROOT = Path(__file__).resolve().parents[1]


def make_bundle(path: Path, bands: int = 3, chip: int = 64, seed: int = 0) -> Path:
    """A model bundle with random weights (Unet/resnet18): real inference, no training."""
    import torch

    from rs_seg.bundle import ModelBundle
    from rs_seg.dataset import Normalization
    from rs_seg.models import build_model

    torch.manual_seed(seed)
    model = ModelConfig(arch="Unet", encoder="resnet18")
    net = build_model(model, bands)
    return ModelBundle(
        model=model.model_dump(mode="json"),
        bands=list(range(1, bands + 1)),
        band_names=[f"b{i}" for i in range(1, bands + 1)],
        normalization=Normalization((1000.0,) * bands, (300.0,) * bands),
        chip_size=chip,
        threshold=0.5,
        pixel_size=[PIXEL, PIXEL],
        band_count=bands,
        crs=UTM,
        state_dict=net.state_dict(),
    ).save(path)


def digest(path: Path) -> dict[str, str]:
    """Every file at or below ``path`` with the SHA-256 of its bytes (folders as '/')."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(path.rglob("*"))
    }


def rs_seg(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    """``python -m rs_seg ARGS`` in a child process (a real exit code, real signals)."""
    return subprocess.run(
        [sys.executable, "-m", "rs_seg", *map(str, args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def signal_when_ready(
    args: list[str | Path],
    cwd: Path,
    ready: Callable[[], bool],
    signum: int,
    settle: float = 0.0,
    timeout: float = 240,
) -> subprocess.CompletedProcess | None:
    """Run ``python -m rs_seg ARGS``, send ``signum`` once ``ready()`` holds (after ``settle`` s).

    Returns the finished process, or None when it ended before the signal could be sent.
    """
    child = subprocess.Popen([sys.executable, "-m", "rs_seg", *map(str, args)], cwd=cwd,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            return None
        assert time.monotonic() < deadline, "the command never got to the point to signal"
        time.sleep(0.05)
    time.sleep(settle)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, "", stderr)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2 and exactly one ``error:`` line holding ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def hidden_leftovers(folder: Path) -> list[str]:
    """Staging copies, journals and scratch files of rs_seg in ``folder``."""
    return sorted(
        p.name
        for p in Path(folder).iterdir()
        if p.name.startswith(".") and (".partial-" in p.name or ".publish-" in p.name)
    )


@contextlib.contextmanager
def small_disk(where: Path, size: str = "64k") -> Iterator[Path]:
    """A size-capped tmpfs mounted at ``where`` (root only; callers skip otherwise)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a size-capped tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def truncated_copy(source: Path, target: Path, fraction: float = 0.5) -> Path:
    """A copy of ``source`` cut to ``fraction`` of its bytes: a download or copy that died."""
    data = Path(source).read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target
