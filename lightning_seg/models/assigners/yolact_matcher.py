"""Anchor assignment of SSD / YOLACT (Bolya et al., ICCV 2019; Liu et al., SSD, ECCV 2016).

Follows the official YOLACT code (dbolya/yolact @ 902073d, ``layers/box_utils.py`` ``match``):

1. every anchor takes the ground truth it overlaps most (IoU);
2. each ground truth is forced onto its best anchor, greedily from the highest overlap down: the
   pair ``(gt j, anchor i)`` with the highest IoU left is fixed, then anchor ``i`` and gt ``j``
   leave the competition, so two boxes never claim the same anchor;
3. IoU ``>= pos_iou_thresh`` is positive, ``< neg_iou_thresh`` negative (background), in between
   neutral (no classification loss);
4. a non-positive anchor lying mostly inside a crowd region (intersection over the anchor's area
   ``> crowd_iou_thresh``) becomes neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

#: label of an anchor that is neither positive nor negative
NEUTRAL = -1


@dataclass
class AnchorAssignment:
    """What one image's anchors are trained towards.

    Attributes:
        labels: ``Tensor[A]`` int64: ``-1`` neutral, ``0`` background, ``k + 1`` class ``k``.
        matched_idxs: ``Tensor[A]`` int64 index of the ground truth of each anchor (meaningful
            where ``labels > 0``; 0 when the image has no ground truth).
    """

    labels: Tensor
    matched_idxs: Tensor


class YolactMatcher:
    """Assign anchors to ground-truth boxes (module docstring).

    Args:
        pos_iou_thresh: IoU from which an anchor is positive (0.5).
        neg_iou_thresh: IoU below which an anchor is background (0.4); anchors in between are
            neutral.
        crowd_iou_thresh: a non-positive anchor whose intersection with a crowd box exceeds this
            fraction of its area becomes neutral (0.7; 1 or more disables it).
        force_best_anchor: give each ground truth its best anchor even below
            ``pos_iou_thresh`` (YOLACT: True).
    """

    def __init__(
        self,
        pos_iou_thresh: float = 0.5,
        neg_iou_thresh: float = 0.4,
        crowd_iou_thresh: float = 0.7,
        force_best_anchor: bool = True,
    ) -> None:
        if neg_iou_thresh > pos_iou_thresh:
            raise ValueError(
                f"neg_iou_thresh {neg_iou_thresh} must not exceed pos_iou_thresh {pos_iou_thresh}"
            )
        self.pos_iou_thresh = pos_iou_thresh
        self.neg_iou_thresh = neg_iou_thresh
        self.crowd_iou_thresh = crowd_iou_thresh
        self.force_best_anchor = force_best_anchor

    def __repr__(self) -> str:
        return (
            f"YolactMatcher(pos_iou_thresh={self.pos_iou_thresh}, neg_iou_thresh="
            f"{self.neg_iou_thresh}, crowd_iou_thresh={self.crowd_iou_thresh})"
        )

    def __call__(
        self, anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, crowd_boxes: Tensor | None = None
    ) -> AnchorAssignment:
        """Assign the anchors of one image.

        Args:
            anchors: ``Tensor[A, 4]`` x1y1x2y2.
            gt_boxes: ``Tensor[M, 4]`` x1y1x2y2 (crowd regions excluded).
            gt_labels: ``Tensor[M]`` int64 classes ``0..K-1``.
            crowd_boxes: ``Tensor[Mc, 4]`` crowd regions, or None.

        Returns:
            the anchors' labels and matched ground-truth indices.
        """
        num_anchors = anchors.shape[0]
        device = anchors.device
        if gt_boxes.shape[0] == 0:
            labels = torch.zeros(num_anchors, dtype=torch.int64, device=device)
            matched = torch.zeros(num_anchors, dtype=torch.int64, device=device)
        else:
            overlaps = box_iou(gt_boxes.float(), anchors.float())  # [M, A]
            quality, matched = overlaps.max(dim=0)  # [A]
            if self.force_best_anchor:
                quality, matched = self._force_best_anchors(overlaps, quality, matched)
            labels = gt_labels[matched] + 1
            labels = torch.where(quality < self.pos_iou_thresh, NEUTRAL, labels)
            labels = torch.where(quality < self.neg_iou_thresh, 0, labels)
        if crowd_boxes is not None and crowd_boxes.shape[0] and self.crowd_iou_thresh < 1:
            crowd = _intersection_over_first(anchors.float(), crowd_boxes.float()).max(dim=1).values
            labels = torch.where((labels <= 0) & (crowd > self.crowd_iou_thresh), NEUTRAL, labels)
        return AnchorAssignment(labels=labels, matched_idxs=matched)

    @staticmethod
    def _force_best_anchors(overlaps: Tensor, quality: Tensor, matched: Tensor) -> tuple[Tensor, Tensor]:
        """Step 2 of the module docstring; forced anchors get quality 2 (never thresholded)."""
        overlaps = overlaps.clone()
        quality, matched = quality.clone(), matched.clone()
        for _ in range(overlaps.shape[0]):
            best_overlap, best_anchor = overlaps.max(dim=1)  # [M]
            j = best_overlap.argmax()
            i = best_anchor[j]
            overlaps[:, i] = -1
            overlaps[j, :] = -1
            quality[i] = 2.0
            matched[i] = j
        return quality, matched


def _intersection_over_first(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``Tensor[N, M]``: area of ``boxes1[i] & boxes2[j]`` over the area of ``boxes1[i]``."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area1 = ((boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])).clamp(min=1e-12)
    return wh[..., 0] * wh[..., 1] / area1[:, None]
