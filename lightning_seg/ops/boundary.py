"""Boundary regions of small binary masks, for boundary-aware mask refinement.

Zhang et al., "RefineMask: Towards High-Quality Instance Segmentation with Fine-Grained
Features", CVPR 2021, section 3.3 (boundary-aware refinement). The region is defined as the
official implementation's ``generate_block_target`` does it (zhanggang001/RefineMask @ 633ed2b,
``mmdet/models/losses/cross_entropy_loss.py``): a pixel belongs to the boundary region of width
``w`` when more than ``min_fraction`` (10%) of the ``(2w + 1) x (2w + 1)`` window around it
holds the opposite class, everything outside the mask's frame counting as background. The region
therefore has pixels on both sides of the contour: with ``w = 1`` it is every pixel with an
8-neighbour of the other class; with ``w = 2`` a pixel needs at least 3 of its 24 neighbours
within Chebyshev distance 2 on the other side (a single stray pixel of the other class does not
make a boundary).

The functions are pure and batched over the first dimension; ``refine_with_boundary`` is the
inference step of RefineMask (each stage overwrites only the boundary band of the previous,
upsampled mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def boundary_region(masks: Tensor, width: int, min_fraction: float = 0.1) -> Tensor:
    """Pixels near the contour of each binary mask (RefineMask's boundary region).

    Args:
        masks: ``Tensor[N, H, W]`` bool, or numbers where ``> 0.5`` is foreground.
        width: ``w``: the window is ``(2w + 1) x (2w + 1)`` pixels (RefineMask: 2 for the
            training region, 1 at inference). ``w >= 1``.
        min_fraction: a pixel is in the region when strictly more than this fraction of its
            window (itself included, outside the frame = background) is the other class.

    Returns:
        ``Tensor[N, H, W]`` bool.
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be Tensor[N, H, W], got {tuple(masks.shape)}")
    fg = masks > 0.5 if masks.dtype != torch.bool else masks
    k = 2 * width + 1
    padded = F.pad(fg[:, None].to(torch.float32), (width,) * 4)  # [N, 1, H + 2w, W + 2w]
    ones = padded.new_ones(1, 1, k, k)
    count_fg = F.conv2d(padded, ones)[:, 0]  # [N, H, W] foreground pixels in each window
    opposite = torch.where(fg, k * k - count_fg, count_fg)  # [N, H, W]
    return opposite > min_fraction * k * k


def upsample_region(region: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a boolean region as RefineMask does: bilinear (``align_corners=True``), ``>= 0.5``.

    Args:
        region: ``Tensor[N, h, w]`` bool.
        size: ``(H, W)`` of the output.

    Returns:
        ``Tensor[N, H, W]`` bool.
    """
    if tuple(region.shape[-2:]) == tuple(size):
        return region.bool()
    up = F.interpolate(region[:, None].to(torch.float32), size=tuple(size), mode="bilinear",
                       align_corners=True)  # [N, 1, H, W]
    return up[:, 0] >= 0.5


def refine_with_boundary(
    previous_logits: Tensor, logits: Tensor, width: int = 1, min_fraction: float = 0.1
) -> Tensor:
    """One inference step of boundary-aware refinement.

    The previous (coarser) mask is binarised at probability 0.5, its boundary region of width
    ``width`` is upsampled to the new size; inside that band the new stage's logits are kept,
    elsewhere the previous logits, bilinearly upsampled (``align_corners=True``), are.

    Args:
        previous_logits: ``Tensor[N, 1, h, w]`` logits of the previous stage (already refined).
        logits: ``Tensor[N, 1, H, W]`` logits of this stage.
        width: boundary width at the previous resolution (RefineMask: 1 at inference).
        min_fraction: see ``boundary_region``.

    Returns:
        ``Tensor[N, 1, H, W]`` refined logits (dtype of ``logits``).
    """
    size = tuple(logits.shape[-2:])
    binary = previous_logits[:, 0].float().sigmoid() >= 0.5  # [N, h, w]
    band = upsample_region(boundary_region(binary, width, min_fraction), size)  # [N, H, W]
    previous = F.interpolate(previous_logits.to(logits.dtype), size=size, mode="bilinear",
                             align_corners=True)  # [N, 1, H, W]
    return torch.where(band[:, None], logits, previous)
