"""Stacked Hourglass, SimpleBaseline and regression networks (issue #15): structure as the
official code, contract (loss keys, invisible / missing keypoints, predictions in the original
frame), intermediate supervision switch, re-injection, flip-test symmetry, YAML = builder."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from lightning_seg.models.backbones.hourglass import (
    BasicResidual,
    HourglassBackbone,
    HourglassModule,
    PreActResidual,
    hourglass104,
)
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.detectors.topdown import (
    StackedHourglass,
    TopDownPoseNet,
    flip_permutation,
    regression_resnet,
    simple_baseline_resnet,
    stacked_hourglass,
)
from lightning_seg.models.heads.keypoints import (
    HourglassHeatmapHead,
    RegressionHead,
    SimpleBaselineHead,
)
from lightning_seg.ops.affine import crop_matrix
from lightning_seg.structures import AffineCrop, Batch, KeypointTargets, SampleMeta

FLIP = [(1, 2)]


def small_hourglass(num_stacks=2, intermediate=True, **head) -> StackedHourglass:
    return StackedHourglass(
        HourglassBackbone(num_stacks=num_stacks, depth=2, channels=16),
        partial(HourglassHeatmapHead, num_keypoints=3, intermediate_supervision=intermediate, **head),
        keypoint_flip_map=FLIP,
    )


def batch(n=2, size=(64, 64), vis=2.0, crop=False) -> Batch:
    g = torch.Generator().manual_seed(0)
    kpts = torch.cat([torch.rand(1, 3, 2, generator=g) * 40 + 10, torch.full((1, 3, 1), vis)], -1)
    metas = []
    for i in range(n):
        c = None
        if crop:
            m = crop_matrix((200.0 + i, 150.0), (128.0, 128.0), size, rotation=10.0)
            c = AffineCrop.from_matrix(m, size, center=(200.0 + i, 150.0), size=(128.0, 128.0))
        metas.append(SampleMeta(i, f"im{i}", (300, 400) if crop else size, crop=c))
    return Batch(torch.rand(n, 3, *size, generator=g), [size] * n, metas,
                 keypoints=[KeypointTargets(kpts.clone(), size, boxes=torch.tensor([[0.0, 0.0, 60.0, 60.0]]))
                            for _ in range(n)])


# ------------------------------------------------------------------------------ structure
def test_preact_residual_is_the_official_block():
    block = PreActResidual(64, 128)
    kinds = [type(m).__name__ for m in block.body]
    assert kinds == ["BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert [m.out_channels for m in block.body if isinstance(m, nn.Conv2d)] == [64, 64, 128]
    assert [m.kernel_size for m in block.body if isinstance(m, nn.Conv2d)] == [(1, 1), (3, 3), (1, 1)]
    assert isinstance(block.skip, nn.Conv2d) and isinstance(PreActResidual(32, 32).skip, nn.Identity)


def test_hourglass_module_adds_the_upsampled_lower_branch():
    hg = HourglassModule(3, [8] * 4, [1] * 4).eval()
    x = torch.rand(1, 8, 16, 16)
    up1 = hg.up1(x)
    low = hg.low3(hg.low2(hg.low1(hg.down(x))))
    assert low.shape[-1] == 8  # max-pool 2x2 down
    expected = up1 + low.repeat_interleave(2, -1).repeat_interleave(2, -2)  # nearest x2
    torch.testing.assert_close(hg(x), expected)
    assert isinstance(hg.down, nn.MaxPool2d) and isinstance(hg.low2.low2.low2, nn.Sequential)


@pytest.mark.parametrize("stacks", [1, 2, 4, 8])
def test_newell_backbone_shapes(stacks):
    bb = HourglassBackbone(num_stacks=stacks).eval()
    assert bb.output_shape() == {f"s{i}": bb.output_shape()["s0"] for i in range(stacks)}
    assert bb.output_shape()["s0"].channels == 256 and bb.output_shape()["s0"].stride == 4
    assert bb.size_divisibility == 64
    # one pre-activation residual per location: 4 levels x (up1, low1, low3) + the bottom
    residuals = [m for m in bb.hourglasses[0].modules() if isinstance(m, PreActResidual)]
    assert len(residuals) == 4 * 3 + 1


def test_newell_8_stack_parameters_and_256_to_64():
    net = stacked_hourglass(16, [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)], num_stacks=8)
    count = sum(p.numel() for p in net.parameters())
    assert 25.0e6 < count < 25.8e6  # 8 stacks x ~3.1M + stem (the paper's ~25M network)
    with torch.no_grad():
        feats = net.eval().backbone(torch.rand(1, 3, 256, 256))
    assert feats["s7"].shape == (1, 256, 64, 64)


def test_hourglass104_for_cornernet():
    bb = hourglass104().eval()
    assert isinstance(bb.hourglasses[0].up1[0], BasicResidual)
    assert sum(p.numel() for p in bb.parameters()) > 180e6
    assert bb.size_divisibility == 128
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 128, 128))
    assert list(out) == ["s0", "s1"] and out["s1"].shape == (1, 256, 32, 32)
    with pytest.raises(ValueError, match="multiple of 128"):
        bb(torch.rand(1, 3, 96, 96))


# ------------------------------------------------------------------------------ contract
def test_stacked_hourglass_losses_per_stack_and_switch():
    torch.manual_seed(0)
    net = small_hourglass(3)
    losses = net(batch())
    assert sorted(losses) == ["loss_heatmap_s0", "loss_heatmap_s1", "loss_heatmap_s2"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    only_last = small_hourglass(3, intermediate=False)
    only_last.load_state_dict(net.state_dict())
    last = only_last(batch())
    assert list(last) == ["loss_heatmap_s2"]
    torch.testing.assert_close(last["loss_heatmap_s2"], losses["loss_heatmap_s2"])
    # without intermediate supervision the first stack's output conv gets no gradient except
    # through the re-injection; with it, its own term reaches it directly
    sum(last.values()).backward()
    assert only_last.head.outputs[0].weight.grad is not None  # re-injected heatmaps are used
    assert only_last.head.remaps[0].weight.grad.abs().sum() > 0


def test_reinjection_changes_the_next_stack():
    torch.manual_seed(0)
    net = small_hourglass(2).eval()
    b = batch()
    with torch.no_grad():
        before = net.raw_outputs(net.preprocessor(b.images, b.image_sizes)).heatmaps
        net.head.remaps[0].weight.mul_(5.0)
        after = net.raw_outputs(net.preprocessor(b.images, b.image_sizes)).heatmaps
    torch.testing.assert_close(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


@pytest.mark.parametrize("make", ["hourglass", "simplebaseline", "regression"])
def test_invisible_and_missing_keypoints_give_finite_zero_losses(make):
    torch.manual_seed(0)
    net = {
        "hourglass": lambda: small_hourglass(2),
        "simplebaseline": lambda: simple_baseline_resnet(3, FLIP, depth=18, deconv_channels=32),
        "regression": lambda: regression_resnet(3, FLIP, depth=18),
    }[make]()
    losses = net(batch(vis=0.0))
    assert losses and all(torch.isfinite(v) and v == 0 for v in losses.values())
    sum(losses.values()).backward()  # connected to the graph
    # one labelled keypoint far outside the crop: weight 0 as well
    b = batch()
    for t in b.keypoints:
        t.keypoints[0, :, 0] = -500.0
    assert all(v == 0 for v in net(b).values())


def test_heads_output_strides_and_shapes():
    shapes = ResNetBackbone(depth=18, out_features=("c5",)).output_shape()
    head = SimpleBaselineHead(shapes, num_keypoints=5, deconv_channels=32)
    assert head.stride == 4
    out = head({"c5": torch.rand(2, 512, 4, 3)})
    assert out.heatmaps[0].shape == (2, 5, 32, 24)
    reg = RegressionHead(shapes, num_keypoints=5)
    assert reg({"c5": torch.rand(2, 512, 4, 3)}).coords.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="num_keypoints is not set"):
        RegressionHead(shapes)


def test_predictions_in_the_original_frame_and_instance_score():
    torch.manual_seed(0)
    net = small_hourglass(2).eval()
    b = batch(crop=True)
    with torch.no_grad():
        preds = net(b)
    assert len(preds) == 2 and preds[0].image_size == (300, 400)
    assert preds[0].keypoints.shape == (1, 3, 3) and preds[0].heatmaps.shape == (1, 3, 16, 16)
    # keypoints are the input-frame decoding mapped through the inverse crop
    with torch.no_grad():
        raw = net.raw_outputs(net.preprocessor(b.images, b.image_sizes))
        flipped = net.raw_outputs(net.preprocessor(b.images, b.image_sizes).flip(-1))
        coords, scores = net.head.predict(net.head.merge_flip(raw, flipped, net.flip_permutation), (64, 64))
    inv = b.meta[0].crop.inverse().float()
    expected = coords[0] @ inv[:, :2].T + inv[:, 2]
    torch.testing.assert_close(preds[0].keypoints[0, :, :2], expected, atol=1e-3, rtol=0)
    above = scores[0][scores[0] > 0.2]
    ref = above.mean() if len(above) else torch.tensor(0.0)
    torch.testing.assert_close(preds[0].scores[0], ref)
    assert preds[0].boxes[0].tolist() == pytest.approx([136.0, 86.0, 264.0, 214.0])


def test_flip_test_is_symmetric_on_a_symmetric_image():
    """On a left-right symmetric input the flip-tested heatmaps are mirror images, so each left
    keypoint is the mirror of its right partner (x_left = W - x_right)."""
    torch.manual_seed(0)
    net = TopDownPoseNet(
        ResNetBackbone(depth=18, out_features=("c5",)),
        partial(SimpleBaselineHead, num_keypoints=3, deconv_channels=16, decoder="dark"),
        keypoint_flip_map=FLIP,
    ).eval()
    half = torch.rand(1, 3, 64, 32)
    b = Batch(torch.cat([half, half.flip(-1)], -1), [(64, 64)], [SampleMeta(0, "s", (64, 64))])
    with torch.no_grad():
        k = net(b)[0].keypoints[0]
    torch.testing.assert_close(k[1, 0], 64 - k[2, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(k[1, 1:], k[2, 1:], atol=1e-3, rtol=0)
    net.flip_test = False
    with torch.no_grad():
        k2 = net(b)[0].keypoints[0]
    assert not torch.allclose(k2[1, 0], 64 - k2[2, 0], atol=1e-3)


def test_flip_permutation_and_missing_flip_map():
    assert flip_permutation(4, [(0, 3)]) == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="out of range"):
        flip_permutation(2, [(0, 5)])
    with pytest.raises(ValueError, match="keypoint_flip_map"):
        TopDownPoseNet(ResNetBackbone(depth=18, out_features=("c5",)),
                       partial(RegressionHead, num_keypoints=3))


def test_training_needs_keypoints():
    net = small_hourglass(1)
    b = batch()
    b = Batch(b.images, b.image_sizes, b.meta)
    with pytest.raises(ValueError, match="batch.keypoints"):
        net(b)


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    net = small_hourglass(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = net(batch())
    assert all(torch.isfinite(v) for v in losses.values())


BUILDERS = {
    "hourglass_8stack_mpii_100e": lambda k, f: stacked_hourglass(k, f, num_stacks=8),
    "simplebaseline_r18_shapes_kp": lambda k, f: simple_baseline_resnet(
        k, f, depth=18, deconv_channels=128, encoding="unbiased", sigma=1.5, decoder="dark"),
    "regression_r18_shapes_kp": lambda k, f: regression_resnet(k, f, depth=18),
}


@pytest.mark.parametrize("experiment", sorted(BUILDERS))
def test_builders_equal_the_experiments(experiment, monkeypatch):
    from pathlib import Path

    from lightning_seg.cli import build_experiment

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    task, data = build_experiment(repo / "experiments" / f"{experiment}.yaml")
    built = BUILDERS[experiment](data.num_keypoints, data.keypoint_flip_map)
    net = task.model
    assert repr(built) == repr(net)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert built.flip_permutation == net.flip_permutation and built.flip_test == net.flip_test
    if hasattr(built.head, "targets"):
        assert vars(built.head.targets) == vars(net.head.targets)
    if hasattr(built.head, "decoder"):
        assert built.head.decoder == net.head.decoder
    if experiment.startswith("hourglass"):
        assert net.head.targets.encoding == "hourglass" and net.head.decoder == "quarter"
        assert net.head.intermediate_supervision and net.backbone.num_stacks == 8
