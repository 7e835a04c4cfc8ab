"""Fast NMS (Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019, section 3.4).

Per class, the ``top_k`` highest-scoring boxes are sorted by score and their ``k x k`` IoU matrix
is built in one batched operation; its lower triangle and diagonal are zeroed, and a box is kept
when the largest IoU in its column (its overlap with any higher-scoring box of its class) is
``<= iou_thresh``. Unlike standard NMS, a box that is itself suppressed still suppresses the
boxes below it, so Fast NMS removes slightly more boxes; in exchange it has no sequential loop.

``fast_nms`` has the call and return convention of ``torchvision.ops.batched_nms`` so the two
swap in one line: ``keep = fast_nms(boxes, scores, labels, 0.5)``. ``fast_nms_matrix`` is the
core on boxes already grouped per class and sorted (what YOLACT's detection step and its ONNX
export use: static shapes, no grouping).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batched_box_iou", "cross_class_fast_nms", "fast_nms", "fast_nms_matrix"]


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of x1y1x2y2 boxes, batched over a leading dimension.

    Args:
        boxes1: ``Tensor[G, N, 4]``.
        boxes2: ``Tensor[G, M, 4]``.

    Returns:
        ``Tensor[G, N, M]``; a pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # [G, N]
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # [G, M]
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # [G, N, M, 2]
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [G, N, M]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def fast_nms_matrix(boxes: Tensor, iou_thresh: float, valid: Tensor | None = None) -> Tensor:
    """Fast NMS on groups of boxes already sorted by decreasing score.

    Box ``j`` of a group is removed when ``IoU(i, j) > iou_thresh`` for a box ``i < j`` of its
    group (removed or not), tested as ``inter > iou_thresh * union`` so that no division and no
    float IoU matrix is needed.

    Args:
        boxes: ``Tensor[G, K, 4]`` x1y1x2y2, row ``g`` holding one class's boxes, best first.
        iou_thresh: a box whose IoU with a higher-scoring box of its group exceeds this is
            removed (kept when ``<= iou_thresh``, as ``torchvision.ops.nms``).
        valid: ``Tensor[G, K]`` bool marking real entries (padding neither suppresses nor is
            kept), or None when all are real.

    Returns:
        ``Tensor[G, K]`` bool: kept.
    """
    k = boxes.shape[1]
    if k == 0:
        return torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(-1)  # [G, K] each
    area = (x2 - x1) * (y2 - y1)
    iw = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
    ih = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
    inter = iw.mul_(ih)  # [G, K, K]
    union = (area[:, :, None] + area[:, None, :]).sub_(inter)
    overlap = inter > union.mul_(iou_thresh)  # [G, K, K]: IoU(i, j) > thresh
    earlier = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu_(diagonal=1)  # i < j
    overlap = overlap & earlier  # (out of place: the ONNX exporter has no in-place "and")
    if valid is not None:
        overlap = overlap & valid[:, :, None]  # padding suppresses nothing
    keep = ~overlap.any(dim=1)  # [G, K]
    return keep & valid if valid is not None else keep


def fast_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, top_k: int = 200
) -> Tensor:
    """Per-class Fast NMS with ``torchvision.ops.batched_nms``'s convention.

    Args:
        boxes: ``Tensor[N, 4]`` x1y1x2y2.
        scores: ``Tensor[N]``.
        labels: ``Tensor[N]`` int64 class (or any group) of each box; boxes of different labels
            never suppress each other.
        iou_thresh: IoU above which a lower-scoring box is removed (YOLACT: 0.5).
        top_k: per label, only the ``top_k`` highest-scoring boxes are considered; the others
            are dropped (YOLACT: 200).

    Returns:
        ``Tensor[M]`` int64 indices of the kept boxes, sorted by decreasing score.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise ValueError(
            f"fast_nms expects boxes Tensor[N, 4], scores and labels Tensor[N], got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)  # [N] best first
    grouped = order[torch.argsort(labels[order], stable=True)]  # [N] by label, best first within
    _, counts = torch.unique_consecutive(labels[grouped], return_counts=True)  # [G]
    group = torch.repeat_interleave(torch.arange(counts.numel(), device=boxes.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=boxes.device) - starts[group]  # rank inside its label
    sel = rank < top_k
    k = int(min(top_k, int(counts.max())))
    table = torch.full((counts.numel(), k), -1, dtype=torch.int64, device=boxes.device)  # [G, k]
    table[group[sel], rank[sel]] = grouped[sel]
    valid = table >= 0
    keep = fast_nms_matrix(boxes[table.clamp(min=0)], iou_thresh, valid)  # [G, k]
    kept = table[keep]
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def cross_class_fast_nms(boxes: Tensor, scores: Tensor, iou_thresh: float, top_k: int = 200) -> Tensor:
    """Fast NMS across classes (YOLACT's ``cc_fast_nms``): every box may suppress every other.

    Args:
        boxes: ``Tensor[N, 4]`` x1y1x2y2.
        scores: ``Tensor[N]`` (YOLACT: each anchor's best class score).
        iou_thresh: IoU above which a lower-scoring box is removed.
        top_k: only the ``top_k`` highest-scoring boxes are considered.

    Returns:
        ``Tensor[M]`` int64 indices of the kept boxes, sorted by decreasing score.
    """
    labels = torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    return fast_nms(boxes, scores, labels, iou_thresh, top_k)
