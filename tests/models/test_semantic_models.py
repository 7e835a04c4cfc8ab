"""Contract and golden tests of the semantic models: FCN, U-Net, DeepLab v3 / v3+, layers,
and the U-Net border weight map."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from lightning_seg.layers.aspp import ASPP
from lightning_seg.layers.separable import SeparableConv2d
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone
from lightning_seg.models.backbones.xception import XceptionBackbone
from lightning_seg.models.detectors.deeplab import (
    DeepLabV3,
    DeepLabV3Plus,
    convert_torchvision_deeplabv3_state_dict,
    load_torchvision_deeplabv3,
)
from lightning_seg.models.detectors.fcn import FCN, bilinear_upsample_layer
from lightning_seg.models.detectors.unet import UNet, mirror_pad
from lightning_seg.models.losses.unet_weight_map import unet_weight_map


def _tiny_vgg() -> VGGBackbone:
    return VGGBackbone(stage_channels=(8, 16, 16, 16, 16), fc_channels=16)


# --------------------------------------------------------------------------- layers


def test_aspp_and_separable_shapes() -> None:
    x = torch.rand(2, 16, 9, 11)
    for separable in (False, True):
        aspp = ASPP(16, 8, rates=(1, 2, 3), separable=separable)
        assert aspp(x).shape == (2, 8, 9, 11)
        # 1x1 + 3 atrous + pooling branches concatenated before the projection
        assert aspp.project.conv.in_channels == 5 * 8
    sep = SeparableConv2d(16, 24, 3, stride=2, dilation=1)
    assert sep(x).shape == (2, 24, 5, 6)
    assert sep.depthwise.conv.groups == 16
    atrous = SeparableConv2d(16, 24, 3, dilation=4)
    assert atrous(x).shape == (2, 24, 9, 11) and atrous.depthwise.conv.dilation == (4, 4)


# --------------------------------------------------------------------------- FCN


def test_bilinear_transposed_conv_equals_interpolate() -> None:
    """The bilinear-initialised deconv is bilinear upsampling (align_corners=False) inside."""
    x = torch.rand(1, 3, 6, 7)
    for factor in (2, 8, 32):
        up = bilinear_upsample_layer(3, factor)
        got = up(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert got.shape == ref.shape
        m = factor  # away from the zero-padded border
        torch.testing.assert_close(got[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_fcn_variants_odd_sizes(variant: str) -> None:
    model = FCN(_tiny_vgg(), num_classes=3, variant=variant, score_init_std=0.01).eval()
    with torch.no_grad():
        assert model.logits(torch.rand(2, 3, 45, 70)).shape == (2, 3, 45, 70)
    built = {n for n in ("score_pool4", "score_pool3") if getattr(model, n) is not None}
    assert built == {"32s": set(), "16s": {"score_pool4"}, "8s": {"score_pool4", "score_pool3"}}[variant]
    assert not model.upscore.weight.requires_grad  # final upsampling fixed to bilinear


def test_fcn_skip_scores_start_at_zero() -> None:
    """Skip score layers are zero-initialised: FCN-8s starts as FCN-32s (paper Sec. 4.2)."""
    torch.manual_seed(0)
    fcn8 = FCN(_tiny_vgg(), num_classes=3, variant="8s", score_init_std=0.01).eval()
    assert fcn8.score_pool4.weight.abs().sum() == 0 and fcn8.score_pool3.weight.abs().sum() == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = fcn8.backbone((x - fcn8.preprocessor.pixel_mean) / fcn8.preprocessor.pixel_std)
        coarse = fcn8.score_fr(feats["fc7"])
        ref = F.interpolate(coarse, scale_factor=32, mode="bilinear", align_corners=False)
        got = fcn8.logits(x)
    torch.testing.assert_close(got[..., 32:-32, 32:-32], ref[..., 32:-32, 32:-32], atol=1e-5, rtol=1e-4)


def test_fcn_resnet_option_and_stride_check() -> None:
    backbone = ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), out_features=("c3", "c4", "c5"))
    model = FCN(backbone, 5, in_features=("c3", "c4", "c5")).eval()
    with torch.no_grad():
        assert model.logits(torch.rand(1, 3, 50, 33)).shape == (1, 5, 50, 33)
    with pytest.raises(ValueError, match="strides 8, 16, 32"):
        FCN(ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), output_stride=16), 5, in_features=("c3", "c4", "c5"))


# --------------------------------------------------------------------------- U-Net


def test_unet_paper_sizes() -> None:
    model = UNet(2, base_channels=4, depth=4, padding="valid", norm_layer=None)
    assert model.output_size((572, 572)) == (388, 388)
    assert model.input_size_for((388, 388)) == (572, 572)
    with pytest.raises(ValueError, match="use 556 or 572 instead of 570"):
        model.output_size((570, 572))
    with torch.no_grad():
        out = model.forward_tile(torch.rand(1, 3, 188, 204))
    assert out.shape[-2:] == model.output_size((188, 204)) == (4, 20)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_forward_returns_input_size(padding: str) -> None:
    model = UNet(3, base_channels=4, depth=2, padding=padding).eval()
    with torch.no_grad():
        assert model.logits(torch.rand(2, 3, 37, 50)).shape == (2, 3, 37, 50)
        assert model.logits(torch.rand(1, 3, 5, 3)).shape == (1, 3, 5, 3)  # smaller than the margin


def test_unet_valid_overlap_tile_equals_whole_image() -> None:
    """Valid convs see the same mirrored context either way: tiled == untiled."""
    model = UNet(3, base_channels=4, depth=2, padding="valid", norm_layer=None, tile_size=(67, 67)).eval()
    assert model.tile_size == (64, 64)  # rounded down to a valid size
    x = torch.rand(1, 3, 70, 95)
    with torch.no_grad():
        tiled = model.logits(x)
        model.tile_size = None
        whole = model.logits(x)
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=1e-4)


def test_mirror_pad_reflects_repeatedly() -> None:
    x = torch.arange(3.0).view(1, 1, 1, 3)
    got = mirror_pad(x, 0, 0, 5, 4)
    assert got.flatten().tolist() == [1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]
    torch.testing.assert_close(mirror_pad(x, 0, 0, 2, 2), F.pad(x, (2, 2, 0, 0), mode="reflect"))


def test_unet_weight_map_hand_case() -> None:
    """3 x 13 image: A = cols 0-2, B = cols 6-8, C = cols 11-12, background elsewhere.

    Gap A|B (cols 3-5): d1 + d2 = 4 everywhere (e.g. col 3: 1 to A's col 2, 3 to B's col 6).
    Gap B|C (cols 9-10): d1 + d2 = 3. Foreground: 24 px, background: 15 px of 39.
    """
    inst = torch.zeros(3, 13, dtype=torch.long)
    inst[:, 0:3], inst[:, 6:9], inst[:, 11:13] = 1, 2, 3
    w = unet_weight_map(inst, w0=10, sigma=5)
    w_fg, w_bg = 39 / (2 * 24), 39 / (2 * 15)
    border4 = 10 * math.exp(-(4**2) / (2 * 25))
    border3 = 10 * math.exp(-(3**2) / (2 * 25))
    expected_row = [w_fg] * 3 + [w_bg + border4] * 3 + [w_fg] * 3 + [w_bg + border3] * 2 + [w_fg] * 2
    torch.testing.assert_close(w, torch.tensor([expected_row] * 3))
    # one object only: no gap term; no balancing: ones
    single = torch.zeros(4, 5, dtype=torch.long)
    single[1:3, 1:3] = 7
    assert torch.equal(unet_weight_map(single, balance_classes=False), torch.ones(4, 5))


def test_unet_weight_map_diagonal_distance() -> None:
    inst = torch.zeros(5, 5, dtype=torch.long)
    inst[0, 0], inst[4, 4] = 1, 2
    w = unet_weight_map(inst, w0=1.0, sigma=1.0, balance_classes=False)
    d = 2 * math.sqrt(8)  # centre pixel: sqrt(2^2 + 2^2) to each object
    assert w[2, 2].item() == pytest.approx(1 + math.exp(-(d**2) / 2), rel=1e-5)
    assert w[0, 0].item() == 1.0  # object pixels keep w_c only


# --------------------------------------------------------------------------- DeepLab


def test_deeplabv3_matches_torchvision() -> None:
    """torchvision deeplabv3_resnet50 (random init) mapped into ours gives the same logits."""
    num_classes = 5
    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    ).eval()
    with torch.no_grad():  # non-trivial BN statistics so that a mis-mapped BN shows
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ours = DeepLabV3(
        ResNetBackbone(depth=50, output_stride=8, out_features=("c5",)),
        num_classes,
        aspp_rates=(12, 24, 36),
        num_head_convs=1,
        dropout=0.5,
    ).eval()
    report = load_torchvision_deeplabv3(ours, tv.state_dict(), strict=True)
    assert not report.missing and not report.unexpected and not report.shape_mismatch
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        ref = tv((x - ours.preprocessor.pixel_mean) / ours.preprocessor.pixel_std)["out"]
        got = ours.logits(x)
    assert got.shape == (1, num_classes, 65, 97)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_load_torchvision_deeplabv3_reports_keys() -> None:
    """Fine-tuning to another K: classifier reported as shape mismatch; aux head unexpected."""
    tv = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    converted, ignored = convert_torchvision_deeplabv3_state_dict(tv.state_dict())
    assert ignored and all(k.startswith("aux_classifier.") for k in ignored)
    assert "aspp.pooling.conv.conv.weight" in converted and "head_convs.0.norm.running_var" in converted
    ours = DeepLabV3(
        ResNetBackbone(depth=50, output_stride=8, out_features=("c5",)), 3, aspp_rates=(12, 24, 36), num_head_convs=1
    )
    report = load_torchvision_deeplabv3(ours, tv.state_dict())
    assert sorted(report.shape_mismatch) == ["classifier.bias", "classifier.weight"]
    assert report.missing == [] and report.unexpected == ignored
    torch.testing.assert_close(ours.aspp.project.conv.weight, tv.classifier[0].project[0].weight)
    with pytest.raises(KeyError, match="shape mismatch 2"):
        load_torchvision_deeplabv3(ours, tv.state_dict(), strict=True)


def test_deeplab_default_rates_follow_output_stride() -> None:
    b16 = ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), output_stride=16, out_features=("c5",))
    b8 = ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), output_stride=8, out_features=("c5",))
    assert DeepLabV3(b16, 3).aspp.rates == (6, 12, 18)
    assert DeepLabV3(b8, 3).aspp.rates == (12, 24, 36)


def test_deeplabv3plus_shapes_resnet_and_xception() -> None:
    resnet = ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), out_features=("c2", "c5"), output_stride=16)
    model = DeepLabV3Plus(resnet, 4, aspp_channels=16, decoder_channels=16, low_level_channels=8).eval()
    assert isinstance(model.decoder[0], SeparableConv2d)
    xcp = XceptionBackbone(middle_repeats=1, width_multiplier=0.125)
    model_x = DeepLabV3Plus(
        xcp, 4, in_feature="out", low_level_feature="low_level", aspp_channels=16, decoder_channels=16
    ).eval()
    x = torch.rand(1, 3, 53, 75)
    with torch.no_grad():
        assert model.logits(x).shape == (1, 4, 53, 75)
        assert model_x.logits(x).shape == (1, 4, 53, 75)
    with pytest.raises(ValueError, match="no feature 'c2'"):
        DeepLabV3Plus(ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), out_features=("c5",)), 4)


def test_builders_construct() -> None:
    from lightning_seg.models.detectors.deeplab import deeplabv3_resnet50, deeplabv3plus_resnet50
    from lightning_seg.models.detectors.unet import unet

    m = deeplabv3_resnet50(3)
    assert [b.conv2.dilation[0] for b in m.backbone.layer4] == [2, 4, 8] and m.aspp.rates == (6, 12, 18)
    assert deeplabv3plus_resnet50(3, output_stride=8).aspp.rates == (12, 24, 36)
    assert unet(3, padding="valid").padding == "valid"
