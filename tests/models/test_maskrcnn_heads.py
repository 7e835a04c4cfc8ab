"""Mask R-CNN parts against torchvision: multi-level RoIAlign, box head, mask head, pasting."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from lightning_seg.models.heads.box_head import BoxHeadOutput, BoxRoIHead
from lightning_seg.models.heads.mask_head import MaskHeadOutput, MaskRoIHead
from lightning_seg.models.postprocess.masks import paste_masks_in_image
from lightning_seg.ops.roi_align import map_boxes_to_levels, multilevel_roi_align
from lightning_seg.structures import InstanceTargets, ShapeSpec

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
IMAGE_SIZES = [(150, 221), (203, 160)]  # (h, w), padded batch 224 x 224


def shapes(channels: int) -> dict[str, ShapeSpec]:
    return {name: ShapeSpec(channels, s) for name, s in STRIDES.items()}


def _features(channels: int = 8) -> dict[str, torch.Tensor]:
    return {name: torch.randn(2, channels, 224 // s, 224 // s) for name, s in STRIDES.items()}


def _random_boxes(n: int, h: int, w: int, min_size: float = 2.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * torch.tensor([w * 0.8, h * 0.8])
    wh = min_size + torch.rand(n, 2) * torch.tensor([w * 0.6, h * 0.6])
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:, 2] = boxes[:, 2].clamp(max=w)
    boxes[:, 3] = boxes[:, 3].clamp(max=h)
    return boxes


def _tv_features(features: dict[str, torch.Tensor]) -> OrderedDict:
    names = ["0", "1", "2", "3", "pool"]
    return OrderedDict((n, features[k]) for n, k in zip(names, ["p2", "p3", "p4", "p5", "p6"]))


# ------------------------------------------------------------------ RoIAlign
def test_level_mapping_follows_fpn_equation():
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 448, 448], [0, 0, 8, 8],
         [0, 0, 2000, 2000]],
        dtype=torch.float32,
    )
    levels = map_boxes_to_levels(boxes, 2, 5)
    assert levels.tolist() == [4, 3, 2, 5, 2, 5]


def test_multilevel_roi_align_equals_torchvision_pooler():
    features = _features()
    boxes = [_random_boxes(40, h, w) for h, w in IMAGE_SIZES]
    boxes[0] = torch.cat([boxes[0], torch.tensor([[0.0, 0.0, 220.0, 150.0]])])  # a P4/P5 box
    tv = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    expected = tv(_tv_features(features), boxes, IMAGE_SIZES)
    ours = multilevel_roi_align(
        [features[k] for k in ("p2", "p3", "p4", "p5")], (4, 8, 16, 32), boxes, 7, 2, aligned=False
    )
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_multilevel_roi_align_empty_and_gradient():
    features = {k: v.requires_grad_() for k, v in _features().items()}
    out = multilevel_roi_align(
        [features[k] for k in ("p2", "p3")], (4, 8), [torch.zeros(0, 4), torch.zeros(0, 4)], 7
    )
    assert out.shape == (0, 8, 7, 7)
    boxes = [_random_boxes(5, 100, 100), _random_boxes(3, 100, 100)]
    out = multilevel_roi_align([features[k] for k in ("p2", "p3")], (4, 8), boxes, 7)
    out.sum().backward()
    assert features["p2"].grad is not None and torch.isfinite(features["p2"].grad).all()


# ------------------------------------------------------------------ box head
def _box_heads(num_classes: int = 3, channels: int = 8, **kwargs):
    ours = BoxRoIHead(shapes(channels), num_classes, aligned=False, fc_dim=32, **kwargs)
    tv = tv_roi_heads.RoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        TwoMLPHead(channels * 49, 32),
        FastRCNNPredictor(32, num_classes + 1),
        0.5, 0.5, 512, 0.25, None,
        kwargs.get("score_thresh", 0.05), 0.5, 100,
    )
    tv.box_head.load_state_dict({"fc6.weight": ours.fc6.weight, "fc6.bias": ours.fc6.bias,
                                 "fc7.weight": ours.fc7.weight, "fc7.bias": ours.fc7.bias})
    tv.box_predictor.load_state_dict({
        "cls_score.weight": ours.cls_score.weight, "cls_score.bias": ours.cls_score.bias,
        "bbox_pred.weight": ours.box_pred.weight, "bbox_pred.bias": ours.box_pred.bias,
    })
    return ours, tv


def _targets(num_classes: int = 3) -> list[InstanceTargets]:
    out = []
    for (h, w), n in zip(IMAGE_SIZES, (4, 0)):
        boxes = _random_boxes(n, h, w, min_size=10)
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1 + 1 : y2, x1 : (x1 + x2) // 2 + 1] = True
        out.append(
            InstanceTargets(boxes, torch.randint(0, num_classes, (n,)), (h, w), masks=masks)
        )
    return out


def test_box_head_training_equals_torchvision():
    ours, tv = _box_heads()
    ours.train(), tv.train()
    features = _features()
    proposals = [_random_boxes(300, h, w) for h, w in IMAGE_SIZES]
    targets = _targets()
    # proposals that overlap the ground truth so that the positives are not only the GT boxes
    proposals[0] = torch.cat([proposals[0], targets[0].boxes + torch.randn(4, 4)])
    torch.manual_seed(1)
    raw = ours(features, proposals, IMAGE_SIZES, targets)
    losses = ours.loss(raw)
    torch.manual_seed(1)
    tv_targets = [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets]
    rois, matched, labels, reg = tv.select_training_samples(list(proposals), tv_targets)
    for a, b in zip(raw.rois, rois):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(raw.roi_labels, labels):
        assert torch.equal(a, b)
    x = tv.box_head(tv.box_roi_pool(_tv_features(features), rois, IMAGE_SIZES))
    logits, deltas = tv.box_predictor(x)
    loss_cls, loss_box = tv_roi_heads.fastrcnn_loss(logits, deltas, labels, reg)
    torch.testing.assert_close(losses["loss_cls"], loss_cls)
    torch.testing.assert_close(losses["loss_box"], loss_box)
    assert int((raw.roi_labels[0] > 0).sum()) > 4  # more positives than the GT boxes alone
    # positives for the mask head: labels back to 0..K-1, indices into the image's targets
    pos_rois, pos_labels, pos_idx = raw.positives()
    assert torch.equal(pos_labels[0], targets[0].labels[pos_idx[0]])
    assert pos_rois[1].shape == (0, 4)


def test_box_head_inference_equals_torchvision():
    ours, tv = _box_heads(score_thresh=0.2)
    ours.eval(), tv.eval()
    features = _features()
    proposals = [_random_boxes(200, h, w) for h, w in IMAGE_SIZES]
    raw = ours(features, proposals, IMAGE_SIZES)
    preds = ours.predict(raw, IMAGE_SIZES)
    expected, _ = tv(_tv_features(features), proposals, IMAGE_SIZES)
    for p, e in zip(preds, expected):
        assert len(p) > 0
        torch.testing.assert_close(p.boxes, e["boxes"])
        torch.testing.assert_close(p.scores, e["scores"])
        assert torch.equal(p.labels, e["labels"] - 1)


def test_box_head_after_the_target_filter_ignores_crowd():
    from lightning_seg.models.assigners.target_filter import TargetFilter

    head = BoxRoIHead(shapes(8), 3, fc_dim=16)
    crowd_box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    target = InstanceTargets(
        crowd_box, torch.tensor([1]), (100, 100), iscrowd=torch.tensor([True])
    )
    proposals = [crowd_box.clone(), crowd_box + 1]
    targets = TargetFilter()([target, target])
    assert all(len(t) == 0 for t in targets)
    raw = head(_features(), proposals, [(100, 100), (100, 100)], targets)
    assert all((lab <= 0).all() for lab in raw.roi_labels)
    losses = head.loss(raw)
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() > 0


# ------------------------------------------------------------------ mask head
def test_mask_head_architecture_and_loss_equal_torchvision():
    torch.manual_seed(0)
    head = MaskRoIHead(shapes(8), 3, aligned=False, conv_dims=(16, 16, 16, 16),
                       target_aligned=False)
    features = _features()
    targets = _targets()
    rois = [targets[0].boxes + torch.rand(4, 4), torch.zeros(0, 4)]
    labels = [targets[0].labels, torch.zeros(0, dtype=torch.int64)]
    idxs = [torch.arange(4), torch.zeros(0, dtype=torch.int64)]
    raw = head(features, rois, labels, idxs)
    assert raw.mask_logits.shape == (4, 3, 28, 28)
    loss = head.loss(raw, targets)["loss_mask"]
    # torchvision's loss with a background channel in front (its labels are 1..K)
    logits_tv = torch.cat([torch.zeros_like(raw.mask_logits[:, :1]), raw.mask_logits], dim=1)
    expected = tv_roi_heads.maskrcnn_loss(
        logits_tv, rois, [t.masks for t in targets], [t.labels + 1 for t in targets], idxs
    )
    torch.testing.assert_close(loss, expected)


def test_mask_loss_uses_only_the_gt_class_channel():
    head = MaskRoIHead(shapes(8), 3, conv_dims=(8,))
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 4:48, 4:48] = True  # the RoI lies inside the mask -> targets all ones
    target = InstanceTargets(box, torch.tensor([1]), (64, 64), masks=mask)
    logits = torch.zeros(1, 3, 28, 28, requires_grad=True)
    with torch.no_grad():
        logits[:, 1] = 5.0  # GT class: confident and right
        logits[:, 0] = -50.0  # other classes: confidently "background", must not matter
        logits[:, 2] = -50.0
    raw = MaskHeadOutput(logits, [box], [torch.tensor([1])], [torch.tensor([0])])
    loss = head.loss(raw, [target])["loss_mask"]
    torch.testing.assert_close(loss, F.softplus(torch.tensor(-5.0)))
    loss.backward()
    assert logits.grad[:, [0, 2]].abs().sum() == 0 and logits.grad[:, 1].abs().sum() > 0


def test_mask_head_no_positives_loss_is_zero_and_connected():
    head = MaskRoIHead(shapes(8), 3, conv_dims=(8,))
    features = {k: v.requires_grad_() for k, v in _features().items()}
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    no_labels = [torch.zeros(0, dtype=torch.int64)] * 2
    raw = head(features, empty, no_labels, no_labels)
    loss = head.loss(raw, _targets())["loss_mask"]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert head.predict(raw)[0].shape == (0, 1, 28, 28)


def test_box_head_empty_loss_is_zero():
    head = BoxRoIHead(shapes(8), 3, fc_dim=16)
    raw = BoxHeadOutput(
        torch.zeros(0, 4, requires_grad=True), torch.zeros(0, 16, requires_grad=True),
        [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)],
        [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)],
    )
    losses = head.loss(raw)
    assert losses["loss_cls"].item() == 0.0 and losses["loss_box"].item() == 0.0


# ------------------------------------------------------------------ pasting
@pytest.mark.parametrize("mask_size", [28, 14])
def test_paste_masks_equals_torchvision(mask_size):
    h, w = 61, 87
    masks = torch.rand(7, 1, mask_size, mask_size)
    boxes = torch.tensor(
        [[3.2, 4.7, 40.1, 30.9], [0.0, 0.0, 87.0, 61.0], [-5.0, -3.0, 20.0, 15.0],
         [70.5, 50.2, 95.0, 70.0], [10.0, 10.0, 10.4, 10.3], [30.0, 2.0, 31.0, 60.0],
         [0.0, 0.0, 0.5, 0.5]]
    )
    expected = tv_roi_heads.paste_masks_in_image(masks, boxes, (h, w), padding=1)[:, 0]
    ours = paste_masks_in_image(masks, boxes, (h, w), padding=1)
    assert ours.shape == (7, h, w)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    torch.testing.assert_close(paste_masks_in_image(masks[:, 0], boxes, (h, w)), expected)
    assert paste_masks_in_image(masks[:0], boxes[:0], (h, w)).shape == (0, h, w)
