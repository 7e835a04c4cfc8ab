"""Box coding for anchor/proposal regression (Girshick et al., "Fast R-CNN", ICCV 2015).

Boxes are ``x1y1x2y2`` pixels throughout. ``BoxCoder`` writes the same arithmetic as
torchvision's ``models.detection._utils.BoxCoder`` (same operation order), so encodings and
decodings are bit-identical to it; a golden test checks that. Clipping, small-box removal, IoU
and NMS come from ``torchvision.ops`` and are re-exported here so detection code imports its
box ops from one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_iou",
    "clip_boxes_to_image",
    "nms",
    "remove_small_boxes",
]


class BoxCoder:
    """Encode boxes as (dx, dy, dw, dh) deltas relative to reference boxes, and back.

    ``dx = wx * (gx - px) / pw``, ``dy = wy * (gy - py) / ph``, ``dw = ww * log(gw / pw)``,
    ``dh = wh * log(gh / ph)`` with centres ``(x, y)`` and sizes ``(w, h)`` of the target ``g``
    and the reference ``p`` (anchor or proposal).

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the deltas: ``(1, 1, 1, 1)`` for the RPN,
            ``(10, 10, 5, 5)`` for the Fast R-CNN box head.
        bbox_xform_clip: upper clamp of ``dw`` and ``dh`` before ``exp`` when decoding, so a
            wild prediction cannot overflow (default ``log(1000 / 16)``).
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must be (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Regression targets that move each reference box onto its ground-truth box.

        Args:
            gt_boxes: ``Tensor[N, 4]`` target boxes (the matched ground truth).
            reference_boxes: ``Tensor[N, 4]`` anchors or proposals, one per target box.

        Returns:
            ``Tensor[N, 4]`` deltas ``(dx, dy, dw, dh)`` in the dtype of ``gt_boxes``.
        """
        if gt_boxes.shape != reference_boxes.shape or gt_boxes.shape[-1:] != (4,):
            raise ValueError(
                f"encode expects two Tensor[N, 4], got {tuple(gt_boxes.shape)} and "
                f"{tuple(reference_boxes.shape)}"
            )
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)
        reference_boxes = reference_boxes.to(gt_boxes.dtype)

        ref_w = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]  # [N, 1]
        ref_h = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        ref_cx = reference_boxes[:, 0:1] + 0.5 * ref_w
        ref_cy = reference_boxes[:, 1:2] + 0.5 * ref_h

        gt_w = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
        gt_h = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
        gt_cx = gt_boxes[:, 0:1] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1:2] + 0.5 * gt_h

        dx = wx * (gt_cx - ref_cx) / ref_w
        dy = wy * (gt_cy - ref_cy) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.cat((dx, dy, dw, dh), dim=1)  # [N, 4]

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            deltas: ``Tensor[N, C*4]`` deltas, ``C`` sets per box (``C = 1`` for the RPN, one per
                class for a class-specific box head), laid out ``(dx, dy, dw, dh)`` per set.
            reference_boxes: ``Tensor[N, 4]`` anchors or proposals.

        Returns:
            ``Tensor[N, C, 4]`` decoded boxes in the dtype of ``deltas`` (not clipped).
        """
        num_boxes = reference_boxes.shape[0]
        if deltas.ndim != 2 or deltas.shape[1] % 4 != 0 or deltas.shape[0] != num_boxes:
            raise ValueError(
                f"decode expects deltas Tensor[N, C*4] and boxes Tensor[N, 4], got "
                f"{tuple(deltas.shape)} and {tuple(reference_boxes.shape)}"
            )
        reference_boxes = reference_boxes.to(deltas.dtype)
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]  # [N]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx  # [N, C]
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        x1, y1 = pred_ctr_x - half_w, pred_ctr_y - half_h
        x2, y2 = pred_ctr_x + half_w, pred_ctr_y + half_h
        return torch.stack((x1, y1, x2, y2), dim=2)  # [N, C, 4]
