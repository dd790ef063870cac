"""Fixtures shared by the whole suite; the builders they use live in ``tests/helpers.py``.

Every test builds exactly the data it needs in ``tmp_path`` (a few hundred pixels at most), so the
suite needs no network and no shared data, and each test states its own geometry.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    LEARNABLE_BOXES,
    SHARED_DATA,
    pixel_box,
    train_config,
    write_labels,
    write_learnable_scene,
    write_scene,
)

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and so would every command the tests start, so Ctrl-C tests would see no interrupt.
# A handler here (not an ignore) is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def scene_factory(tmp_path: Path) -> Callable[..., Path]:
    """``scene_factory(name, height, width, **kwargs)`` writes a scene under ``tmp_path``."""

    def make(name: str, height: int, width: int, **kwargs) -> Path:
        return write_scene(tmp_path / "scenes" / f"{name}.tif", height, width, **kwargs)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests that need ../shared/data when it is absent (clean checkouts, other machines)."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared chip folder (32 px chips of a learnable 192 px scene, 1-chip blocks), shared
    read-only by the training tests."""
    from rs_seg.config import PrepareConfig, SplitConfig
    from rs_seg.prepare.run import prepare

    root = tmp_path_factory.mktemp("tiny")
    scene = write_learnable_scene(root / "scene.tif", 192, LEARNABLE_BOXES)
    labels = write_labels(root / "labels.gpkg", [pixel_box(*b) for b in LEARNABLE_BOXES])
    cfg = PrepareConfig(
        scenes=[str(scene)],
        labels=labels,
        out=root / "chips",
        chip_size=32,
        split=SplitConfig(block_chips=1, seed=1),
    )
    return prepare(cfg).out


@pytest.fixture(scope="session")
def trained_tiny_run(tiny_chips: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real fit (Unet/resnet18, 6 epochs on the 32 px chips, ~15 s) plus its evaluation,
    shared by every test that needs a trained model: returns (TrainOutcome, EvaluationOutcome)."""
    from rs_seg.evaluate.run import train_and_evaluate

    trained = train_and_evaluate(
        train_config(tiny_chips, tmp_path_factory.mktemp("trained") / "run")
    )
    assert trained is not None
    return trained.training, trained.evaluation
