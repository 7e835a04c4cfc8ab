"""RefineMask as MaskRCNN parts: loss terms, empty targets, unequal sizes, batched inference,
bf16, the official loss and inference rules, ablation options, official weight keys, and
overfitting the 6 real COCO images."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from lightning_seg.models.detectors.refine_mask import (
    FASTER_BETTER_MASK_HEAD,
    load_official_refinemask,
    map_official_refinemask_state_dict,
    refinemask_resnet_fpn,
)
from lightning_seg.models.heads import BoxRoIHead, ForegroundSemanticHead, RefineMaskHead
from lightning_seg.models.heads.refine_mask import RefineMaskOutput, class_logits
from lightning_seg.models.heads.refine_mask_semantic import SemanticHeadOutput, foreground_target
from lightning_seg.ops.boundary import boundary_region, refine_with_boundary, upsample_region
from lightning_seg.structures import Batch, InstanceTargets, ShapeSpec

sys.path.insert(0, str(Path(__file__).parent))
from test_maskrcnn import (
    _blob_batch,
    batch_of,
    load_coco_mini,
    overfit_coco_mini,
    tiny_mask_rcnn,
)

STAGE_KEYS = {f"loss_mask_s{i}" for i in range(4)}
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_semantic"} | STAGE_KEYS
SHAPES = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 7)}


def tiny_refinemask(num_classes: int = 3, head_options: dict | None = None,
                    semantic_options: dict | None = None, **kwargs):
    """Tiny Mask R-CNN (ResNet-18, 64-channel FPN) with RefineMask's heads, narrow."""
    head = {"num_classes": num_classes, "conv_dim": 64, "semantic_channels": 32}
    head.update(head_options or {})
    semantic = {"conv_dim": 32}
    semantic.update(semantic_options or {})
    return tiny_mask_rcnn(
        num_classes,
        mask_head=partial(RefineMaskHead, **head),
        semantic_head=partial(ForegroundSemanticHead, **semantic),
        **kwargs,
    )


def test_training_losses_unequal_sizes_and_an_empty_image():
    model = tiny_refinemask().train()
    images, sizes, targets = _blob_batch([(97, 130), (121, 83), (64, 64)], [3, 2, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert all(losses[k] > 0 for k in STAGE_KEYS | {"loss_semantic"})
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad  # every RefineMask parameter takes part
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_empty_targets_give_zero_mask_losses_and_a_background_semantic_loss():
    model = tiny_refinemask().train()
    images, sizes, targets = _blob_batch([(75, 101), (90, 64)], [0, 0])
    losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS
    for key in STAGE_KEYS | {"loss_box", "loss_rpn_box"}:
        assert losses[key].item() == 0.0, key
    assert losses["loss_semantic"] > 0  # all pixels are background: still a target
    sum(losses.values()).backward()
    assert model.mask_head.final_logits.weight.grad is not None  # graph stays connected


def test_eval_outputs_masks_at_the_original_size():
    model = tiny_refinemask().eval()
    model.box_head.score_thresh = 0.0
    images, sizes, _ = _blob_batch([(97, 130), (121, 83)], [2, 1])
    orig = [(194, 65), (121, 83)]
    with torch.no_grad():
        preds = model(batch_of(images, sizes, orig_sizes=orig))
    for pred, size in zip(preds, orig):
        assert pred.image_size == size and 0 < len(pred) <= model.box_head.detections_per_img
        assert pred.masks.dtype == torch.bool and pred.masks.shape == (len(pred), *size)
    with torch.no_grad():
        raw = model.mask_head(model.features(batch_of(images, sizes)), [p.boxes[:3] for p in preds],
                              [p.labels[:3] for p in preds],
                              semantic=model.semantic_head(model.features(batch_of(images, sizes))))
    probs = model.mask_head.predict(raw)
    assert [p.shape for p in probs] == [(3, 1, 112, 112)] * 2
    assert all(((p >= 0) & (p <= 1)).all() for p in probs)


def _head_inputs(num_images=2, rois_per_image=(5, 3), seed=0, size=(48, 64)):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    features = {f"p{i}": torch.randn(num_images, 32, h * 4 // 2**i, w * 4 // 2**i, generator=g)
                for i in range(2, 7)}
    semantic = SemanticHeadOutput(torch.rand(num_images, 32, h, w, generator=g),
                                  torch.randn(num_images, 1, h, w, generator=g) * 3, 4)
    rois, labels = [], []
    for n in rois_per_image:
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 4 * 0.6, h * 4 * 0.6])
        wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 4 * 0.35, h * 4 * 0.35])
        rois.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(0, 3, (n,), generator=g))
    return features, semantic, rois, labels


def test_batched_inference_equals_one_image_at_a_time():
    """All RoIs of all images go through the head together (the official head cannot)."""
    head = RefineMaskHead(SHAPES, num_classes=3, conv_dim=64, semantic_channels=32).eval()
    features, semantic, rois, labels = _head_inputs()
    with torch.no_grad():
        together = head.predict(head(features, rois, labels, semantic=semantic))
        for i in range(2):
            feats_i = {k: v[i : i + 1] for k, v in features.items()}
            sem_i = SemanticHeadOutput(semantic.features[i : i + 1], semantic.logits[i : i + 1], 4)
            alone = head.predict(head(feats_i, [rois[i]], [labels[i]], semantic=sem_i))[0]
            torch.testing.assert_close(together[i], alone, rtol=1e-5, atol=1e-6)


def test_class_logits_equal_indexing_all_channels():
    conv = torch.nn.Conv2d(8, 5, 1)
    x = torch.randn(6, 8, 7, 7)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = conv(x)[torch.arange(6), labels][:, None]
    torch.testing.assert_close(class_logits(conv, x, labels), expected, rtol=1e-5, atol=1e-5)


def _fake_raw(head: RefineMaskHead, n: int, seed: int = 0) -> RefineMaskOutput:
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, 1, s, s, generator=g) * 3 for s in head.stage_sizes]
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]]).repeat(n, 1) + torch.arange(n)[:, None]
    return RefineMaskOutput(logits, [boxes], [torch.zeros(n, dtype=torch.int64)],
                            [torch.arange(n) % 2])


def _targets_for(n_gt: int = 2, size=(64, 64), seed=1) -> list[InstanceTargets]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n_gt, 1, 6, 6, generator=g)
    masks = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)[:, 0] > 0.5
    boxes = torch.tensor([[0.0, 0.0, size[1], size[0]]]).repeat(n_gt, 1)
    return [InstanceTargets(boxes, torch.zeros(n_gt, dtype=torch.int64), size, masks=masks)]


def test_loss_follows_the_official_rules():
    """Stages 0-1: mean BCE over the RoI; stages 2-3: BCE inside the union of the boundary
    regions (width 2) of the previous refined prediction and the previous target, upsampled,
    averaged over its pixels; weights 0.25 / 0.5 / 0.75 / 1."""
    head = RefineMaskHead(SHAPES, num_classes=1, conv_dim=64, semantic_channels=32)
    raw = _fake_raw(head, 3)
    targets = _targets_for()
    losses = head.loss(raw, targets)
    assert set(losses) == STAGE_KEYS and head.stage_loss_weights == [0.25, 0.5, 0.75, 1.0]
    stage_t = head.stage_targets(raw, targets)
    for s in range(2):
        ref = F.binary_cross_entropy_with_logits(raw.stage_logits[s][:, 0], stage_t[s])
        torch.testing.assert_close(losses[f"loss_mask_s{s}"], head.stage_loss_weights[s] * ref)
    previous = raw.stage_logits[1]
    for s in (2, 3):
        size = head.stage_sizes[s]
        region = boundary_region(previous[:, 0] >= 0, 2) | boundary_region(stage_t[s - 1], 2)
        region = upsample_region(region, (size, size))
        bce = F.binary_cross_entropy_with_logits(raw.stage_logits[s][:, 0], stage_t[s], reduction="none")
        ref = bce[region].sum() / region.sum()
        torch.testing.assert_close(losses[f"loss_mask_s{s}"], head.stage_loss_weights[s] * ref)
        assert 0 < region.float().mean() < 1
        previous = refine_with_boundary(previous, raw.stage_logits[s], 1)  # width 1, as inference
    # the targets are the instance masks cropped by aligned RoIAlign and binarised
    assert set(stage_t[3].unique().tolist()) <= {0.0, 1.0}


def test_boundary_loss_off_trains_every_stage_on_the_whole_roi():
    head = RefineMaskHead(SHAPES, num_classes=1, conv_dim=64, semantic_channels=32,
                          boundary_loss=False)
    raw, targets = _fake_raw(head, 3), _targets_for()
    losses, stage_t = head.loss(raw, targets), head.stage_targets(raw, targets)
    for s in range(4):
        ref = F.binary_cross_entropy_with_logits(raw.stage_logits[s][:, 0], stage_t[s])
        torch.testing.assert_close(losses[f"loss_mask_s{s}"], head.stage_loss_weights[s] * ref)


def test_inference_chains_the_boundary_overwrite_from_28():
    head = RefineMaskHead(SHAPES, num_classes=1, conv_dim=64, semantic_channels=32)
    raw = _fake_raw(head, 2)
    refined = head.refined_logits(raw)
    assert torch.equal(refined[0], raw.stage_logits[0]) and torch.equal(refined[1], raw.stage_logits[1])
    expected = refine_with_boundary(raw.stage_logits[1], raw.stage_logits[2], 1)
    expected = refine_with_boundary(expected, raw.stage_logits[3], 1)
    assert torch.equal(refined[3], expected)
    torch.testing.assert_close(head.predict(raw)[0], expected.sigmoid())
    head.boundary_overwrite = False
    assert torch.equal(head.predict(raw)[0], raw.stage_logits[3].sigmoid())


@pytest.mark.parametrize(
    ("options", "final"),
    [
        ({"fusion": "concat"}, 112),
        ({"fusion": "sum"}, 112),
        ({"semantic_features": False}, 112),
        ({"semantic_features": False, "semantic_mask": False}, 112),
        ({"stage_sizes": (14, 28)}, 28),  # weights (k + 1) / n: 0.5, 1
        ({"stage_sizes": (14, 28, 56, 112, 224), "stage_loss_weights": (0.25, 0.5, 0.75, 1, 1)},
         224),
        ({"boundary_width": 3, "inference_boundary_width": 2}, 112),
        (FASTER_BETTER_MASK_HEAD, 112),
    ],
    ids=["concat", "sum", "no-semantic-features", "no-semantic", "1-stage", "4-stages",
         "width-3", "faster-better"],
)
def test_ablation_options_train_and_predict(options, final):
    head = RefineMaskHead(SHAPES, num_classes=3, conv_dim=64, semantic_channels=32, **options)
    features, semantic, rois, labels = _head_inputs()
    if not options.get("semantic_mask", True):
        semantic = SemanticHeadOutput(semantic.features, None, 4)
    matched = [torch.zeros(len(r), dtype=torch.int64) for r in rois]
    raw = head(features, rois, labels, matched, semantic=semantic)
    assert [s.shape[-1] for s in raw.stage_logits] == list(head.stage_sizes)
    targets = [
        InstanceTargets(torch.tensor([[0.0, 0.0, 256.0, 192.0]]), torch.tensor([1]), (192, 256),
                        masks=torch.rand(1, 192, 256) > 0.5)
        for _ in rois
    ]
    losses = head.loss(raw, targets)
    assert len(losses) == len(head.stage_sizes) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())
    assert head.uses_semantic == (options.get("semantic_features", True) or options.get("semantic_mask", True))
    assert head.predict(raw)[0].shape[-1] == final


def test_semantic_target_is_the_padded_union_at_stride_4():
    masks = torch.zeros(2, 20, 24, dtype=torch.bool)
    masks[0, 0:8, 0:8] = True
    masks[1, 12:20, 16:24] = True
    crowd = torch.tensor([False, True])
    t = InstanceTargets(torch.tensor([[0.0, 0, 8, 8], [16, 12, 24, 20]]), torch.tensor([0, 1]),
                        (20, 24), masks=masks, iscrowd=crowd)
    batch = Batch.from_images([torch.rand(3, 20, 24), torch.rand(3, 12, 12)],
                              [t, InstanceTargets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                                  (12, 12), masks=torch.zeros(0, 12, 12, dtype=torch.bool))])
    target = foreground_target(batch, (8, 8), 4)  # a 32x32 padded canvas
    expected = torch.zeros(2, 8, 8)
    expected[0, 0:2, 0:2] = 1  # the crowd instance is left out, the padding is background
    assert torch.equal(target, expected)


def test_semantic_head_loss_and_faster_better_without_logits():
    head = ForegroundSemanticHead(SHAPES, conv_dim=16)
    features = {k: torch.randn(1, 32, 16, 16) for k in ("p2",)}
    raw = head(features)
    assert raw.features.shape == (1, 16, 16, 16) and raw.logits.shape == (1, 1, 16, 16)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 8:40, 8:40] = True
    batch = Batch.from_images([torch.rand(3, 64, 64)], [InstanceTargets(
        torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([0]), (64, 64), masks=masks)])
    loss = head.loss(raw, batch)["loss_semantic"]
    ref = F.binary_cross_entropy_with_logits(raw.logits[:, 0], foreground_target(batch, (16, 16), 4))
    torch.testing.assert_close(loss, ref)
    simple = ForegroundSemanticHead(SHAPES, conv_dim=16, with_logits=False)
    assert simple(features).logits is None and simple.loss(simple(features), batch) == {}


def test_missing_or_mismatched_semantic_head_is_a_clear_error():
    features, semantic, rois, labels = _head_inputs()
    head = RefineMaskHead(SHAPES, num_classes=3, conv_dim=64, semantic_channels=32)
    with pytest.raises(ValueError, match="semantic_head"):
        head(features, rois, labels)
    with pytest.raises(ValueError, match="semantic_channels"):
        head(features, rois, labels, semantic=SemanticHeadOutput(
            torch.rand(2, 16, 48, 64), semantic.logits, 4))
    with pytest.raises(ValueError, match="with_logits"):
        head(features, rois, labels, semantic=SemanticHeadOutput(semantic.features, None, 4))
    with pytest.raises(ValueError, match="twice"):
        RefineMaskHead(SHAPES, num_classes=3, stage_sizes=(14, 30))
    with pytest.raises(ValueError, match="one weight per stage"):
        RefineMaskHead(SHAPES, num_classes=3, stage_sizes=(14, 28, 56),
                       stage_loss_weights=(0.25, 0.5, 0.75, 1.0))


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny_refinemask().train()
    images, sizes, targets = _blob_batch([(61, 80), (72, 57)], [2, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch_of(images, sizes, targets))
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    model.box_head.score_thresh = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(batch_of(images, sizes))
    assert all(len(p) > 0 and p.masks.shape[1:] == s for p, s in zip(preds, sizes))


def test_box_head_loss_weights_and_l1():
    torch.manual_seed(0)
    features = {f"p{i}": torch.randn(1, 32, 64 // 2**i, 64 // 2**i) for i in range(2, 6)}
    target = [InstanceTargets(torch.tensor([[4.0, 4, 30, 40]]), torch.tensor([1]), (64, 64))]
    proposals = [torch.tensor([[2.0, 5, 28, 36], [10, 10, 50, 50], [0, 0, 20, 20]])]
    plain = BoxRoIHead(SHAPES, num_classes=3, box_loss_beta=0.0)
    weighted = BoxRoIHead(SHAPES, num_classes=3, box_loss_beta=0.0, loss_cls_weight=2.0,
                          loss_box_weight=3.0)
    weighted.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    a = plain.loss(plain(features, proposals, [(64, 64)], target))
    torch.manual_seed(1)
    raw = weighted(features, proposals, [(64, 64)], target)
    b = weighted.loss(raw)
    torch.testing.assert_close(b["loss_cls"], 2 * a["loss_cls"])
    torch.testing.assert_close(b["loss_box"], 3 * a["loss_box"])
    labels = torch.cat(raw.roi_labels)
    pos = labels > 0
    deltas = raw.box_deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
    l1 = (deltas - torch.cat(raw.box_targets)[pos]).abs().sum() / len(labels)  # mmdet's L1
    torch.testing.assert_close(b["loss_box"], 3 * l1)


# ---------------------------------------------------------------------- official weights
def official_state_dict(num_classes: int = 80, faster_better: bool = False) -> dict:
    """A state dict with the official checkpoints' names and shapes (mmdetection 2.3
    ``MaskRCNN`` + ``RefineRoIHead`` / ``SimpleRefineRoIHead``), written from the official
    module structure; random values."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k=1, bias=True):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g)
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=g)

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.{p}"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(0)

    conv("backbone.conv1", 64, 3, 7, bias=False)
    bn("backbone.bn1", 64)
    cin = 64
    for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}"
            conv(f"{p}.conv1", width, cin if b == 0 else 4 * width, 1, bias=False)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3, bias=False)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", 4 * width, width, 1, bias=False)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * width, cin, 1, bias=False)
                bn(f"{p}.downsample.1", 4 * width)
        cin = 4 * width
    for i, c in enumerate((256, 512, 1024, 2048)):
        conv(f"neck.lateral_convs.{i}.conv", 256, c)
        conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3)
    conv("rpn_head.rpn_conv", 256, 256, 3)
    conv("rpn_head.rpn_cls", 3, 256)
    conv("rpn_head.rpn_reg", 12, 256)
    for name, (cout, cin_) in {"shared_fcs.0": (1024, 256 * 49), "shared_fcs.1": (1024, 1024),
                               "fc_cls": (num_classes + 1, 1024), "fc_reg": (4 * num_classes, 1024)}.items():
        sd[f"roi_head.bbox_head.{name}.weight"] = torch.randn(cout, cin_, generator=g)
        sd[f"roi_head.bbox_head.{name}.bias"] = torch.randn(cout, generator=g)
    mh = "roi_head.mask_head"
    for i in range(2):
        conv(f"{mh}.instance_convs.{i}.conv", 256, 256, 3)
    for i in range(4):
        conv(f"{mh}.semantic_convs.{i}.conv", 256, 256, 3)
    classes = [num_classes] * 3 + [1 if faster_better else num_classes]
    channels = [256, 128, 64, 32]
    for s in range(3):
        c, out = channels[s], channels[s + 1]
        p = f"{mh}.stages.{s}"
        conv(f"{p}.semantic_transform_in", c, 256)
        guides = 1 if faster_better else 2
        if not faster_better:
            conv(f"{p}.semantic_transform_out", c, c)
            conv(f"{p}.instance_logits", classes[s], c)
        conv(f"{p}.fuse_conv.0", c, 2 * c + guides)
        for d in range(3):
            conv(f"{p}.fuse_conv.1.dilation_conv_{d + 1}.conv", c, c, 3)
        conv(f"{p}.fuse_conv.1.merge_conv.conv", c, c)
        conv(f"{p}.fuse_transform_out", out - guides, c)
    if faster_better:
        for s in range(4):
            conv(f"{mh}.stage_instance_logits.{s}", classes[s], channels[s])
    else:
        conv(f"{mh}.final_instance_logits", num_classes, 32)
        conv(f"{mh}.semantic_logits", 1, 256)
    return sd


@pytest.mark.parametrize("faster_better", [False, True], ids=["official", "faster-better"])
def test_official_checkpoint_keys_map_onto_the_builder(faster_better):
    official = official_state_dict(80, faster_better)
    model = refinemask_resnet_fpn(80, faster_better=faster_better)
    missing, unexpected = load_official_refinemask(model, {"state_dict": official, "meta": {}})
    assert not missing and not unexpected
    mapped = map_official_refinemask_state_dict(official)
    # the classifier's background row moves from last to first; regression gets background rows
    w = official["roi_head.bbox_head.fc_cls.weight"]
    assert torch.equal(model.box_head.cls_score.weight[0], w[-1])
    assert torch.equal(model.box_head.cls_score.weight[1:], w[:-1])
    reg = official["roi_head.bbox_head.fc_reg.weight"]
    assert torch.equal(model.box_head.box_pred.weight[4:], reg)
    assert not model.box_head.box_pred.weight[:4].any()
    # a few direct renames, values included
    pairs = {
        "neck.fpn_convs.2.conv.weight": "neck.output_convs.c4.weight",
        "rpn_head.rpn_reg.weight": "rpn.head.box_deltas.weight",
        "roi_head.mask_head.stages.1.fuse_conv.1.dilation_conv_3.conv.weight":
            "mask_head.stages.1.fusion.branches.2.weight",
        "roi_head.mask_head.semantic_convs.3.conv.bias": "semantic_head.convs.6.bias",
        "roi_head.mask_head.instance_convs.1.conv.weight": "mask_head.instance_convs.2.weight",
    }
    if faster_better:
        pairs["roi_head.mask_head.stage_instance_logits.3.weight"] = "mask_head.final_logits.weight"
        pairs["roi_head.mask_head.stage_instance_logits.0.bias"] = "mask_head.stages.0.logits.bias"
    else:
        pairs["roi_head.mask_head.stages.2.semantic_transform_out.weight"] = \
            "mask_head.stages.2.semantic_out.weight"
        pairs["roi_head.mask_head.semantic_logits.weight"] = "semantic_head.logits.weight"
    state = model.state_dict()
    for src, dst in pairs.items():
        assert torch.equal(mapped[dst], official[src]) and torch.equal(state[dst], official[src])


def test_official_weights_of_the_wrong_model_are_refused():
    model = refinemask_resnet_fpn(80)
    official = official_state_dict(80, faster_better=True)
    with pytest.raises((KeyError, RuntimeError)):
        load_official_refinemask(model, official)


# ---------------------------------------------------------------------- real COCO images
def test_overfit_coco_mini_mask_ap50(shared_data):
    """Memorise the 6 real COCO images (short side 200) with the tiny RefineMask: mask AP50
    >= 0.9 at two consecutive evaluations, in the setting of Mask R-CNN's overfit test.

    The logits convs start from Detectron's small init (std 0.001, as the tiny Mask R-CNN's mask
    predictor): with the official kaiming init the first losses are ~10 nats per stage and the
    semantic logit, the shared features take a while to recover, and the same model reached only
    0.79 by step 300. Measured (seed 0, 2 threads, idle machine): 0.549 at step 100, 0.753 at 120,
    0.931 at 140, 0.966 at 160, so it passes at step 160 (about 100 s of training).
    """
    batch, sizes, targets, _, info = load_coco_mini(shared_data, short_side=200)
    torch.manual_seed(0)
    model = tiny_refinemask(num_classes=info.num_classes, anchor_sizes=(8, 16, 32, 64, 128),
                            head_options={"logits_init_std": 0.001},
                            semantic_options={"logits_init_std": 0.001})
    overfit_coco_mini(model, batch, sizes, targets)


def test_stage_mask_ious_of_the_positive_rois():
    """Perfect masks give IoU 1 at every stage, a RoI off every instance is not counted, and
    eroding the prediction lowers Boundary IoU more than mask IoU."""
    from lightning_seg.callbacks.refine_stages import stage_mask_ious

    masks = _targets_for(2, size=(64, 64))[0].masks
    gt_boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 4.0, 48.0, 60.0]])
    targets = [InstanceTargets(gt_boxes, torch.zeros(2, dtype=torch.int64), (64, 64), masks=masks)]
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 4.0, 48.0, 60.0], [0.0, 0.0, 4.0, 4.0]])
    sizes = (14, 28, 56, 112)
    perfect = []
    for s in sizes:
        rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0]]), boxes], dim=1)
        crop = roi_align(masks[:, None].float(), rois, (s, s), 1.0, 0, True)[:, 0] >= 0.5
        perfect.append(torch.where(crop, 5.0, -5.0)[:, None])
    results = stage_mask_ious(perfect, [boxes], targets)
    for mask_iou, boundary_iou in results:
        assert mask_iou.numel() == 2  # the 4x4 box overlaps nothing enough
        assert torch.equal(mask_iou, torch.ones(2)) and torch.equal(boundary_iou, torch.ones(2))
    eroded = [(-F.max_pool2d(-(p > 0).float(), 3, 1, 1) > 0) for p in perfect]
    worse = stage_mask_ious([torch.where(e, 5.0, -5.0) for e in eroded], [boxes], targets)
    mask_iou, boundary_iou = worse[-1]
    assert (mask_iou < 1).all() and (boundary_iou < mask_iou).all()


def test_sweep_files_name_real_arguments_of_the_mask_head():
    """Every RefineMask sweep applies to experiments whose mask head is a RefineMaskHead (the
    top-level experiment, or each value of an ``experiment`` parameter), and every combination of
    its values builds a head, with what each experiment sets on the head."""
    import itertools

    import yaml

    repo = Path(__file__).resolve().parents[2]
    sweeps = sorted((repo / "experiments" / "sweeps").glob("refinemask_*.yaml"))
    assert len(sweeps) >= 6
    prefix = "model.init_args.model.init_args.mask_head.init_args."
    keys = ("model", "init_args", "model", "init_args", "mask_head", "init_args")

    def head_args(experiment: Path) -> dict:
        """The mask head's init_args set by the experiment's first fragment, then by itself."""
        config = yaml.safe_load(experiment.read_text())
        model = yaml.safe_load((experiment.parent / config["fragments"][0]).read_text())
        assert model["model"]["init_args"]["model"]["init_args"]["mask_head"][
            "class_path"].endswith("RefineMaskHead"), experiment.name
        args = {}
        for source in (model, config):
            for key in keys:
                source = source.get(key, {}) if isinstance(source, dict) else {}
            args.update(source)
        return args

    for path in sweeps:
        sweep = yaml.safe_load(path.read_text())
        parameters = dict(sweep["parameters"])
        experiments = parameters.pop("experiment", {"values": [sweep.get("experiment")]})["values"]
        names, values = [], []
        seeds = parameters.pop("seed_everything", {"values": [0]})["values"]  # extra-seed sweeps
        assert all(isinstance(seed, int) for seed in seeds), path.name
        for key, spec in parameters.items():
            assert key.startswith(prefix), (path.name, key)
            names.append(key[len(prefix):])
            values.append(spec["values"] if "values" in spec else [spec["value"]])
        for experiment in experiments:
            fixed = head_args(repo / experiment)
            fixed = {k: v for k, v in fixed.items()
                     if k not in ("in_features", "stage_sizes", "conv_dim", "semantic_channels")}
            for combo in itertools.product(*values):
                RefineMaskHead(SHAPES, num_classes=3, conv_dim=64, semantic_channels=32,
                               **{**fixed, **dict(zip(names, combo))})


def test_cpu_budget_experiments_differ_only_in_boundary_aware_refinement():
    """The BAR-off experiment of the CPU-budget sweep repeats the BAR-on one (fragments cannot
    nest) and must differ from it only in boundary_loss / boundary_overwrite."""
    import yaml

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    on = yaml.safe_load((experiments / "refinemask_r18_fpn_shapes_cpu.yaml").read_text())
    off = yaml.safe_load((experiments / "refinemask_r18_fpn_shapes_cpu_no_bar.yaml").read_text())
    head = off["model"]["init_args"]["model"]["init_args"]["mask_head"]["init_args"]
    assert (head.pop("boundary_loss"), head.pop("boundary_overwrite")) == (False, False)
    assert off == on
