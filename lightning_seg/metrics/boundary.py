"""Boundary regions of binary masks, as defined by Boundary IoU.

Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation",
CVPR 2021. The boundary region of a mask G is ``G minus erode(G, d)``: the mask pixels within
distance ``d`` of its contour, where ``d = max(1, round(dilation_ratio * image_diagonal))``
and the erosion is ``d`` iterations of a 3x3 square (a ``(2d+1) x (2d+1)`` square), with
everything outside the image counted as background, so a mask cut by the image border has a
boundary along that border too (the reference ``mask_to_boundary`` of boundary-iou-api pads
the mask with one zero pixel before eroding). Boundary AP matches detections with
``min(mask IoU, boundary IoU)`` (mask IoU only for crowd ground truth).

The COCO evaluator uses faster-coco-eval's C++ boundary (``iouType="boundary"``) by default;
these functions define the same region in torch, serve the pycocotools backend and are
checked against faster-coco-eval and against hand-computed cases in the tests.
"""

from __future__ import annotations

import math

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from torch import Tensor


def boundary_dilation(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary width ``d`` in pixels: ``max(1, round(dilation_ratio * diagonal))``.

    Python's ``round`` (half to even), as in the reference implementation.
    """
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def mask_to_boundary(masks: Tensor, dilation_ratio: float = 0.02) -> Tensor:
    """Boundary region of each mask: its pixels within ``d`` of its contour or the image edge.

    Args:
        masks: ``Tensor[N, H, W]`` bool (or 0/1 integers).
        dilation_ratio: ``d`` as a fraction of the image diagonal (paper default 0.02).

    Returns:
        ``Tensor[N, H, W]`` bool.
    """
    masks = masks.bool()
    n, h, w = masks.shape
    d = boundary_dilation(h, w, dilation_ratio)
    # Erosion by a (2d+1)^2 square with zero outside == not (dilation of the complement,
    # with ones outside); the square max filter is separable into a column and a row pass.
    background = (~masks).to(torch.float32)[:, None]  # [N, 1, H, W]
    background = F.pad(background, (d, d, d, d), value=1.0)  # [N, 1, H + 2d, W + 2d]
    background = F.max_pool2d(background, kernel_size=(2 * d + 1, 1), stride=1)  # [N, 1, H, W + 2d]
    background = F.max_pool2d(background, kernel_size=(1, 2 * d + 1), stride=1)  # [N, 1, H, W]
    eroded = background[:, 0] == 0  # [N, H, W]
    return masks & ~eroded


def rle_to_boundary_rle(rles: list[dict], dilation_ratio: float = 0.02) -> list[dict]:
    """Boundary regions of RLE-encoded masks, RLE-encoded again (same frame and size).

    Args:
        rles: COCO RLE dicts of one or more images (masks of one size are processed together).
        dilation_ratio: see ``mask_to_boundary``.

    Returns:
        One RLE dict per input, in order.
    """
    out: list[dict | None] = [None] * len(rles)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, rle in enumerate(rles):
        by_size.setdefault(tuple(rle["size"]), []).append(i)
    for idx in by_size.values():
        # decode gives uint8[h, w, N] in Fortran order: its transpose(2, 1, 0) is a C-ordered
        # [N, w, h] array (the transposed masks, which have the same boundary band).
        decoded = mask_utils.decode([rles[i] for i in idx])
        masks_t = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 1, 0)))  # [N, w, h]
        band = mask_to_boundary(masks_t, dilation_ratio)  # [N, w, h]
        arr = band.contiguous().view(torch.uint8).numpy().transpose(2, 1, 0)  # [h, w, N] F order
        for i, rle in zip(idx, mask_utils.encode(arr)):
            out[i] = rle
    return out  # type: ignore[return-value]
