"""UPSNet end to end with a tiny ResNet-18 FPN: loss terms, gradients of the panoptic loss,
empty images, the thing / stuff label mapping, eval outputs at the original size, the heuristic
head, and the semantic head."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.layers.deform import DeformConv2d
from lightning_seg.models.detectors.upsnet import UPSNet, upsnet_resnet_fpn
from lightning_seg.models.heads import (
    RPN,
    BoxRoIHead,
    HeuristicPanopticMerge,
    MaskRoIHead,
    UPSNetPanopticHead,
)
from lightning_seg.structures import Batch, InstanceTargets, PanopticPredictions

# Classes in dataset order, things and stuff interleaved (as Cityscapes' train ids are):
# 0 sky (stuff), 1 cat (thing), 2 ground (stuff), 3 dog (thing).
THINGS, STUFF = [1, 3], [0, 2]
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "loss_semantic",
             "loss_semantic_roi", "loss_panoptic"}


def tiny_upsnet(**kwargs) -> UPSNet:
    """ResNet-18, 32-channel FPN, small heads, 2-layer semantic head: a fraction of a second
    per step on a CPU."""
    levels = ("p2", "p3", "p4", "p5")
    options = {
        "depth": 18,
        "fpn_channels": 32,
        "semantic_layers": 2,
        "rpn": partial(RPN, anchor_sizes=(16, 32, 64, 128, 256), pre_nms_top_n_train=300,
                       post_nms_top_n_train=100, pre_nms_top_n_test=100, post_nms_top_n_test=50,
                       batch_size_per_image=64),
        "box_head": partial(BoxRoIHead, in_features=levels, fc_dim=64, batch_size_per_image=64),
        "mask_head": partial(MaskRoIHead, in_features=levels, conv_dims=(32, 32)),
    }
    options.update(kwargs)
    return upsnet_resnet_fpn(THINGS, STUFF, **options)


def panoptic_batch(sizes, counts, seed=0, orig_sizes=None) -> Batch:
    """Sky over ground, with cats (red squares) and dogs (blue bars) on top: instances with
    masks (crowd flags off) and the semantic map."""
    g = torch.Generator().manual_seed(seed)
    images, instances, semantic = [], [], []
    for (h, w), n in zip(sizes, counts):
        image = torch.zeros(3, h, w)
        sem = torch.full((h, w), 2, dtype=torch.int64)  # ground
        sem[: h // 2] = 0  # sky
        image[2, : h // 2], image[1, h // 2 :] = 0.8, 0.5
        boxes, labels, masks = [], [], []
        for _ in range(n):
            bw = int(torch.randint(12, max(13, w // 3), (1,), generator=g))
            bh = int(torch.randint(12, max(13, h // 3), (1,), generator=g))
            x1 = int(torch.randint(0, w - bw, (1,), generator=g))
            y1 = int(torch.randint(0, h - bh, (1,), generator=g))
            label = THINGS[int(torch.randint(0, 2, (1,), generator=g))]
            m = torch.zeros(h, w, dtype=torch.bool)
            m[y1 : y1 + bh, x1 : x1 + bw] = True
            for prev in masks:  # panoptic masks do not overlap
                m &= ~prev
            ys, xs = torch.nonzero(m, as_tuple=True)
            if ys.numel() == 0:
                continue
            image[:, m] = torch.tensor([1.0, 0.1, 0.1] if label == 1 else [0.1, 0.1, 1.0])[:, None]
            sem[m] = label
            boxes.append([float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1])
            labels.append(label)
            masks.append(m)
        instances.append(InstanceTargets(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.int64), (h, w),
            masks=torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool),
        ))
        images.append(image)
        semantic.append(sem)
    return Batch.from_images(images, instances, semantic, orig_sizes=orig_sizes)


def test_training_losses_unequal_sizes_and_an_empty_image():
    model = tiny_upsnet().train()
    losses = model(panoptic_batch([(97, 130), (121, 83), (64, 64)], [3, 2, 0]))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["loss_panoptic"] > 0 and losses["loss_semantic_roi"] > 0
    sum(losses.values()).backward()
    for module in (model.semantic_head, model.mask_head, model.box_head):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), type(module)


def test_panoptic_loss_reaches_the_mask_and_semantic_heads():
    model = tiny_upsnet().train()
    model(panoptic_batch([(96, 128)], [3]))["loss_panoptic"].backward()
    assert model.mask_head.mask_logits.weight.grad.abs().sum() > 0
    assert model.semantic_head.classifier.weight.grad.abs().sum() > 0
    assert model.box_head.cls_score.weight.grad is None  # not part of the fusion


def test_empty_targets_give_finite_losses_with_zero_instance_terms():
    model = tiny_upsnet().train()
    losses = model(panoptic_batch([(75, 101), (90, 64)], [0, 0]))
    assert set(losses) == LOSS_KEYS
    for key in ("loss_rpn_box", "loss_box", "loss_mask", "loss_semantic_roi"):
        assert losses[key].item() == 0.0, key
    assert losses["loss_panoptic"] > 0 and losses["loss_semantic"] > 0
    sum(losses.values()).backward()
    assert model.mask_head.mask_logits.weight.grad is not None  # graph stays connected


def test_thing_labels_are_mapped_and_stuff_instances_refused():
    model = tiny_upsnet()
    assert model.box_head.num_classes == 2 and model.mask_head.num_classes == 2
    assert model.semantic_head.num_classes == 4 and model.num_classes == 4
    batch = panoptic_batch([(64, 64)], [3])
    mapped = model.to_thing_labels(batch.instances[0])
    assert mapped.labels.tolist() == [THINGS.index(c) for c in batch.instances[0].labels.tolist()]
    bad = InstanceTargets(torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([2]), (64, 64),
                          masks=torch.ones(1, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels \[2\] are stuff classes"):
        model.train()(Batch.from_images([torch.rand(3, 64, 64)], [bad], [torch.zeros(64, 64).long()]))


def test_a_built_box_head_must_classify_the_things():
    shapes = tiny_upsnet().neck.output_shape()
    with pytest.raises(ValueError, match="num_classes=2"):
        tiny_upsnet(box_head=BoxRoIHead(shapes, num_classes=4))


def test_eval_outputs_at_the_original_size():
    model = tiny_upsnet(panoptic_head=UPSNetPanopticHead(THINGS, STUFF, score_thresh=0.0,
                                                          stuff_area_limit=0)).eval()
    sizes, orig = [(97, 130), (121, 83)], [(194, 65), (121, 83)]
    with torch.no_grad():
        preds = model(panoptic_batch(sizes, [2, 1], orig_sizes=orig))
    for pred, size in zip(preds, orig):
        assert isinstance(pred, PanopticPredictions) and pred.image_size == size
        assert len(pred) > 0
        present = set(pred.segment_map.unique().tolist()) - {0}
        assert present == set(pred.ids.tolist())
        for label, thing in zip(pred.labels.tolist(), pred.isthing.tolist()):
            assert label in (THINGS if thing else STUFF)


def test_padding_does_not_change_predictions():
    model = tiny_upsnet(panoptic_head=UPSNetPanopticHead(THINGS, STUFF, score_thresh=0.0,
                                                          stuff_area_limit=0)).eval()
    batch = panoptic_batch([(97, 130), (121, 83)], [2, 1])
    padded = Batch.from_images(F.pad(batch.images, (0, 30, 0, 17), value=0.7), image_sizes=batch.image_sizes)
    with torch.no_grad():
        for a, b in zip(model(batch), model(padded)):
            assert torch.equal(a.segment_map, b.segment_map) and torch.equal(a.labels, b.labels)


def test_heuristic_merge_head_trains_without_panoptic_loss_and_predicts():
    merge = HeuristicPanopticMerge(THINGS, STUFF, score_thresh=0.0, stuff_area_limit=0)
    model = tiny_upsnet(panoptic_head=merge).train()
    losses = model(panoptic_batch([(96, 96)], [2]))
    assert set(losses) == LOSS_KEYS - {"loss_panoptic"}
    model.eval()
    with torch.no_grad():
        pred = model(panoptic_batch([(96, 96)], [2]))[0]
    assert pred.image_size == (96, 96) and len(pred) > 0


def test_unknown_class_off_and_plain_convolutions():
    model = tiny_upsnet(box_keep_fraction=1.0, deformable=False).train()
    assert not model.panoptic_head.with_unknown
    assert not any(isinstance(m, DeformConv2d) for m in model.semantic_head.modules())
    assert any(isinstance(m, DeformConv2d) for m in tiny_upsnet().semantic_head.modules())
    losses = model(panoptic_batch([(96, 96)], [3]))
    assert torch.isfinite(losses["loss_panoptic"])
    assert model.panoptic_head.sample_instances(5).tolist() == [0, 1, 2, 3, 4]


def test_semantic_head_shapes_and_official_widths():
    model = tiny_upsnet(semantic_layers=3)
    convs = [m for m in model.semantic_head.subnet if isinstance(m, DeformConv2d)]
    # 3 layers: width -> width, width -> 128, 128 -> 128 (the official FCN subnet)
    assert [tuple(c.weight.shape[:2]) for c in convs] == [(32, 32), (128, 32), (128, 128)]
    assert not any(c.modulated for c in convs)  # DCNv1
    features = model.features(panoptic_batch([(64, 96)], [1]))
    raw = model.semantic_head(features)
    assert raw.logits.shape == (1, 4, 16, 24) and raw.features.shape == (1, 4 * 128, 16, 24)


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny_upsnet().train()
    batch = panoptic_batch([(61, 80), (72, 57)], [2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(batch)
    assert all(p.image_size == s for p, s in zip(preds, [(61, 80), (72, 57)]))


def test_roi_semantic_loss_pools_logits_as_the_classifier_on_pooled_features():
    """RoIAlign of the logits equals the 1x1 classifier on RoIAligned features (official order)
    for boxes inside the image, and the loss is the mean CE against the cut-out semantic map."""
    from torchvision.ops import roi_align

    from lightning_seg.models.heads.upsnet_semantic import roi_semantic_targets

    model = tiny_upsnet()
    batch = panoptic_batch([(64, 96)], [2])
    raw = model.semantic_head(model.features(batch))
    boxes = batch.instances[0].boxes
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    official = model.semantic_head.classifier(roi_align(raw.features, rois, 28, 0.25, 2, True))
    ours = roi_align(raw.logits, rois, 28, 0.25, 2, True)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-4)
    target = roi_semantic_targets(batch.semantic[0], boxes, 28, 255)
    expected = F.cross_entropy(official, target, ignore_index=255, reduction="none").mean()
    loss = model.semantic_head.roi_loss(raw, batch)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    # the targets: the box's own class fills a box that is the whole mask
    assert (target[0] == batch.instances[0].labels[0]).all()
