"""Networks by name: architectures, encoders, band counts, local weights, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rs_seg.config import ModelConfig
from rs_seg.errors import RsSegError
from rs_seg.train.models import build_model, check_names


@pytest.mark.parametrize(
    ("arch", "encoder", "stride"),
    [
        ("Unet", "resnet18", None),
        ("UnetPlusPlus", "resnet18", None),
        ("DeepLabV3", "resnet18", 8),
        ("DeepLabV3Plus", "mobilenet_v2", 16),
        ("DeepLabV3Plus", "resnet18", 8),
        ("PSPNet", "resnet18", None),
        ("FPN", "efficientnet-b0", None),
    ],
)
@pytest.mark.parametrize("bands", [3, 5])
def test_every_architecture_gives_one_logit_per_pixel(arch, encoder, stride, bands) -> None:
    net = build_model(ModelConfig(arch=arch, encoder=encoder, output_stride=stride), bands)
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, bands, 64, 64))
    assert out.shape == (2, 1, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["xception", "tu-resnet10t", "efficientnet-b1"])
def test_other_encoders_build(encoder) -> None:
    net = build_model(ModelConfig(arch="Unet", encoder=encoder), 4).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 4, 64, 64)).shape == (2, 1, 64, 64)


def test_unsupported_combination_is_a_clear_error() -> None:
    with pytest.raises(RsSegError, match=r"cannot build DeepLabV3Plus/xception: .*dilated"):
        build_model(ModelConfig(arch="DeepLabV3Plus", encoder="xception"), 3)


def test_unknown_architecture_lists_the_valid_names() -> None:
    with pytest.raises(RsSegError, match=r"unknown architecture 'Unett' \(did you mean 'Unet'\?\)"):
        check_names(ModelConfig(arch="Unett"))
    with pytest.raises(RsSegError, match=r"valid: .*DeepLabV3Plus.*UnetPlusPlus"):
        check_names(ModelConfig(arch="SegNet"))


def test_unknown_encoder_lists_the_valid_names() -> None:
    with pytest.raises(RsSegError, match=r"unknown encoder 'resnet35'.*valid: resnet18, resnet34"):
        check_names(ModelConfig(encoder="resnet35"))
    with pytest.raises(RsSegError, match="unknown timm encoder 'nonexistent_net'"):
        check_names(ModelConfig(encoder="tu-nonexistent_net"))


def test_output_stride_only_for_deeplab() -> None:
    with pytest.raises(ValueError, match="output_stride applies only to DeepLabV3"):
        ModelConfig(arch="Unet", output_stride=8)


def test_local_encoder_weights_are_loaded_and_adapted_to_band_count(tmp_path: Path) -> None:
    source = build_model(ModelConfig(encoder="resnet18"), 3)
    path = tmp_path / "resnet18.pth"
    torch.save(source.encoder.state_dict(), path)
    net = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 3)
    assert torch.equal(net.encoder.layer1[0].conv1.weight, source.encoder.layer1[0].conv1.weight)
    four = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 4)
    assert four.encoder.conv1.weight.shape[1] == 4
    assert torch.equal(four.encoder.layer4[1].conv2.weight, source.encoder.layer4[1].conv2.weight)


def test_wrong_or_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    other = build_model(ModelConfig(encoder="mobilenet_v2"), 3)
    path = tmp_path / "mobilenet.pth"
    torch.save(other.encoder.state_dict(), path)
    with pytest.raises(RsSegError, match=r"mobilenet.pth: .*wrong encoder"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 3)
    with pytest.raises(RsSegError, match=r"missing.pth: encoder weights file not found"):
        build_model(
            ModelConfig(encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth")), 3
        )


@pytest.mark.slow
def test_imagenet_weights_offline_fail_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RsSegError, match=r"cannot load 'imagenet' weights .*encoder_weights: null"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights="imagenet"), 3)
