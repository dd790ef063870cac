"""The torchvision shim makes torchvision-based libraries importable and otherwise stays idle."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_smp_lightning_and_torchmetrics_import_after_rs_seg() -> None:
    done = run_python(
        "import rs_seg, segmentation_models_pytorch as smp, lightning, torchmetrics, torch\n"
        "model = smp.Unet('resnet18', encoder_weights=None, in_channels=4, classes=1)\n"
        "print(tuple(model(torch.zeros(1, 4, 64, 64)).shape))"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 1, 64, 64)"


def test_shim_does_nothing_when_torchvision_ops_exist() -> None:
    # Simulate a working torchvision: its ops are already registered before the hook fires.
    done = run_python(
        "import torch\n"
        "lib = torch.library.Library('torchvision', 'DEF')\n"
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "from rs_seg import torchvision_shim as shim\n"
        "print(shim.patch_torchvision_ops(), shim._shim_library is None)"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]


def test_importing_rs_seg_and_its_cli_does_not_import_torch() -> None:
    done = run_python(
        "import sys, rs_seg, rs_seg.cli, rs_seg.prepare.run; print('torch' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
