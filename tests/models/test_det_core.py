"""Golden tests of the detection core against torchvision: box coder, matcher, sampler,
anchors, FPN and RPN (issue #4). Tiny feature maps, CPU, seconds."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.ops import box_iou

from lightning_seg.models.assigners.matcher import MaxIoUMatcher
from lightning_seg.models.assigners.sampler import BalancedSampler
from lightning_seg.ops.boxes import BoxCoder


def random_boxes(n: int, size: float = 100.0, min_wh: float = 1.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + min_wh
    return torch.cat([xy, xy + wh], dim=1)


# --------------------------------------------------------------------------- box coder
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(weights):
    ours = BoxCoder(weights)
    ref = tv_utils.BoxCoder(weights)
    gt, anchors = random_boxes(200), random_boxes(200)
    enc = ours.encode(gt, anchors)
    assert enc.shape == (200, 4)
    assert torch.equal(enc, ref.encode_single(gt, anchors))

    deltas = torch.randn(200, 3 * 4) * 2  # some dw/dh beyond the clip
    deltas[0, 2] = 100.0
    dec = ours.decode(deltas, anchors)
    assert dec.shape == (200, 3, 4)
    assert torch.equal(dec, ref.decode(deltas, [anchors]))
    assert torch.isfinite(dec).all()
    # round trip
    back = ours.decode(enc, anchors)[:, 0]
    torch.testing.assert_close(back, gt, atol=1e-3, rtol=1e-5)


def test_box_coder_empty_and_bad_shapes():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 2, 4)
    with pytest.raises(ValueError):
        coder.decode(torch.zeros(3, 5), torch.zeros(3, 4))


# --------------------------------------------------------------------------- matcher
@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_matches_torchvision(low_quality):
    gt = random_boxes(7)
    anchors = random_boxes(300)
    iou = box_iou(gt, anchors)
    # a duplicated column makes a tie for the low-quality rule
    iou = torch.cat([iou, iou[:, :5]], dim=1)
    ours = MaxIoUMatcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
    ref = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
    assert torch.equal(ours, ref)
    assert ours.dtype == torch.int64
    assert (ours == -1).any() and (ours >= 0).any()


def test_matcher_empty():
    matcher = MaxIoUMatcher(0.5, 0.5)
    out = matcher(torch.zeros(0, 11))
    assert out.tolist() == [MaxIoUMatcher.BELOW_LOW_THRESHOLD] * 11
    assert matcher(torch.zeros(3, 0)).shape == (0,)
    with pytest.raises(ValueError):
        MaxIoUMatcher(0.3, 0.7)


# --------------------------------------------------------------------------- sampler
def test_sampler_matches_torchvision_with_same_seed():
    labels = [torch.randint(-1, 3, (500,)), torch.randint(-1, 2, (40,)), torch.zeros(60, dtype=torch.int64)]
    torch.manual_seed(123)
    pos, neg = BalancedSampler(64, 0.25)(labels)
    torch.manual_seed(123)
    ref_pos, ref_neg = tv_utils.BalancedPositiveNegativeSampler(64, 0.25)(labels)
    for p, n, rp, rn, lab in zip(pos, neg, ref_pos, ref_neg, labels):
        assert p.dtype == torch.bool and n.dtype == torch.bool
        assert torch.equal(p, rp.bool()) and torch.equal(n, rn.bool())
        assert not (p & n).any()
        assert (lab[p] >= 1).all() and (lab[n] == 0).all()
        assert p.sum() <= 16 and p.sum() + n.sum() <= 64
    assert pos[0].sum() == 16 and neg[0].sum() == 48
    assert pos[2].sum() == 0 and neg[2].sum() == 60  # no positives: all negatives, up to 64


# --------------------------------------------------------------------------- anchors
def _fpn_grid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Grid sizes of P2..P6 for a padded image, as stride-2 convs and P6 pooling produce them."""
    sizes = []
    for _ in range(4):
        sizes.append((math.ceil(h / 4 / 2 ** len(sizes)), math.ceil(w / 4 / 2 ** len(sizes))))
    sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


@pytest.mark.parametrize("padded", [(96, 160), (64, 64), (800, 1088), (36, 52)])
def test_anchors_match_torchvision(padded):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from lightning_seg.models.heads.anchors import AnchorGenerator

    sizes = ((32,), (64,), (128,), (256,), (512,))
    ratios = ((0.5, 1.0, 2.0),) * 5
    grids = _fpn_grid_sizes(*padded)
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    images = ImageList(torch.zeros(2, 3, *padded), [padded, (padded[0] - 3, padded[1] - 5)])
    ref = TVAnchorGenerator(sizes, ratios)(images, feats)[0]

    gen = AnchorGenerator(sizes, ratios, strides=(4, 8, 16, 32, 64))
    assert gen.num_anchors_per_location() == [3] * 5
    ours = gen(grids)
    assert [a.shape[0] for a in ours] == [h * w * 3 for h, w in grids]
    assert torch.equal(torch.cat(ours), ref)


def test_anchors_multiple_sizes_per_level():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from lightning_seg.models.heads.anchors import AnchorGenerator

    sizes, ratios = ((16, 24, 40),), ((0.5, 1.0, 2.0, 3.0),)
    ref = TVAnchorGenerator(sizes, ratios)(ImageList(torch.zeros(1, 3, 40, 56), [(40, 56)]), [torch.zeros(1, 1, 5, 7)])
    ours = AnchorGenerator(sizes, ratios, strides=(8,))([(5, 7)])
    assert torch.equal(ours[0], ref[0])
    assert ours[0].shape == (5 * 7 * 12, 4)


# --------------------------------------------------------------------------- FPN
def _backbone_like_features(batch: int, h: int, w: int, channels: dict[str, int]) -> dict[str, torch.Tensor]:
    feats = {}
    for i, (name, c) in enumerate(channels.items()):
        s = 4 * 2**i
        feats[name] = torch.randn(batch, c, math.ceil(h / s), math.ceil(w / s))
    return feats


def test_fpn_matches_torchvision():
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from lightning_seg.models.necks.fpn import FPN, fpn_key_map_from_torchvision

    channels = {"c2": 8, "c3": 16, "c4": 24, "c5": 32}
    strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    ref = FeaturePyramidNetwork(list(channels.values()), 12, extra_blocks=LastLevelMaxPool()).eval()
    ours = FPN(channels, strides, out_channels=12).eval()
    assert ours.out_channels == {f"p{i}": 12 for i in range(2, 7)}
    assert ours.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}

    key_map = fpn_key_map_from_torchvision(tuple(channels), src_prefix="", dst_prefix="")
    mapped = {key_map[k]: v for k, v in ref.state_dict().items()}
    assert set(mapped) == set(ours.state_dict())
    ours.load_state_dict(mapped)

    feats = _backbone_like_features(2, 75, 101, channels)  # odd sizes: 19x26, 10x13, 5x7, 3x4
    out = ours(feats)
    ref_out = ref(dict(feats))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for (name, x), y in zip(out.items(), ref_out.values()):
        assert x.shape == y.shape, name
        assert torch.equal(x, y), name
    assert out["p6"].shape[-2:] == (2, 2)


def test_fpn_on_resnet_backbone_and_bad_config():
    from lightning_seg.models.backbones.resnet import ResNetBackbone
    from lightning_seg.models.necks.fpn import FPN

    backbone = ResNetBackbone(depth=18)
    fpn = FPN(backbone.out_channels, backbone.strides, out_channels=16, extra_max_pool=False)
    out = fpn(backbone(torch.rand(1, 3, 45, 63)))
    assert list(out) == ["p2", "p3", "p4", "p5"]
    for name, x in out.items():
        assert x.shape[1] == fpn.out_channels[name] == 16
        assert x.shape[-2] == math.ceil(45 / fpn.strides[name])
    with pytest.raises(ValueError, match="in_features"):
        FPN(backbone.out_channels, backbone.strides, in_features=("c2", "c6"))
