"""YOLACT / YOLACT++ with a tiny ResNet-18 FPN: the network contract (loss terms, empty targets,
unequal sizes, bf16, eval outputs at the original size), the matcher, OHEM, the mask-loss
normalisation on hand-computed cases, the FPN and ResNet options, and the official weight
mapping on a state dict with the official names and shapes."""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_seg.models.assigners.yolact_matcher import YolactMatcher
from lightning_seg.models.detectors.yolact import (
    Yolact,
    load_official_yolact,
    map_official_yolact_state_dict,
    yolact_resnet_fpn,
)
from lightning_seg.models.heads.yolact import (
    ProtoNet,
    YolactAnchors,
    YolactAssignment,
    yolact_anchor_scales,
)
from lightning_seg.models.losses.yolact import lincomb_mask_loss, ohem_cross_entropy, ohem_negatives
from lightning_seg.structures import InstancePredictions, InstanceTargets
from lightning_seg.structures.specs import ShapeSpec

sys.path.insert(0, str(Path(__file__).parent))
from test_maskrcnn import _blob_batch, batch_of

LOSS_KEYS = {"loss_cls", "loss_box", "loss_mask", "loss_semantic"}


def tiny_yolact(num_classes: int = 3, plus: bool = False, input_size: int = 128, **kwargs) -> Yolact:
    """ResNet-18 (one block per stage), 32-channel pyramid and heads: fast on a CPU."""
    return yolact_resnet_fpn(
        num_classes, depth=18, fpn_channels=32, input_size=input_size, plus=plus,
        backbone_options={"num_blocks": (1, 1, 1, 1)}, **kwargs,
    )


# ---------------------------------------------------------------------- contract
def test_training_losses_unequal_sizes_and_an_empty_image():
    model = tiny_yolact().train()
    images, sizes, targets = _blob_batch([(97, 130), (121, 83), (64, 64)], [3, 2, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.protonet, model.head, model.semantic_head, model.neck):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())


def test_yolact_plus_adds_the_mask_iou_term_and_deformable_convs():
    from lightning_seg.layers.deform import DeformConv2d

    model = tiny_yolact(plus=True).train()
    assert model.head.anchors.num_anchors == 9 and not model.head.anchors.square_anchors
    assert isinstance(model.backbone.layer2[0].conv2, DeformConv2d)
    images, sizes, targets = _blob_batch([(128, 128), (128, 128)], [3, 2], seed=3)
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS | {"loss_mask_iou"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.layer2[0].conv2.offset.weight.grad is not None
    model.eval()
    with torch.no_grad():
        preds = model(batch_of(images, sizes))
    assert all(isinstance(p, InstancePredictions) and len(p) > 0 for p in preds)


def test_empty_targets_give_zero_box_mask_and_semantic_terms():
    model = tiny_yolact().train()
    images, sizes, targets = _blob_batch([(75, 101), (90, 64)], [0, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    for key in ("loss_box", "loss_mask"):
        assert losses[key].item() == 0.0, key
    # the official rule: an image without positives has no hard negatives either
    assert losses["loss_cls"].item() == 0.0
    assert losses["loss_semantic"] > 0  # every class is absent: the semantic head still learns
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.head.coeff_layer.weight.grad is not None  # graph stays connected

    model.head.min_num_negatives = 10
    losses = model(batch_of(images, sizes, targets))
    assert losses["loss_cls"] > 0 and torch.isfinite(losses["loss_cls"])


def test_small_boxes_are_dropped_and_counted(caplog):
    model = tiny_yolact().train()
    images, sizes, _ = _blob_batch([(64, 64)], [0])
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:13, 10:40] = True
    masks[1, 5:40, 5:40] = True
    bad = InstanceTargets(torch.tensor([[10.0, 10.0, 40.0, 13.0], [5.0, 5.0, 40.0, 40.0]]),
                          torch.tensor([0, 1]), (64, 64), masks=masks)
    with caplog.at_level("WARNING", logger="lightning_seg.models"):
        losses = model(batch_of(images, sizes, [bad]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0 and losses["loss_mask"] > 0  # the 35-px box still trains
    assert model.target_filter.counts["degenerate box"] == 1  # 3 px high: below 4 px
    assert "dropped 1 training boxes" in caplog.text


def test_crowd_regions_are_neutral_not_targets():
    model = tiny_yolact().train()
    images, sizes, targets = _blob_batch([(96, 96)], [2], seed=2)
    t = targets[0]
    crowd = InstanceTargets(t.boxes, t.labels, t.image_size, masks=t.masks,
                            iscrowd=torch.tensor([True, False]))
    raw_batch = batch_of(images, sizes, [crowd])
    losses = model(raw_batch)
    assert losses["loss_box"] > 0
    only_crowd = InstanceTargets(t.boxes, t.labels, t.image_size, masks=t.masks,
                                 iscrowd=torch.ones(2, dtype=torch.bool))
    losses = model(batch_of(images, sizes, [only_crowd]))
    assert losses["loss_box"].item() == 0.0 and losses["loss_mask"].item() == 0.0


def test_eval_outputs_and_orig_sizes():
    model = tiny_yolact().eval()
    images, sizes, _ = _blob_batch([(97, 130), (121, 83)], [2, 1])
    with torch.no_grad():
        native = model(batch_of(images, sizes))
        orig = [(194, 65), (121, 83)]
        scaled = model(batch_of(images, sizes, orig_sizes=orig))
    for pred, size in zip(native, sizes):
        assert isinstance(pred, InstancePredictions) and pred.image_size == size
        assert 0 < len(pred) <= model.max_detections
        assert pred.masks.dtype == torch.bool and pred.masks.shape == (len(pred), *size)
        assert (pred.labels >= 0).all() and (pred.labels < 3).all()
        assert (pred.boxes[:, 2] <= size[1]).all() and (pred.boxes[:, 3] <= size[0]).all()
        assert (pred.boxes >= 0).all()
        assert torch.all(pred.scores[:-1] >= pred.scores[1:])
    for a, b, (h, w), (h0, w0) in zip(native, scaled, sizes, orig):
        assert b.image_size == (h0, w0) and b.masks.shape[1:] == (h0, w0)
        factor = torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])
        expected = torch.minimum(a.boxes * factor, torch.tensor([w0, h0, w0, h0]).float())
        torch.testing.assert_close(b.boxes, expected)
        torch.testing.assert_close(b.scores, a.scores)


def test_extra_collate_padding_does_not_change_predictions():
    model = tiny_yolact().eval()
    images, sizes, _ = _blob_batch([(97, 130), (121, 83)], [2, 1])
    padded = torch.nn.functional.pad(images, (0, 30, 0, 17), value=0.7)
    with torch.no_grad():
        a, b = model(batch_of(images, sizes)), model(batch_of(padded, sizes))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.boxes, y.boxes)
        assert torch.equal(x.masks, y.masks)


@pytest.mark.parametrize("nms", ["fast", "cross_class", "standard"])
def test_nms_modes_and_detection_limits(nms):
    model = tiny_yolact(nms=nms, max_detections=7).eval()
    images, sizes, _ = _blob_batch([(96, 96)], [2])
    with torch.no_grad():
        pred = model(batch_of(images, sizes))[0]
    assert 0 < len(pred) <= 7
    assert (pred.scores > 0).all()
    if nms == "cross_class":  # no two kept boxes overlap by more than the threshold
        from torchvision.ops import box_iou

        iou = box_iou(pred.boxes, pred.boxes).triu(1)
        assert iou.max() <= model.nms_iou_thresh + 1e-6
    with pytest.raises(ValueError, match="nms"):
        tiny_yolact(nms="soft")


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny_yolact().train()
    images, sizes, targets = _blob_batch([(61, 80), (72, 57)], [2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(batch_of(images, sizes))
    assert all(torch.isfinite(p.boxes).all() and p.masks.dtype == torch.bool for p in preds)


def test_overfit_one_image_loss_drops():
    """A tiny YOLACT memorises one image: the total loss falls by >= 90%."""
    torch.manual_seed(0)
    model = tiny_yolact(input_size=128).train()
    images, sizes, targets = _blob_batch([(128, 128)], [2], seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for step in range(150):
        total = sum(model(batch_of(images, sizes, targets)).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        first = total.item() if first is None else first
        if total.item() < 0.1 * first:
            break
    assert math.isfinite(total.item())
    assert total.item() < 0.1 * first, f"loss {first:.3f} -> {total.item():.3f} after {step + 1} steps"


def test_overfit_four_images_mask_ap50():
    """Memorise 4 images of 1-3 ellipses / rectangles / triangles: mask AP50 >= 0.9 (pycocotools)
    within 120 steps. Measured (seed 0): 1.0 at step 40 (mask AP 0.62), 1.0 and AP 0.79 at 120."""
    from test_maskrcnn import mask_ap50

    images, sizes, targets = _blob_batch([(128, 128)] * 4, [3, 2, 3, 1], seed=7)
    torch.manual_seed(0)
    model = tiny_yolact(3, input_size=128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(120):
        idx = [(2 * step + j) % 4 for j in range(2)]
        model.train()
        losses = model(batch_of(images[idx], [sizes[i] for i in idx], [targets[i] for i in idx]))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if (step + 1) % 40 == 0:
            model.eval()
            with torch.no_grad():
                history.append((step + 1, round(mask_ap50(model(batch_of(images, sizes)), targets), 3)))
            if history[-1][1] >= 0.9:
                break
    assert history[-1][1] >= 0.9, f"mask AP50 by step: {history}"


# ---------------------------------------------------------------------- anchors and matching
def test_anchors_follow_the_official_priors():
    """At 550 x 550, P3 (69 x 69): centres ((i + .5) / 69 * 550), square v1 anchors of side
    24 * sqrt(r); YOLACT++ rectangles w = s sqrt(r), h = s / sqrt(r), scale-major order."""
    anchors = YolactAnchors(((24,),), (1.0, 0.5, 2.0), square_anchors=True)
    a = anchors([(69, 69)], (550, 550))
    assert a.shape == (69 * 69 * 3, 4)
    centre = (a[:3, :2] + a[:3, 2:]) / 2
    torch.testing.assert_close(centre, torch.full((3, 2), 0.5 / 69 * 550))
    wh = a[:3, 2:] - a[:3, :2]
    side = torch.tensor([24.0, 24 * math.sqrt(0.5), 24 * math.sqrt(2)])
    torch.testing.assert_close(wh, torch.stack([side, side], 1))
    second = (a[3, :2] + a[3, 2:]) / 2  # next location along x
    torch.testing.assert_close(second, torch.tensor([1.5 / 69 * 550, 0.5 / 69 * 550]))

    plus = YolactAnchors(yolact_anchor_scales(550, num_scales=3)[:1], (1.0, 0.5, 2.0), square_anchors=False)
    wh = plus.cell_sizes(0)
    assert wh.shape == (9, 2)
    torch.testing.assert_close(wh[1], torch.tensor([24 * math.sqrt(0.5), 24 / math.sqrt(0.5)]))
    torch.testing.assert_close(wh[3], torch.tensor([24 * 2 ** (1 / 3)] * 2))
    assert yolact_anchor_scales(400) == ((17,), (34,), (69,), (139,), (279,))
    assert yolact_anchor_scales(700) == ((30,), (61,), (122,), (244,), (488,))


def test_matcher_thresholds_forced_anchor_and_crowd():
    anchors = torch.tensor([
        [0.0, 0, 10, 10],    # IoU 1 with gt 0 -> positive
        [0.0, 0, 10, 12],    # IoU 10/12 = 0.83 with gt 0 -> positive
        [0.0, 0, 10, 22],    # IoU 0.4545 -> neutral
        [0.0, 0, 10, 30],    # IoU 0.33 -> background
        [50.0, 50, 60, 60],  # best anchor of gt 1 (IoU 0.25): forced positive
        [80.0, 80, 90, 90],  # inside the crowd box -> neutral
        [200.0, 200, 210, 210],  # far from everything -> background
    ])
    gt = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 70, 70]])
    crowd = torch.tensor([[78.0, 78, 100, 100]])
    out = YolactMatcher()(anchors, gt, torch.tensor([2, 0]), crowd)
    assert out.labels.tolist() == [3, 3, -1, 0, 1, -1, 0]
    assert out.matched_idxs[:2].tolist() == [0, 0] and out.matched_idxs[4].item() == 1
    # two ground truths whose best anchor is the same: the better pair keeps it, the other
    # gt gets its next-best anchor
    gt2 = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11]])
    out2 = YolactMatcher()(anchors[:2], gt2, torch.tensor([0, 1]))
    assert sorted(out2.matched_idxs.tolist()) == [0, 1]
    empty = YolactMatcher()(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), crowd)
    assert empty.labels.tolist() == [0, 0, 0, 0, 0, -1, 0]


# ---------------------------------------------------------------------- losses
def test_ohem_keeps_three_hardest_negatives_per_positive():
    logits = torch.zeros(2, 12, 3)
    logits[0, :, 0] = torch.arange(12.0)  # background logit: anchor 0 hardest, 11 easiest
    labels = torch.zeros(2, 12, dtype=torch.int64)
    labels[0, 5] = 2  # positive
    labels[0, 1] = -1  # neutral: never a negative, however hard
    logits[1, :, 0] = torch.arange(12.0).flip(0)
    labels[1, 0] = 1
    labels[1, 1] = 1
    neg = ohem_negatives(logits, labels, neg_pos_ratio=3)
    assert torch.nonzero(neg[0]).flatten().tolist() == [0, 2, 3]
    assert torch.nonzero(neg[1]).flatten().tolist() == [6, 7, 8, 9, 10, 11]  # 6 for 2 positives
    # clamp: at most A - 1 negatives; none for an image without positives
    labels[1] = 0
    labels[1, 0] = 1
    neg = ohem_negatives(logits, labels, neg_pos_ratio=100)
    assert int(neg[1].sum()) == 11 and int(neg[0].sum()) == 10  # 12 - 1 positive - 1 neutral
    assert int(ohem_negatives(logits, torch.zeros_like(labels)).sum()) == 0
    assert int(ohem_negatives(logits, torch.zeros_like(labels), min_num_negatives=4).sum()) == 8
    # the loss sums the softmax CE of positives and negatives
    neg = ohem_negatives(logits, labels, 3)
    sel = (labels > 0) | neg
    expected = torch.nn.functional.cross_entropy(logits[sel], labels[sel], reduction="sum")
    torch.testing.assert_close(ohem_cross_entropy(logits, labels, neg), expected)


def test_lincomb_mask_loss_hand_computed():
    """Logit 0 everywhere (p = 0.5): inside the cropped window each pixel costs log 2; a
    ground-truth pixel outside the window costs 100 (the official BCE clamp of log 0); the sum is
    divided by the box's area in prototype pixels."""
    protos = torch.zeros(2, 6, 6)
    coeffs = torch.zeros(1, 2)
    box = torch.tensor([[1.0, 1.0, 3.0, 3.0]])  # area 4; window rows/cols 1, 2 without padding
    target = torch.zeros(1, 6, 6)
    target[0, 1, 1:3] = 1  # 2 foreground pixels in the box
    target[0, 5, 5] = 1  # 1 foreground pixel outside
    per_mask, probs = lincomb_mask_loss(protos, coeffs, target, box, crop_padding=0)
    torch.testing.assert_close(per_mask, torch.tensor([(4 * math.log(2) + 100) / 4]))
    assert probs.sum() == 4 * 0.5


def test_mask_loss_normalisation_subsampling_and_weight():
    """Through ``ProtoNet.loss``: a 16 px input, 8 px prototypes (scale 0.5); the box
    [4, 4, 12, 12] is [2, 2, 6, 6] in prototype pixels (area 16), the 1-px padded window covers
    rows / columns 1..6 (36 pixels, each log 2 at p = 0.5). Two positives on that box with
    ``masks_to_train=1``: one is used, its loss doubled; then x 6.125 / 2 positives."""
    head = ProtoNet({"p3": ShapeSpec(4, 8)}, num_prototypes=2, channels=4, masks_to_train=1)
    protos = torch.zeros(1, 2, 8, 8)
    coeffs = torch.zeros(1, 5, 2)
    labels = torch.tensor([[0, 1, 0, 1, -1]])
    assignment = YolactAssignment(labels, torch.zeros(1, 5, dtype=torch.int64), num_pos=2)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 4:12, 4:12] = True
    target = InstanceTargets(torch.tensor([[4.0, 4, 12, 12]]), torch.tensor([0]), (16, 16), masks=mask)
    losses, samples = head.loss(protos, coeffs, assignment, [target], (16, 16))
    per_mask = 36 * math.log(2) / 16
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(6.125 * per_mask * 2 / 2))
    assert samples.probs.shape == (1, 8, 8) and samples.targets[0, 2:6, 2:6].all()


# ---------------------------------------------------------------------- FPN and ResNet options
def test_fpn_yolact_options():
    from lightning_seg.models.backbones.resnet import ResNetBackbone
    from lightning_seg.models.necks.fpn import FPN

    backbone = ResNetBackbone(depth=18, out_features=("c3", "c4", "c5"))
    fpn = FPN(backbone.output_shape(), out_channels=16, in_features=("c3", "c4", "c5"),
              extra_levels="conv", num_extra_levels=2, upsample_mode="bilinear",
              output_relu=True, init="xavier_uniform")
    assert fpn.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    out = fpn(backbone(torch.rand(1, 3, 550, 550)))
    assert [tuple(x.shape[-2:]) for x in out.values()] == [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    assert all((out[p] >= 0).all() for p in ("p3", "p4", "p5"))  # ReLU after the 3x3 convs
    assert (out["p7"] < 0).any()  # no ReLU after the extra convs
    torch.testing.assert_close(out["p7"], fpn.extra_convs[1](fpn.extra_convs[0](out["p5"])))
    plain = FPN(backbone.output_shape(), out_channels=16, in_features=("c3", "c4", "c5"),
                num_extra_levels=2)
    assert list(plain(backbone(torch.rand(1, 3, 64, 64)))) == ["p3", "p4", "p5", "p6", "p7"]
    with pytest.raises(ValueError, match="extra_levels"):
        FPN(backbone.output_shape(), in_features=("c3", "c4", "c5"), extra_levels="pool")


def test_resnet_deformable_stages():
    import torchvision

    from lightning_seg.layers.deform import DeformConv2d
    from lightning_seg.models.backbones.resnet import ResNetBackbone

    r101 = ResNetBackbone(depth=101, deform_stages=("c3", "c4", "c5"), deform_interval=3)
    deformable = {name: [i for i, b in enumerate(getattr(r101, name)) if isinstance(b.conv2, DeformConv2d)]
                  for name in ("layer1", "layer2", "layer3", "layer4")}
    assert deformable == {"layer1": [], "layer2": [0, 3], "layer3": list(range(0, 23, 3)), "layer4": [0]}
    # ImageNet weights load into the deformable convs' weights (offsets start at zero)
    tv = torchvision.models.resnet18().state_dict()
    r18 = ResNetBackbone(depth=18, deform_stages=("c4",))
    r18.load_torchvision_state_dict(tv)
    assert torch.equal(r18.layer3[0].conv2.weight, tv["layer3.0.conv2.weight"])
    # zero offsets and a modulation of sigmoid(0) = 1/2: half the plain convolution
    plain = ResNetBackbone(depth=18)
    plain.load_torchvision_state_dict(tv)
    x = torch.rand(1, 128, 9, 11)
    conv = plain.layer3[0].conv2
    torch.testing.assert_close(r18.layer3[0].conv2(torch.relu(x[:, :128]).repeat(1, 2, 1, 1)),
                               0.5 * conv(torch.relu(x[:, :128]).repeat(1, 2, 1, 1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="deform_stages"):
        ResNetBackbone(depth=18, out_features=("c2", "c3"), deform_stages=("c5",))


# ---------------------------------------------------------------------- official weights
def official_state_dict(depth: int = 50, num_classes: int = 80, plus: bool = False, k: int = 32,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official key names and shapes (dbolya/yolact ``yolact.py``):
    ``backbone.layers.{i}`` Bottleneck stages (DCNv2 ``conv2`` with ``conv_offset_mask`` in
    YOLACT++), ``fpn.lat_layers`` / ``fpn.pred_layers`` stored coarsest first,
    ``fpn.downsample_layers``, ``proto_net`` (a ``make_net`` Sequential: convs at 0, 2, 4, 8,
    10), one shared ``prediction_layers.0`` with ``upfeature.0``, ``bbox_layer``, ``conf_layer``
    (81 x A), ``mask_layer``, ``semantic_seg_conv`` and YOLACT++'s ``maskiou_net.maskiou_net``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(name, *shape):
        sd[name] = torch.randn(*shape, generator=g)

    def bn(prefix, c):
        for p in ("weight", "bias", "running_mean"):
            put(f"{prefix}.{p}", c)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    dcn_interval = 3 if depth == 101 else 1
    put("backbone.conv1.weight", 64, 3, 7, 7)
    bn("backbone.bn1", 64)
    inplanes = 64
    for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for j in range(n):
            p = f"backbone.layers.{i}.{j}"
            c_in = inplanes if j == 0 else planes * 4
            put(f"{p}.conv1.weight", planes, c_in, 1, 1)
            bn(f"{p}.bn1", planes)
            put(f"{p}.conv2.weight", planes, planes, 3, 3)
            if plus and i > 0 and j % dcn_interval == 0:
                put(f"{p}.conv2.bias", planes)
                put(f"{p}.conv2.conv_offset_mask.weight", 27, planes, 3, 3)
                put(f"{p}.conv2.conv_offset_mask.bias", 27)
            bn(f"{p}.bn2", planes)
            put(f"{p}.conv3.weight", planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                put(f"{p}.downsample.0.weight", planes * 4, c_in, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    for r, c in enumerate((2048, 1024, 512)):  # coarsest first
        put(f"fpn.lat_layers.{r}.weight", 256, c, 1, 1)
        put(f"fpn.lat_layers.{r}.bias", 256)
        put(f"fpn.pred_layers.{r}.weight", 256, 256, 3, 3)
        put(f"fpn.pred_layers.{r}.bias", 256)
    for i in range(2):
        put(f"fpn.downsample_layers.{i}.weight", 256, 256, 3, 3)
        put(f"fpn.downsample_layers.{i}.bias", 256)
    for n in (0, 2, 4, 8):
        put(f"proto_net.{n}.weight", 256, 256, 3, 3)
        put(f"proto_net.{n}.bias", 256)
    put("proto_net.10.weight", k, 256, 1, 1)
    put("proto_net.10.bias", k)
    a = 9 if plus else 3
    put("prediction_layers.0.upfeature.0.weight", 256, 256, 3, 3)
    put("prediction_layers.0.upfeature.0.bias", 256)
    for name, c in (("bbox_layer", 4), ("conf_layer", num_classes + 1), ("mask_layer", k)):
        put(f"prediction_layers.0.{name}.weight", a * c, 256, 3, 3)
        put(f"prediction_layers.0.{name}.bias", a * c)
    put("semantic_seg_conv.weight", num_classes, 256, 1, 1)
    put("semantic_seg_conv.bias", num_classes)
    if plus:
        c_in = 1
        for n, c in enumerate((8, 16, 32, 64, 128)):
            put(f"maskiou_net.maskiou_net.{2 * n}.weight", c, c_in, 3, 3)
            put(f"maskiou_net.maskiou_net.{2 * n}.bias", c)
            c_in = c
        put("maskiou_net.maskiou_net.10.weight", num_classes, 128, 1, 1)
        put("maskiou_net.maskiou_net.10.bias", num_classes)
    return sd


@pytest.mark.parametrize(("depth", "plus"), [(50, False), (101, True)])
def test_load_official_weights(depth, plus):
    official = official_state_dict(depth, plus=plus)
    model = yolact_resnet_fpn(80, depth=depth, plus=plus, weights_backbone=None, frozen_bn=False)
    missing, unexpected = load_official_yolact(model, official)
    assert missing == [] and unexpected == []
    state = model.state_dict()
    assert torch.equal(state["neck.lateral_convs.c5.weight"], official["fpn.lat_layers.0.weight"])
    assert torch.equal(state["neck.output_convs.c3.bias"], official["fpn.pred_layers.2.bias"])
    assert torch.equal(state["backbone.layer3.1.conv1.weight"], official["backbone.layers.2.1.conv1.weight"])
    assert torch.equal(state["head.class_layer.weight"], official["prediction_layers.0.conf_layer.weight"])
    assert torch.equal(state["protonet.layers.10.weight"], official["proto_net.10.weight"])
    if plus:
        assert torch.equal(state["backbone.layer2.3.conv2.offset.weight"],
                           official["backbone.layers.1.3.conv2.conv_offset_mask.weight"])
        assert torch.equal(state["mask_iou_head.layers.10.bias"], official["maskiou_net.maskiou_net.10.bias"])


def test_load_official_weights_subset_of_classes_and_errors(tmp_path):
    official = official_state_dict(50)
    keep = [1, 3, 18]  # person, car, dog in the official order
    model = yolact_resnet_fpn(3, depth=50, frozen_bn=False)
    path = tmp_path / "yolact_resnet50_54_800000.pth"
    torch.save(official, path)
    load_official_yolact(model, path, keep_classes=keep)
    w = model.state_dict()["head.class_layer.weight"]  # [A * 4, 256, 3, 3]
    src = official["prediction_layers.0.conf_layer.weight"]  # [A * 81, ...]
    for a in range(3):
        for new, old in enumerate([0, *keep]):
            assert torch.equal(w[a * 4 + new], src[a * 81 + old])
    assert torch.equal(model.semantic_head.conv.bias, official["semantic_seg_conv.bias"][[0, 2, 17]])
    with pytest.raises(ValueError, match="shapes differ"):
        load_official_yolact(yolact_resnet_fpn(80, depth=50, num_prototypes=16), official)
    with pytest.raises(ValueError, match="shapes differ"):  # YOLACT++ has 9 anchors per location
        load_official_yolact(yolact_resnet_fpn(80, depth=50, plus=True), official)
    without_semantic = {k: v for k, v in official.items() if not k.startswith("semantic_seg_conv")}
    with pytest.raises(KeyError, match="missing"):
        load_official_yolact(yolact_resnet_fpn(80, depth=50), without_semantic)
    mapped = map_official_yolact_state_dict({"something.else": torch.zeros(1)})
    assert list(mapped) == ["something.else"]


def test_official_fpn_order_computes_the_official_pyramid():
    """The official FPN stores its convs coarsest first: with the mapped weights our P5 is
    ``relu(pred_layers[0](lat_layers[0](C5)))``, P4 adds the bilinearly upsampled P5 path to
    ``lat_layers[1](C4)``, and P6 = ``downsample_layers[0](P5)`` (no ReLU)."""
    import torch.nn.functional as F

    official = official_state_dict(50, seed=1)
    model = yolact_resnet_fpn(80, depth=50, frozen_bn=False).eval()
    load_official_yolact(model, official)
    c = {"c3": torch.rand(1, 512, 9, 9), "c4": torch.rand(1, 1024, 5, 5), "c5": torch.rand(1, 2048, 3, 3)}
    with torch.no_grad():
        out = model.neck(c)
        w = {k: v for k, v in official.items() if k.startswith("fpn.")}
        lat5 = F.conv2d(c["c5"], w["fpn.lat_layers.0.weight"], w["fpn.lat_layers.0.bias"])
        p5 = F.relu(F.conv2d(lat5, w["fpn.pred_layers.0.weight"], w["fpn.pred_layers.0.bias"], padding=1))
        lat4 = F.conv2d(c["c4"], w["fpn.lat_layers.1.weight"], w["fpn.lat_layers.1.bias"]) + F.interpolate(
            lat5, size=(5, 5), mode="bilinear", align_corners=False)
        p4 = F.relu(F.conv2d(lat4, w["fpn.pred_layers.1.weight"], w["fpn.pred_layers.1.bias"], padding=1))
        p6 = F.conv2d(p5, w["fpn.downsample_layers.0.weight"], w["fpn.downsample_layers.0.bias"],
                      stride=2, padding=1)
    torch.testing.assert_close(out["p5"], p5)
    torch.testing.assert_close(out["p4"], p4)
    torch.testing.assert_close(out["p6"], p6)


def test_builder_variants():
    m = tiny_yolact(input_size=700)
    assert m.head.anchors.scales == yolact_anchor_scales(700)
    assert m.protonet.masks_to_train == 300
    assert tiny_yolact().protonet.masks_to_train == 100
    with pytest.raises(ValueError, match="num_prototypes"):
        Yolact(m.backbone, m.neck, partial(ProtoNet, num_prototypes=8), m.head)


# ---------------------------------------------------------------------- YAML, CLI, checkpoints
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("fragment", "builder"),
                         [("yolact_r50", "yolact_r50"), ("yolact_plus_r101", "yolact_plus_r101")])
def test_yolact_yaml_equals_builder(fragment, builder, monkeypatch, tmp_path):
    """The model fragment (parts by class_path, num_classes from the data) is the builder's
    network: same modules, parameter names and shapes, same predictions with the same weights."""
    import torchvision

    from lightning_seg.cli import main
    from lightning_seg.models import weights
    from lightning_seg.models.detectors import yolact as yolact_module
    from lightning_seg.structures import Batch

    monkeypatch.setattr(weights, "download_state_dict",
                        lambda name, member: torchvision.models.get_model(name, weights=None).state_dict())
    monkeypatch.chdir(REPO)
    data = {"data": {"class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule",
                     "init_args": {"task": "instance", "root": str(tmp_path / "world"), "num_train": 2,
                                   "num_val": 1, "height": 64, "width": 64, "num_workers": 0}}}
    import yaml

    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump(data))
    cli = main(["--config", str(REPO / "experiments" / "models" / f"{fragment}.yaml"), "--config", str(cfg)],
               run=False)
    yaml_net = cli.model.model.eval()
    built = getattr(yolact_module, builder)(4, weights_backbone="IMAGENET1K_V1").eval()
    assert repr(built) == repr(yaml_net)
    assert {k: v.shape for k, v in yaml_net.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    if fragment == "yolact_r50":
        built.load_state_dict(yaml_net.state_dict())
        batch = Batch.from_images([torch.rand(3, 96, 96)])
        with torch.no_grad():
            a, b = yaml_net(batch)[0], built(batch)[0]
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)


TINY_YOLACT_YAML = {
    "class_path": "lightning_seg.models.detectors.Yolact",
    "init_args": {
        "backbone": {"class_path": "lightning_seg.models.backbones.ResNetBackbone",
                     "init_args": {"depth": 18, "out_features": ["c3", "c4", "c5"], "num_blocks": [1, 1, 1, 1]}},
        "neck": {"class_path": "lightning_seg.models.necks.FPN",
                 "init_args": {"out_channels": 32, "in_features": ["c3", "c4", "c5"], "extra_levels": "conv",
                               "num_extra_levels": 2, "upsample_mode": "bilinear", "output_relu": True}},
        "protonet": {"class_path": "lightning_seg.models.heads.ProtoNet",
                     "init_args": {"num_prototypes": 8, "channels": 32}},
        "head": {"class_path": "lightning_seg.models.heads.YolactHead",
                 "init_args": {"channels": 32, "anchors": {
                     "class_path": "lightning_seg.models.heads.YolactAnchors",
                     "init_args": {"scales": [[8], [16], [32], [64], [128]]}}}},
        "semantic_head": {"class_path": "lightning_seg.models.heads.YolactSemanticHead"},
        "mask_iou_head": {"class_path": "lightning_seg.models.heads.MaskIoUHead"},
    },
}


def test_fit_through_the_cli_and_load_from_checkpoint(tmp_path, monkeypatch):
    """The instance task trains YOLACT++ unchanged (every term logged, COCO AP in validation) and
    ``load_from_checkpoint`` rebuilds the same network."""
    import yaml

    from lightning_seg.cli import main
    from lightning_seg.structures import Batch
    from lightning_seg.tasks import InstanceSegmentationTask

    cfg = {
        "model": {"class_path": "lightning_seg.tasks.InstanceSegmentationTask",
                  "init_args": {"model": TINY_YOLACT_YAML,
                                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.001}}}},
        "data": {"class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule",
                 "init_args": {"task": "instance", "root": str(tmp_path / "world"), "num_train": 4, "num_val": 2,
                               "height": 64, "width": 96, "batch_size": 2, "num_workers": 0,
                               "persistent_workers": False, "pin_memory": False}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "num_sanity_val_steps": 0,
                    "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs"), "name": "yolact"}}},
    }
    path = tmp_path / "yolact.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(REPO)
    cli = main(["fit", "--config", str(path)])
    logged = cli.trainer.logged_metrics
    for term in ("loss_cls", "loss_box", "loss_mask", "loss_semantic", "loss_mask_iou"):
        assert any(k.startswith(f"train/{term}") for k in logged), sorted(logged)
    assert "val/segm/AP" in logged
    ckpt = tmp_path / "logs" / "yolact" / "version_0" / "checkpoints" / "last.ckpt"
    task = InstanceSegmentationTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert isinstance(task.model, Yolact) and task.model.num_classes == 4
    batch = Batch.from_images([torch.rand(3, 64, 96)])
    original = cli.model.model.eval()
    with torch.no_grad():
        a, b = original(batch)[0], task.model.eval()(batch)[0]
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)


def test_official_schedule_and_its_batch_scaling():
    """The schedule fragment's numbers give the official LR (train.py: warm-up from 1e-4, x0.1 at
    each step), and scaling to another batch follows the official --autoscale."""
    from lightning_seg.optim import WarmupMultiStepLR, scale_schedule_to_batch

    fragment = yaml_load(REPO / "experiments" / "schedules" / "yolact_800k.yaml")["model"]["init_args"]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], **fragment["optimizer"]["init_args"])
    sched = WarmupMultiStepLR(opt, **fragment["scheduler"]["init_args"])
    official = {0: 1e-4, 250: (1e-3 - 1e-4) * 0.5 + 1e-4, 500: 1e-3, 279999: 1e-3, 280000: 1e-4,
                600000: 1e-5, 749999: 1e-6, 750000: 1e-7}
    for step, lr in official.items():
        sched.last_epoch = step
        assert math.isclose(sched.get_lr()[0], lr, rel_tol=1e-9), (step, sched.get_lr()[0], lr)
    assert scale_schedule_to_batch(16) == {"lr": 0.002, "milestones": [140000, 300000, 350000, 375000],
                                           "max_steps": 400000, "warmup_factor": 0.05}
    half = scale_schedule_to_batch(4)
    assert half["milestones"][0] == 560000 and half["max_steps"] == 1600000 and half["warmup_factor"] == 0.2


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


# ---------------------------------------------------------------------- real COCO images
def squashed_coco_mini(root: Path, size: int):
    """The 6 coco_mini images squashed to ``size x size`` (as YOLACT's pipeline does), with
    their targets (masks resized, boxes from the masks)."""
    from test_maskrcnn import load_coco_mini

    from lightning_seg.data.transforms import boxes_from_masks

    batch, sizes, targets, _, info = load_coco_mini(root, short_side=size)
    images, out = [], []
    for i, ((h, w), t) in enumerate(zip(sizes, targets)):
        images.append(torch.nn.functional.interpolate(batch[i : i + 1, :, :h, :w], size=(size, size),
                                                      mode="bilinear", align_corners=False, antialias=True)[0])
        masks = torch.zeros(0, size, size, dtype=torch.bool)
        if len(t):
            masks = torch.nn.functional.interpolate(t.masks[None].float(), size=(size, size), mode="bilinear",
                                                    align_corners=False)[0] >= 0.5
        keep = masks.flatten(1).any(dim=1)
        out.append(InstanceTargets(boxes_from_masks(masks[keep]), t.labels[keep], (size, size),
                                   masks=masks[keep], iscrowd=t.iscrowd[keep]))
    return torch.stack(images), [(size, size)] * len(images), out, info


def _ignore_small(targets, min_side: float):
    """Targets with the instances whose box side is below ``min_side`` marked crowd (COCO AP
    ignores crowd ground truth: detections matching them count neither way)."""
    out = []
    for t in targets:
        wh = t.boxes[:, 2:] - t.boxes[:, :2]
        out.append(InstanceTargets(t.boxes, t.labels, t.image_size, masks=t.masks,
                                   iscrowd=t.iscrowd | (wh < min_side).any(dim=1)))
    return out


COCO_MINI_SIZE = 384
COCO_MINI_MIN_SIDE = 8  # 2 prototype pixels at stride 4


@pytest.mark.slow
def test_overfit_coco_mini_mask_ap50(shared_data):
    """Memorise the 6 real COCO images squashed to 384 x 384: mask AP50 >= 0.9 on them.

    YOLACT's masks live on the prototype grid (stride 4): half of these 35 instances are bottles
    of 4-6 x 8-24 px at 384 (1-1.5 prototype pixels wide), which no crop of 96 x 96 prototypes
    resolves (the paper: small objects are YOLACT's weak point), so the evaluation ignores
    instances with a box side under 8 px (2 prototype pixels; marked crowd, 19 of 35 stay); the
    failure message also gives AP50 on all instances. Training uses every instance (those under
    4 px are dropped by the network, as the official code does).

    Measured (R18, 64-channel pyramid, AdamW 5e-4, gradient norm clipped at 5, seed 0, 2 threads,
    2026-11-27): AP50 on instances >= 8 px 0.848 at step 120, 0.88 at 240, 0.905 at 400 (all
    instances: 0.786), about 4 minutes with startup: ``slow``. The tiny network (1 block per
    stage, 32 channels) with AdamW 1e-3 plateaued at 0.6-0.7 and diverged once (step 260).
    """
    from test_maskrcnn import mask_ap50

    images, sizes, targets, info = squashed_coco_mini(shared_data, COCO_MINI_SIZE)
    evaluated = _ignore_small(targets, COCO_MINI_MIN_SIDE)
    torch.manual_seed(0)
    model = yolact_resnet_fpn(info.num_classes, depth=18, fpn_channels=64, input_size=COCO_MINI_SIZE)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    history = []
    for step in range(600):
        idx = [(3 * step + j) % len(sizes) for j in range(3)]
        model.train()
        losses = model(batch_of(images[idx], [sizes[i] for i in idx], [targets[i] for i in idx]))
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if (step + 1) % 40 == 0 and step + 1 >= 120:
            model.eval()
            with torch.no_grad():
                preds = model(batch_of(images, sizes))
            history.append((step + 1, round(mask_ap50(preds, evaluated), 3), round(mask_ap50(preds, targets), 3)))
            if history[-1][1] >= 0.9:
                break
    assert history[-1][1] >= 0.9, f"(step, AP50 on instances >= 8 px, AP50 on all) by step: {history}"
