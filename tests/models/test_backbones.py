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
