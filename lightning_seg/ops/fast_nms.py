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


#: On a CPU, ``fast_nms_matrix`` works through the ``[G, K, K]`` pairs in blocks of about this
#: many elements, so that each block's intermediates stay in cache (a 2 MiB float32 tensor).
CPU_BLOCK_ELEMENTS = 2**19


def fast_nms_matrix(boxes: Tensor, iou_thresh: float, valid: Tensor | None = None) -> Tensor:
    """Fast NMS on groups of boxes already sorted by decreasing score.

    Box ``j`` of a group is removed when ``IoU(i, j) > iou_thresh`` for a box ``i < j`` of its
    group (removed or not), tested as ``inter * (1 + t) - t * area_i - t * area_j > 0`` (the same
    inequality as ``inter > t * union``), so that no division and no IoU matrix is needed: a box
    is kept when the largest of these over the boxes above it is ``<= 0``.

    On a CPU the pairs are taken in blocks of rows (``CPU_BLOCK_ELEMENTS``) and only those with
    ``i <= j``, about half of them; on other devices, and when traced or exported, in one block
    (few kernel launches, a static graph). The result is the same. A box with a NaN or infinite
    coordinate is kept and suppresses nothing, as with ``torchvision.ops.nms``; half-precision
    boxes are compared in float32.

    Args:
        boxes: ``Tensor[G, K, 4]`` x1y1x2y2, row ``g`` holding one class's boxes, best first.
        iou_thresh: a box whose IoU with a higher-scoring box of its group exceeds this is
            removed (kept when ``<= iou_thresh``, as ``torchvision.ops.nms``).
        valid: ``Tensor[G, K]`` bool marking real entries (padding neither suppresses nor is
            kept), or None when all are real.

    Returns:
        ``Tensor[G, K]`` bool: kept.
    """
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or (valid is not None and valid.shape != boxes.shape[:2]):
        raise ValueError(
            f"fast_nms_matrix expects boxes Tensor[G, K, 4] (and valid Tensor[G, K]), got "
            f"{tuple(boxes.shape)}" + ("" if valid is None else f" and {tuple(valid.shape)}")
        )
    g, k = boxes.shape[:2]
    if k == 0 or g == 0:
        return torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    # one contiguous [G, K] tensor per coordinate: the broadcast operations below vectorise on
    # contiguous rows (a view with stride 4 runs several times slower on a CPU); float32 at least
    # (half-precision areas overflow from 256 x 256)
    coords = boxes.permute(2, 0, 1)
    coords = (coords.float() if coords.dtype in (torch.float16, torch.bfloat16) else coords).contiguous()
    x1, y1, x2, y2 = coords.unbind(0)
    scaled = (x2 - x1) * (y2 - y1) * iou_thresh  # [G, K]; NaN or inf iff a coordinate is not finite
    # padding, and a box with a NaN or infinite coordinate (whose IoU is undefined, never above
    # the threshold for torchvision.ops.nms), suppress nothing and are suppressed by nothing
    finite = scaled.isfinite()
    scaled = scaled.masked_fill(~finite if valid is None else ~(finite & valid), float("inf"))
    # one block on CUDA and when traced (few launches, a static graph, no host sync), blocks on a CPU
    one_block = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or boxes.device.type != "cpu"
    if one_block or not bool(finite.all()):  # (on a CPU, where the check is free: only if needed)
        x1, y1, x2, y2 = torch.where(finite, coords, 0.0).unbind(0)
    if one_block:
        worst = _excess(x1, y1, x2, y2, scaled, iou_thresh, slice(None), 0, k).amax(dim=1)  # [G, K]
    else:
        rows = min(k, max(8, CPU_BLOCK_ELEMENTS // (g * k)))
        groups = min(g, max(1, CPU_BLOCK_ELEMENTS // (rows * k)))
        # one workspace for every block: a fresh 2 MiB tensor per block would be a fresh mmap
        # (page faults) each time under glibc's default threshold, twice as slow
        work = torch.empty(3, groups, rows, k, dtype=scaled.dtype)
        worst = torch.full((g, k), float("-inf"), dtype=scaled.dtype)
        for g0 in range(0, g, groups):
            gs = slice(g0, g0 + groups)
            c = min(g, g0 + groups) - g0
            for r0 in range(0, k, rows):
                r1 = min(k, r0 + rows)
                block = _excess(x1, y1, x2, y2, scaled, iou_thresh, gs, r0, r1,
                                [w[:c, : r1 - r0, : k - r0] for w in work]).amax(dim=1)
                torch.maximum(worst[gs, r0:], block, out=worst[gs, r0:])
    keep = worst <= 0  # [G, K]
    return keep & valid if valid is not None else keep


def _excess(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor, scaled: Tensor, iou_thresh: float,
            gs: slice, r0: int, r1: int, work: list[Tensor] | None = None) -> Tensor:
    """``inter(i, j) * (1 + t) - scaled_i - scaled_j`` for the groups ``gs``, rows ``i`` in
    ``r0..r1-1`` and columns ``j >= r0``, ``-inf`` where ``i >= j``: ``Tensor[G', r1 - r0, K - r0]``,
    positive where box ``i`` suppresses box ``j``. ``work``: three tensors of that shape to
    compute in (the result is the first), or None to allocate."""
    i = (gs, slice(r0, r1), None)  # [G', R, 1]
    j = (gs, None, slice(r0, None))  # [G', 1, K - r0]
    out, a, b = work if work is not None else (None, None, None)
    # clamp(a, max=b) is min(a, b) (faster than torch.minimum on a CPU); the width alone is
    # clamped at 0: a negative height then makes the product <= 0, which never suppresses
    out = torch.clamp(x2[j], max=x2[i], out=out)
    out = out.sub_(torch.clamp(x1[j], min=x1[i], out=a)).clamp_(min=0)
    out = out.mul_(torch.clamp(y2[j], max=y2[i], out=a).sub_(torch.clamp(y1[j], min=y1[i], out=b)))
    out = out.mul_(1.0 + iou_thresh).sub_(scaled[i]).sub_(scaled[j])
    n = r1 - r0
    lower = torch.ones(n, n, dtype=torch.bool, device=out.device).tril_()  # i >= j, in columns r0..r1-1
    out[:, :, :n].masked_fill_(lower, float("-inf"))
    return out


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
    kept = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept[table[keep]] = True
    return order[kept[order]]  # by decreasing score, without another sort


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
