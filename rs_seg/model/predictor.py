"""The one predictor: normalized windows -> network -> sigmoid probabilities (TTA, precision).

Scene inference, validation and test scoring, the report's test scenes and the registry's
comparison all apply a model through :class:`WindowPredictor`, so the scores a bundle records come
from the code that maps scenes for users.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import get_args

import numpy as np
import torch

from rs_seg.config import Precision
from rs_seg.errors import RsSegError
from rs_seg.model.bundle import ModelBundle


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RsSegError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


PRECISIONS: tuple[str, ...] = get_args(Precision)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network's forward pass (None: plain fp32).

    ``auto`` is bf16 on CUDA and fp32 on a CPU, where bf16 is asked for by name (its speed and
    accuracy against fp32 on the NAIP test scenes: BENCHMARKS.md). A CPU without native bf16
    (AVX512-BF16 or AMX) would emulate it slower than fp32, so asking there is an error rather
    than a slow surprise.
    """
    if precision not in PRECISIONS:
        raise RsSegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise RsSegError("--precision bf16: this CPU has no native bfloat16 (AVX512-BF16 / AMX)")
    return torch.bfloat16


def _band_selection(band_index: np.ndarray) -> slice | np.ndarray:
    """The bundle's bands as a slice where they are consecutive: a view, not a copy per window."""
    first = int(band_index[0])
    if np.array_equal(band_index, np.arange(first, first + len(band_index))):
        return slice(first, first + len(band_index))
    return band_index


_NETWORKS: OrderedDict[tuple[int, str], tuple[weakref.ref[ModelBundle], torch.nn.Module]] = (
    OrderedDict()
)
_NETWORKS_LOCK = threading.Lock()
# networks a process keeps built, the least recently used dropped: each holds its weights in memory
NETWORKS_KEPT = 2


def model_network(bundle: ModelBundle, device: torch.device) -> torch.nn.Module:
    """The bundle's network on ``device``, channels-last and in eval mode, built once per bundle.

    Building it (the smp network, the weights copied in, the layout change) can cost more than a
    small scene itself on a GPU, so it is not repeated per scene. The incoming flow maps scene
    after scene in one worker with the same bundle object (:func:`rs_seg.infer.run.load_model`
    reads each file version once), so its network is built once. The key is that object itself
    (held weakly), not an id stored in the file, so other weights never get a network built for
    different ones. An eval-mode network under ``no_grad`` is only read, so threads that map
    scenes at the same time can share it.
    """
    key = (id(bundle), str(device))
    with _NETWORKS_LOCK:
        held = _NETWORKS.get(key)
        if held is not None and held[0]() is bundle:
            _NETWORKS.move_to_end(key)
            return held[1]
        # Module.to takes memory_format at runtime; torch's overloads for it leave it out.
        net: torch.nn.Module = bundle.build(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        _NETWORKS[key] = (weakref.ref(bundle), net)
        while len(_NETWORKS) > NETWORKS_KEPT:
            _NETWORKS.popitem(last=False)
        return net


class WindowPredictor:
    """Normalized windows -> cropland probabilities, in batches, optionally with flip TTA."""

    def __init__(
        self, bundle: ModelBundle, device: torch.device, tta: bool, precision: str = "auto"
    ) -> None:
        self.bundle = bundle
        self.device = device
        self.tta = tta
        self.net = model_network(bundle, device)
        self.autocast = autocast_dtype(precision, device)
        self.band_index = bundle.band_index
        self._bands = _band_selection(self.band_index)

    def normalize(
        self, image: np.ndarray, valid: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The bundle's band selection and normalization, exactly as in training."""
        return self.bundle.normalization.apply(image[self._bands], valid, out)

    def in_model_layout(self, batch: np.ndarray) -> np.ndarray:
        """The batch in the memory the network reads: channels-last, page-locked on CUDA.

        Called on a preparation thread, so the layout copy stays off the model's thread; the
        array keeps its (N, bands, H, W) shape, only its strides change, and ``__call__`` hands
        it to torch without another copy. Page-locked memory (torch caches such blocks) lets the
        copy to the device run asynchronously.
        """
        n, bands, height, width = batch.shape
        shape = (n, height, width, bands)
        # On a CPU numpy allocates: it asks for transparent huge pages, so a batch costs a few
        # page faults where torch's allocator costs one per page. numpy, not torch, copies: torch
        # ops on this thread would wake OpenMP threads that then spin beside the model's.
        channels_last: np.ndarray = (
            torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
            if self.device.type == "cuda"
            else np.empty(shape, dtype=np.float32)
        )
        # band by band: each copy reads one contiguous plane, where one transposing copy of the
        # whole batch iterates over the bands innermost and strides through memory
        for band in range(bands):
            channels_last[..., band] = batch[:, band]
        return channels_last.transpose(0, 3, 1, 2)

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, bands, H, W) float32 -> (N, outputs, H, W) float32 probabilities."""
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        if not self.tta:  # the common case: no running sum, no extra copy of the outputs
            return self._probabilities(images).cpu().numpy()
        total: torch.Tensor | None = None
        flips: list[tuple[int, ...]] = [(), (3,), (2,), (2, 3)]
        for dims in flips:
            prob = self._probabilities(torch.flip(images, dims) if dims else images)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
        assert total is not None
        return (total / len(flips)).cpu().numpy()

    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the network's outputs (extent, and boundary for a fields model)."""
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            logits = self.net(images).float()
        # band-major (NCHW): a channels_last network returns the outputs pixel-interleaved, and
        # the writer thread would blend each band of a fields model's two through a stride of 2;
        # one output is the same either way, so this copies nothing for a cropland model
        return torch.sigmoid(logits[:, : self.bundle.outputs]).contiguous()
