"""Our Mask R-CNN equals torchvision's ``maskrcnn_resnet50_fpn`` given the same weights.

This is the proof that the architecture is the paper's (as torchvision implements it): the
whole pipeline (ResNet-50, FPN, anchors, RPN proposals, RoIAlign, box head, per-class NMS,
mask head, pasting) must give the same boxes, scores, labels and masks.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from lightning_seg.models.detectors.mask_rcnn import (
    load_torchvision_maskrcnn,
    map_torchvision_maskrcnn_state_dict,
    mask_rcnn_r50_fpn_torchvision_compat,
)
from lightning_seg.structures import Batch

NUM_CLASSES = 3
# (h, w); torchvision's transform scales by min(min_size / short, max_size / long): with both
# long sides equal to max_size and a huge min_size the factor is exactly 1 for both images.
SIZES = [(128, 160), (160, 120)]
MAX_SIZE = 160
POST_NMS_TOP_N = 300
DETECTIONS = 40


@pytest.fixture(scope="module")
def tv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
        min_size=10_000, max_size=MAX_SIZE,
    )
    # give BatchNorm realistic statistics (random init leaves them at 0 / 1)
    body = model.backbone.body
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    body.train()
    with torch.no_grad():
        body(torch.randn(2, 3, 128, 128))
        # random predictors on features of std ~100 saturate the softmax (every score 1.0)
        # and throw boxes off the image: scale them so that scores and boxes are varied
        model.rpn.head.bbox_pred.weight.mul_(0.2)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.002)
        torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.002)
    # fewer proposals and detections keep the CPU time low (the FCs and the mask head's
    # convs on every RoI dominate); the same settings are given to our model
    model.rpn._post_nms_top_n["testing"] = POST_NMS_TOP_N
    model.roi_heads.detections_per_img = DETECTIONS
    model.eval()
    return model


@pytest.fixture(scope="module")
def our_model(tv_model) -> torch.nn.Module:
    model = mask_rcnn_r50_fpn_torchvision_compat(NUM_CLASSES)
    missing, unexpected = load_torchvision_maskrcnn(model, tv_model.state_dict())
    assert missing == [] and unexpected == []
    model.rpn.post_nms_top_n_test = POST_NMS_TOP_N
    model.box_head.detections_per_img = DETECTIONS
    return model.eval()


def _images() -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    singles = []
    for h, w in SIZES:
        # smooth random images (a few blobs) so that features are not pure noise
        low = torch.rand(3, h // 16 + 1, w // 16 + 1, generator=g)
        img = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear")[0]
        singles.append(img.clamp(0, 1))
    batch = torch.zeros(2, 3, max(h for h, _ in SIZES), max(w for _, w in SIZES))
    for i, img in enumerate(singles):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    return batch, singles


def test_state_dict_mapping_covers_every_key(tv_model, our_model):
    tv = tv_model
    # same parameters as torchvision, less its background mask channel (256 weights + 1 bias)
    n_tv = sum(p.numel() for p in tv.parameters())
    assert n_tv - sum(p.numel() for p in our_model.parameters()) == 257
    mapped = map_torchvision_maskrcnn_state_dict(tv.state_dict(), keep_classes=[2, 3])
    assert mapped["box_head.cls_score.weight"].shape[0] == 3  # background + 2 kept classes
    torch.testing.assert_close(
        mapped["box_head.box_pred.weight"][4:8],
        tv.state_dict()["roi_heads.box_predictor.bbox_pred.weight"][8:12],
    )
    torch.testing.assert_close(
        mapped["mask_head.mask_logits.weight"][0],
        tv.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"][2],
    )


@torch.no_grad()
def test_eval_outputs_equal_torchvision(tv_model, our_model):
    batch, singles = _images()
    tv_model.roi_heads.score_thresh = 0.05
    expected = tv_model(singles)
    preds = our_model(Batch.from_images(batch, image_sizes=SIZES))
    for p, e, size in zip(preds, expected, SIZES):
        assert len(e["boxes"]) > 10, "random weights should give detections"
        assert p.image_size == size
        assert len(p) == len(e["boxes"])
        assert e["scores"].min() < 0.9 and len(e["labels"].unique()) > 1  # not degenerate
        torch.testing.assert_close(p.boxes, e["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(p.scores, e["scores"], rtol=0, atol=1e-5)
        assert torch.equal(p.labels, e["labels"] - 1)
        tv_masks = e["masks"][:, 0] >= 0.5
        assert p.masks.dtype == torch.bool and p.masks.shape == tv_masks.shape
        assert tv_masks.any()
        mismatch = (p.masks != tv_masks).float().mean().item()
        assert mismatch < 1e-4, f"{mismatch:.2e} of mask pixels differ"
