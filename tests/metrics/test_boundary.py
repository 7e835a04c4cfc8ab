"""Boundary IoU (Cheng et al., CVPR 2021): hand-computed cases and golden tests."""

from __future__ import annotations

import sys
from pathlib import Path

import faster_coco_eval.core.mask as fce_mask
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from lightning_seg.metrics.boundary import boundary_dilation, mask_to_boundary, rle_to_boundary_rle
from lightning_seg.metrics.coco import COCOEvaluator, detection_stat_names
from lightning_seg.metrics.rle import encode_masks
from lightning_seg.structures import InstancePredictions, InstanceTargets

sys.path.insert(0, str(Path(__file__).parent))
from test_coco_cases import make_case  # noqa: E402


def _square(h: int, w: int, y0: int, x0: int, size: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def test_dilation_width():
    assert boundary_dilation(40, 40, 0.02) == 1  # 0.02 * 56.6 = 1.13
    assert boundary_dilation(10, 10, 0.02) == 1  # never below one pixel
    assert boundary_dilation(480, 640, 0.02) == 16  # 0.02 * 800
    assert boundary_dilation(300, 400, 0.05) == 25  # 0.05 * 500 = 25 exactly


def test_boundary_of_a_square_by_hand():
    inner = _square(40, 40, 10, 10, 10)
    band = mask_to_boundary(inner[None], 0.02)[0]  # d = 1: the square's outer ring
    assert band.sum() == 100 - 8 * 8
    assert band[10, 10:20].all() and band[19, 10:20].all() and not band[11:19, 11:19].any()
    band2 = mask_to_boundary(inner[None], 2.5 / (40 * 2**0.5))[0]  # d = round(2.5) = 2
    assert boundary_dilation(40, 40, 2.5 / (40 * 2**0.5)) == 2 and band2.sum() == 100 - 6 * 6
    full = torch.ones(1, 40, 40, dtype=torch.bool)  # the image border counts as contour
    assert mask_to_boundary(full, 0.02)[0].sum() == 40 * 40 - 38 * 38
    assert mask_to_boundary(torch.zeros(1, 5, 7, dtype=torch.bool)).sum() == 0


def test_boundary_equals_faster_coco_eval_and_opencv_reference():
    rng = np.random.default_rng(0)
    for h, w, ratio in [(37, 53, 0.02), (120, 90, 0.02), (201, 150, 0.05), (64, 64, 0.1)]:
        masks = torch.from_numpy(rng.random((6, h, w)) > 0.6)
        for j in range(2, 6):  # blobs of all sizes, some touching the border
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[j] = False
            masks[j, y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = True
        ours = mask_to_boundary(masks, ratio).numpy()
        rles = encode_masks(masks)
        bands = rle_to_boundary_rle(rles, ratio)
        assert all(np.array_equal(mask_utils.decode(b), o) for b, o in zip(bands, ours))
        for backend in ("mask_api", "opencv"):  # faster-coco-eval C++; boundary-iou-api's cv2 code
            ref = [fce_mask.rleToBoundary(dict(r), ratio, backend=backend) for r in rles]
            ref = [fce_mask.decode(r) for r in ref]
            assert all(np.array_equal(r, o) for r, o in zip(ref, ours)), (h, w, ratio, backend)


def _one_pair(gt: torch.Tensor, dt: torch.Tensor) -> tuple[InstancePredictions, InstanceTargets]:
    box = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    label = torch.zeros(1, dtype=torch.long)
    target = InstanceTargets(box, label, tuple(gt.shape), masks=gt[None])
    return InstancePredictions(box, torch.ones(1), label, tuple(gt.shape), masks=dt[None]), target


def test_boundary_iou_and_ap_by_hand():
    """GT: 10x10 square; detection: the same square one column to the right. With d = 1 the
    bands are the two 36-pixel rings; they share 2 x 9 pixels of the top and bottom rows:
    boundary IoU = 18 / 54 = 1/3, mask IoU = 90 / 110."""
    gt, dt = _square(40, 40, 10, 10, 10), _square(40, 40, 10, 11, 10)
    gb, db = rle_to_boundary_rle(encode_masks(torch.stack([gt, dt])), 0.02)
    assert mask_utils.iou([db], [gb], [0])[0, 0] == pytest.approx(1 / 3)
    pred, target = _one_pair(gt, dt)
    for backend in ("faster_coco_eval", "pycocotools"):
        metric = COCOEvaluator(("segm", "boundary"), backend=backend)
        metric.update([pred], [target], [1])
        out = metric.compute()
        assert out["segm/AP"] == pytest.approx(0.7)  # 90/110 = 0.818 passes thresholds .50 ... .80
        assert out["boundary/AP"] == 0.0  # min(0.818, 1/3) fails them all
    # A crowd region is matched by mask (crowd) IoU only: the shifted detection (crowd IoU
    # 90/100) is ignored at thresholds .50 ... .90 and a false positive ranked above the true
    # positive only at .95 (precision 1/2): AP = (9 + 0.5) / 10. With boundary IoU (1/3) it
    # would be a false positive at every threshold (AP 0.5).
    other = _square(40, 40, 25, 25, 8)
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [25.0, 25.0, 33.0, 33.0]])
    labels = torch.zeros(2, dtype=torch.long)
    crowd = torch.tensor([True, False])
    target = InstanceTargets(boxes, labels, (40, 40), masks=torch.stack([gt, other]), iscrowd=crowd)
    scores = torch.tensor([0.9, 0.5])
    pred = InstancePredictions(boxes, scores, labels, (40, 40), masks=torch.stack([dt, other]))
    metric = COCOEvaluator(("boundary",))
    metric.update([pred], [target], [1])
    assert metric.compute()["boundary/AP"] == pytest.approx(0.95)


@pytest.mark.parametrize("seed", [0, 7])
def test_boundary_ap_backends_agree(seed):
    """faster-coco-eval's boundary mode == pycocotools with our boundary band."""
    preds, targets = make_case(seed, num_images=8)
    ids = list(range(8))
    outs = []
    for backend in ("faster_coco_eval", "pycocotools"):
        metric = COCOEvaluator(("boundary",), backend=backend, boundary_dilation_ratio=0.05)
        metric.update(preds, targets, ids)
        outs.append(metric.compute())
    names = [f"boundary/{n}" for n in detection_stat_names()]
    fast, reference = [outs[0][k] for k in names], [outs[1][k] for k in names]
    np.testing.assert_allclose(fast, reference, atol=1e-6, rtol=0)
    assert outs[0]["boundary/AP50"] > 0.05
