"""Contract tests for the backbones: keys, channels, strides, odd input sizes, weight layout."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from lightning_seg.models.backbones.resnet import ResNetBackbone


def _check_contract(backbone: nn.Module, h: int, w: int) -> dict[str, torch.Tensor]:
    feats = backbone(torch.rand(2, 3, h, w))
    assert list(feats) == list(backbone.out_channels) == list(backbone.strides)
    for level, f in feats.items():
        s = backbone.strides[level]
        assert f.shape[0] == 2 and f.shape[1] == backbone.out_channels[level], level
        # every stride-2 op rounds up, so the size is within one pixel of H / stride
        assert abs(f.shape[2] - math.ceil(h / s)) <= 1 and abs(f.shape[3] - math.ceil(w / s)) <= 1, (
            level,
            f.shape,
            s,
        )
    return feats


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_contract_odd_size(depth: int) -> None:
    backbone = ResNetBackbone(depth=depth).eval()
    exp = 4 if depth == 50 else 1
    assert backbone.out_channels == {"c2": 64 * exp, "c3": 128 * exp, "c4": 256 * exp, "c5": 512 * exp}
    assert backbone.strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    with torch.no_grad():
        _check_contract(backbone, 65, 97)


@pytest.mark.parametrize("output_stride,c4,c5", [(16, 16, 16), (8, 8, 8)])
def test_resnet_output_stride(output_stride: int, c4: int, c5: int) -> None:
    backbone = ResNetBackbone(depth=18, output_stride=output_stride).eval()
    assert backbone.strides == {"c2": 4, "c3": 8, "c4": c4, "c5": c5}
    with torch.no_grad():
        feats = _check_contract(backbone, 64, 48)
    assert feats["c5"].shape[-2:] == (64 // output_stride, 48 // output_stride)


def test_resnet_out_features_subset_drops_deeper_stages() -> None:
    backbone = ResNetBackbone(depth=18, out_features=("c3",))
    assert not hasattr(backbone, "layer3") and not hasattr(backbone, "layer4")
    assert backbone.out_channels == {"c3": 128} and backbone.strides == {"c3": 8}
    with torch.no_grad():
        _check_contract(backbone.eval(), 33, 40)
    with pytest.raises(ValueError, match="out_features"):
        ResNetBackbone(depth=18, out_features=("c6",))


def test_resnet_matches_torchvision_state_dict_and_outputs() -> None:
    """Keys map 1:1 to torchvision's ResNet and the atrous variant equals torchvision's."""
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True]).eval()
    ours = ResNetBackbone(depth=50, output_stride=8).eval()
    tv_keys = {k for k in tv.state_dict() if not k.startswith("fc.")}
    assert set(ours.state_dict()) == tv_keys
    ours.load_torchvision_state_dict(tv.state_dict())
    x = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        ref = torchvision.models._utils.IntermediateLayerGetter(tv, {"layer4": "out"})(x)["out"]
        got = ours(x)["c5"]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # a detection checkpoint with its prefix gives a clear error
    with pytest.raises(KeyError, match="backbone.body"):
        ours.load_torchvision_state_dict({f"backbone.body.{k}": v for k, v in tv.state_dict().items()})


def test_resnet_weights_path_roundtrip(tmp_path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    ours = ResNetBackbone(depth=18, weights_path=path, frozen_bn=True)
    torch.testing.assert_close(ours.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    torch.testing.assert_close(ours.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ResNetBackbone(depth=18, weights="NOT_A_WEIGHT")


def test_resnet_multi_grid_rates() -> None:
    backbone = ResNetBackbone(depth=50, output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [2, 4, 8]
    assert [b.conv2.stride[0] for b in backbone.layer4] == [1, 1, 1]
    backbone = ResNetBackbone(depth=50, output_stride=8, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [4, 8, 16]
    assert [b.conv2.dilation[0] for b in backbone.layer3][:2] == [1, 2]
    with pytest.raises(ValueError, match="one rate per block"):
        ResNetBackbone(depth=50, multi_grid=(1, 2))


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_resnet_freeze_at(freeze_at: int) -> None:
    backbone = ResNetBackbone(depth=18, freeze_at=freeze_at)
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    for i, name in enumerate(stages):
        trainable = any(p.requires_grad for p in getattr(backbone, name).parameters())
        assert trainable == (i >= freeze_at), name
    frozen_norms = isinstance(backbone.bn1, FrozenBatchNorm2d)
    assert frozen_norms == (freeze_at >= 1)
    if freeze_at >= 2:
        assert isinstance(backbone.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(backbone.layer4[0].bn1, nn.BatchNorm2d) == (freeze_at < 5)


def test_resnet_frozen_bn_for_mask_rcnn() -> None:
    backbone = ResNetBackbone(depth=50, frozen_bn=True, freeze_at=2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert backbone.out_channels == {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}
    assert backbone.strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    feats = backbone(torch.rand(1, 3, 64, 64))
    feats["c5"].mean().backward()
    assert backbone.layer2[0].conv1.weight.grad is not None
    assert backbone.layer1[0].conv1.weight.grad is None


# --------------------------------------------------------------------------- VGG


def test_vgg_contract_tiny() -> None:
    from lightning_seg.models.backbones.vgg import VGGBackbone

    backbone = VGGBackbone(stage_channels=(8, 16, 32, 32, 32), fc_channels=64).eval()
    assert backbone.out_channels == {"pool3": 32, "pool4": 32, "fc7": 64}
    assert backbone.strides == {"pool3": 8, "pool4": 16, "fc7": 32}
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, 64, 96))
    assert feats["pool3"].shape == (2, 32, 8, 12)
    assert feats["pool4"].shape == (2, 32, 4, 6)
    assert feats["fc7"].shape == (2, 64, 2, 3)
    # fc layers and unused deeper stages are not built
    shallow = VGGBackbone(stage_channels=(8, 16, 32, 32, 32), out_features=("pool3",))
    assert shallow.fc6 is None and len(shallow.features) == 17  # pool3 is torchvision's features[16]
    with pytest.raises(ValueError, match="fc_channels"):
        VGGBackbone(fc_channels=None, out_features=("fc7",))


def _torchvision_layout_vgg(stage_channels: tuple[int, ...], fc: int) -> nn.Module:
    """A small network with torchvision VGG16's exact module layout (``features``,
    ``classifier`` = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)."""
    cfg: list = []
    for ch, n in zip(stage_channels, (2, 2, 3, 3, 3)):
        cfg += [ch] * n + ["M"]
    net = nn.Module()
    net.features = torchvision.models.vgg.make_layers(cfg)
    net.classifier = nn.Sequential(
        nn.Linear(stage_channels[-1] * 49, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(),
        nn.Linear(fc, 1000),
    )
    return net


def test_vgg_loads_torchvision_layout() -> None:
    """``features.*`` map 1:1, fc6/fc7 are the classifier's Linear layers reshaped."""
    from lightning_seg.models.backbones.vgg import VGGBackbone

    channels = (8, 16, 16, 32, 32)
    tv = _torchvision_layout_vgg(channels, 64).eval()
    ours = VGGBackbone(stage_channels=channels, fc_channels=64).eval()
    ours.load_torchvision_state_dict(tv.state_dict())
    torch.testing.assert_close(ours.features[28].weight, tv.features[28].weight)
    torch.testing.assert_close(ours.fc6.weight.flatten(1), tv.classifier[0].weight)
    torch.testing.assert_close(ours.fc7.weight.flatten(1), tv.classifier[3].weight)
    # fc6 + fc7 as convs on pool5 of a 224 image equal the Linear layers on the flattened pool5
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ref = tv.classifier[:5](tv.features(x).flatten(1))
        got = ours(x)["fc7"][:, :, 3, 3]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_vgg16_full_size_torchvision_keys() -> None:
    from lightning_seg.models.backbones.vgg import VGGBackbone
    from lightning_seg.models.detectors.fcn import fcn8s_vgg16

    tv = torchvision.models.vgg16(weights=None)
    ours = VGGBackbone()
    ours.load_torchvision_state_dict(tv.state_dict())
    assert {k for k in ours.state_dict() if k.startswith("features.")} == {
        k for k in tv.state_dict() if k.startswith("features.")
    }
    assert fcn8s_vgg16(3).backbone.out_channels == {"pool3": 256, "pool4": 512, "fc7": 4096}


# --------------------------------------------------------------------------- Xception


@pytest.mark.parametrize("output_stride", [16, 8])
def test_xception_contract_tiny(output_stride: int) -> None:
    from lightning_seg.models.backbones.xception import XceptionBackbone

    backbone = XceptionBackbone(output_stride=output_stride, middle_repeats=1, width_multiplier=0.125).eval()
    assert backbone.out_channels == {"low_level": 32, "out": 256}
    assert backbone.strides == {"low_level": 4, "out": output_stride}
    with torch.no_grad():
        _check_contract(backbone, 65, 47)
    # the full-width model has the paper's channels and 16 middle-flow blocks
    full = XceptionBackbone()
    assert full.out_channels == {"low_level": 256, "out": 2048}
    assert sum(name.startswith("middle") for name in full.blocks) == 16


def test_xception_atrous_rates() -> None:
    from lightning_seg.models.backbones.xception import XceptionBackbone

    os16 = XceptionBackbone(output_stride=16, middle_repeats=1, width_multiplier=0.125)
    assert os16.blocks["exit1"].sep3.depthwise.conv.stride == (1, 1)
    assert os16.blocks["exit2"].sep1.depthwise.conv.dilation == (2, 2)
    os8 = XceptionBackbone(output_stride=8, middle_repeats=1, width_multiplier=0.125)
    assert os8.blocks["entry3"].sep3.depthwise.conv.stride == (1, 1)
    assert os8.blocks["middle1"].sep1.depthwise.conv.dilation == (2, 2)
    assert os8.blocks["exit2"].sep1.depthwise.conv.dilation == (4, 4)
