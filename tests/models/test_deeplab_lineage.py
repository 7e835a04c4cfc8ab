"""The DeepLab lineage as configurations: v1 LargeFOV (atrous VGG16, fc6 3x3 dilation 12, 1024
channels) and v2 (ASPP-L: summed atrous score branches) beside v3 / v3+ (tested elsewhere);
the atrous VGG, DeepLab's fc6 / fc7 decimation, the builders equal their fragments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightning_seg.layers.aspp import SummedASPP
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone, decimate_indices
from lightning_seg.models.detectors.deeplab import DeepLabV1, DeepLabV2
from lightning_seg.structures import Batch, SemanticPredictions

REPO = Path(__file__).resolve().parents[2]
TINY = (8, 16, 16, 32, 32)


def tiny_largefov(**kw) -> VGGBackbone:
    args = {"stage_channels": TINY, "out_features": ("fc7",), "output_stride": 8, "pool_kernel_size": 3,
            "fc6_kernel_size": 3, "fc6_dilation": 12, "fc_channels": 16}
    return VGGBackbone(**(args | kw))


# --------------------------------------------------------------------------- atrous VGG
def test_atrous_vgg_keeps_stride_8_and_dilates_conv5():
    backbone = tiny_largefov(out_features=("pool3", "pool4", "pool5", "fc7")).eval()
    assert backbone.strides == {"pool3": 8, "pool4": 8, "pool5": 8, "fc7": 8}
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3  # conv5_1..3 dilated 2
    assert [c.padding[0] for c in convs] == [1] * 10 + [2] * 3
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    assert backbone.fc6.kernel_size == (3, 3) and backbone.fc6.dilation == (12, 12) and backbone.fc6.padding == (12, 12)
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "pool3": (2, 16, 8, 12), "pool4": (2, 32, 8, 12), "pool5": (2, 32, 8, 12), "fc7": (2, 16, 8, 12)}
    # output stride 16: only pool5 keeps the resolution, nothing to dilate before fc6
    os16 = VGGBackbone(stage_channels=TINY, fc_channels=16, output_stride=16)
    assert os16.strides == {"pool3": 8, "pool4": 16, "fc7": 16}
    assert all(c.dilation == (1, 1) for c in os16.features if isinstance(c, nn.Conv2d))
    # the plain VGG is unchanged: its parameters are the atrous one's (ImageNet weights load)
    plain = VGGBackbone(stage_channels=TINY, fc_channels=16, fc6_kernel_size=3, out_features=("fc7",))
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in tiny_largefov().state_dict().items()}
    with pytest.raises(ValueError, match="output_stride"):
        VGGBackbone(output_stride=4)


def test_atrous_conv5_sees_what_the_strided_one_sees():
    """The hole algorithm: with pool4 at stride 1 and conv5 dilated 2, every other pixel of the
    atrous conv5 output is exactly the strided network's conv5 output (same weights)."""
    strided = VGGBackbone(stage_channels=TINY, fc_channels=None, out_features=("pool5",), pool_kernel_size=3).eval()
    atrous = VGGBackbone(stage_channels=TINY, fc_channels=None, out_features=("pool5",), pool_kernel_size=3,
                         output_stride=8).eval()
    atrous.load_state_dict(strided.state_dict())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = strided.features[:strided._pool_index["pool5"]](x)  # conv5_3 at stride 16
        dense = atrous.features[:atrous._pool_index["pool5"]](x)  # conv5_3 at stride 8
    assert ref.shape[-2:] == (4, 6) and dense.shape[-2:] == (8, 12)
    torch.testing.assert_close(dense[..., ::2, ::2], ref)


def test_decimated_imagenet_fc_layers():
    """torchvision's fc6 (4096 x 512 x 7 x 7 as a Linear) and fc7 enter LargeFOV's 3x3 /
    1024-wide layers by decimation: every 4th filter, kernel taps 0, 3, 6 (here at 1/64 size)."""
    assert decimate_indices(7, 3) == [0, 3, 6] and decimate_indices(7, 4) == [0, 2, 4, 6]
    assert decimate_indices(7, 7) == list(range(7))
    tv = nn.Module()
    tv.features = VGGBackbone(stage_channels=TINY, fc_channels=None, out_features=("pool5",)).features
    tv.classifier = nn.Sequential(nn.Linear(32 * 49, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 64))
    state = {f"features.{k}": v for k, v in tv.features.state_dict().items()}
    state |= {f"classifier.{k}": v for k, v in tv.classifier.state_dict().items()}
    ours = tiny_largefov()
    ours.load_torchvision_state_dict(state)
    fc6 = tv.classifier[0].weight.reshape(64, 32, 7, 7)
    torch.testing.assert_close(ours.fc6.weight, fc6[::4][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]])
    torch.testing.assert_close(ours.fc6.bias, tv.classifier[0].bias[::4])
    torch.testing.assert_close(ours.fc7.weight[:, :, 0, 0], tv.classifier[3].weight[::4, ::4])
    torch.testing.assert_close(ours.features[0].weight, tv.features[0].weight)
    with pytest.raises(KeyError, match="fc_channels must divide"):
        tiny_largefov(fc_channels=24).load_torchvision_state_dict(state)


# --------------------------------------------------------------------------- ASPP-L
def test_summed_aspp_is_the_sum_of_atrous_score_maps():
    torch.manual_seed(0)
    aspp = SummedASPP(8, 5, rates=(6, 12, 18, 24)).eval()
    x = torch.rand(2, 8, 20, 24)
    expected = sum(F.conv2d(x, b.weight, b.bias, padding=r, dilation=r) for b, r in zip(aspp.branches, (6, 12, 18, 24)))
    torch.testing.assert_close(aspp(x), expected)
    assert all(abs(float(b.weight.detach().std()) - 0.01) < 0.003 and not b.bias.detach().any() for b in aspp.branches)
    # the VGG-16 form: fc6 (3x3 atrous) / fc7 / fc8 per branch
    vgg_form = SummedASPP(8, 5, rates=(6, 12), branch_channels=16).eval()
    assert [type(m).__name__ for m in vgg_form.branches[0]] == [
        "Conv2d", "ReLU", "Dropout", "Conv2d", "ReLU", "Dropout", "Conv2d"]
    assert vgg_form(x).shape == (2, 5, 20, 24)
    with pytest.raises(ValueError, match="at least one rate"):
        SummedASPP(8, 5, rates=())


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_lineage_contract(version: str):
    if version == "v1":
        net = DeepLabV1(tiny_largefov(), num_classes=4)
    else:
        backbone = ResNetBackbone(depth=18, num_blocks=(1, 1, 1, 1), out_features=("c5",), output_stride=8,
                                  multi_grid=(1,))
        net = DeepLabV2(backbone, num_classes=4, aspp_rates=(2, 4))
    images = [torch.rand(3, 61, 83), torch.rand(3, 48, 64)]
    labels = [torch.randint(0, 4, (61, 83)), torch.randint(0, 4, (48, 64))]
    batch = Batch.from_images(images, semantic=labels)
    net.train()
    losses = net(batch)
    assert set(losses) == {"loss_ce"} and torch.isfinite(losses["loss_ce"])
    losses["loss_ce"].backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    net.eval()
    with torch.no_grad():
        pred = net(batch)
    assert isinstance(pred, SemanticPredictions)
    assert pred.logits.shape == (2, 4, 61, 83)
    assert pred.original(1).shape == (48, 64)


def _network_from_fragment(name: str) -> nn.Module:
    """The network of ``experiments/models/<name>.yaml`` built by jsonargparse (no weights)."""
    from jsonargparse import ArgumentParser

    from lightning_seg.cli import instantiate

    cfg = yaml.safe_load((REPO / "experiments" / "models" / f"{name}.yaml").read_text())
    net = cfg["model"]["init_args"]["model"]
    net["init_args"]["backbone"]["init_args"]["weights"] = None
    net["init_args"]["num_classes"] = 21
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    return instantiate(parser, parser.parse_object({"net": net})).net


@pytest.mark.parametrize("name", ["deeplabv1_largefov_vgg16", "deeplabv2_r101"])
def test_builders_equal_their_fragments(name: str):
    from lightning_seg.models.detectors import deeplab

    built = {"deeplabv1_largefov_vgg16": lambda: deeplab.deeplabv1_largefov_vgg16(21),
             "deeplabv2_r101": lambda: deeplab.deeplabv2_resnet101(21)}[name]()
    from_yaml = _network_from_fragment(name)
    assert repr(built) == repr(from_yaml)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in from_yaml.state_dict().items()}
    if name == "deeplabv1_largefov_vgg16":  # the paper's sizes
        assert built.backbone.fc6.weight.shape == (1024, 512, 3, 3) and built.backbone.strides["fc7"] == 8
        assert 20e6 < sum(p.numel() for p in built.parameters()) < 21e6  # 20.5 M (DeepLab-LargeFOV)
    else:
        assert built.aspp.rates == (6, 12, 18, 24) and built.backbone.strides["c5"] == 8
        assert [b.conv2.dilation[0] for b in built.backbone.layer4] == [4, 4, 4]
