"""Make torchvision importable next to a CPU-only torch build.

Why this exists: pip resolves segmentation-models-pytorch's torchvision requirement to a CUDA build
even when torch itself is the CPU wheel. That torchvision's compiled ops (``_C.so``) cannot load,
and its meta registrations then fail at import with ``operator torchvision::nms does not exist``,
which breaks every library that imports torchvision (smp, timm, torchmetrics, lightning).
Segmentation needs none of torchvision's C++ ops, so declaring the two op schemas the meta
registrations look up (``nms`` and ``qnms``) is enough for the import to succeed.

How it stays harmless: :func:`install` only adds an import hook. The hook fires the first time
``torchvision`` is imported, tries to load torchvision's own compiled library, and declares the
schemas only if ``nms`` is still missing afterwards. Where torchvision works (a CUDA host, a
matching CPU build) nothing is declared. ``import rs_seg`` stays cheap: torch is imported only when
torchvision is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import Any

_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# The torch.library.Library object must stay alive, or its definitions are removed again.
_shim_library: Any = None


def _nms_is_registered() -> bool:
    # not at import time: `import rs_seg` (configs, the CLI's start) stays torch-free
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _try_load_compiled_ops(package_dir: Path) -> None:
    """Load torchvision's own compiled ops if they fit this torch; ignore them if they do not."""
    # not at import time: `import rs_seg` (configs, the CLI's start) stays torch-free
    import torch

    for library in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]  # unannotated in torch
        except (OSError, RuntimeError):
            continue


def patch_torchvision_ops() -> bool:
    """Declare torchvision's ``nms``/``qnms`` schemas when its compiled ops cannot load.

    Returns True when the shim was applied, False when it was not needed.
    """
    global _shim_library
    if _shim_library is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _nms_is_registered():
        return False
    _try_load_compiled_ops(Path(next(iter(spec.submodule_search_locations))))
    if _nms_is_registered():
        return False

    # not at import time: `import rs_seg` (configs, the CLI's start) stays torch-free
    import torch

    # torch leaves Library's __init__ and define unannotated.
    library = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
    for schema in _TORCHVISION_SCHEMAS:
        library.define(schema)  # type: ignore[no-untyped-call]
    _shim_library = library
    return True


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs :func:`patch_torchvision_ops` just before the first ``import torchvision``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "torchvision":
            uninstall()
            patch_torchvision_ops()
        return None  # let the regular finders import the module


_hook = _TorchvisionImportHook()


def install() -> None:
    """Arm the hook (idempotent). Called by ``rs_seg/__init__.py`` before anything else."""
    if "torchvision" not in sys.modules and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    """Remove the hook; it is one-shot."""
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
