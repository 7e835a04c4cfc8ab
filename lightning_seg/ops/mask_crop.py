"""Zero a mask outside a box (YOLACT's crop: Bolya et al., ICCV 2019, section 3.3).

YOLACT assembles full-image masks from prototypes and crops each with its box (the ground-truth
box in training, the predicted box at test time), so that mask errors far from the object cost
nothing. Boxes are in the mask's own pixel frame; pixel column ``j`` (its left edge at ``j``) is
kept when ``x1 - padding <= j < x2 + padding``, as YOLACT's ``crop`` with its 1-pixel padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_crop_mask(boxes: Tensor, size: tuple[int, int], padding: float = 1.0) -> Tensor:
    """The 0/1 window of each box on a ``size`` grid.

    Args:
        boxes: ``Tensor[..., 4]`` x1y1x2y2 in pixels of the grid (real-valued).
        size: ``(h, w)`` of the grid.
        padding: pixels added on every side (YOLACT: 1).

    Returns:
        ``Tensor[..., h, w]`` in the dtype of ``boxes``, 1 inside the padded box.
    """
    h, w = int(size[0]), int(size[1])
    cols = torch.arange(w, device=boxes.device, dtype=boxes.dtype)  # [w]
    rows = torch.arange(h, device=boxes.device, dtype=boxes.dtype)  # [h]
    x1 = torch.minimum(boxes[..., 0], boxes[..., 2])[..., None] - padding  # [..., 1]
    x2 = torch.maximum(boxes[..., 0], boxes[..., 2])[..., None] + padding
    y1 = torch.minimum(boxes[..., 1], boxes[..., 3])[..., None] - padding
    y2 = torch.maximum(boxes[..., 1], boxes[..., 3])[..., None] + padding
    in_x = (cols >= x1) & (cols < x2)  # [..., w]
    in_y = (rows >= y1) & (rows < y2)  # [..., h]
    return (in_y[..., :, None] & in_x[..., None, :]).to(boxes.dtype)  # [..., h, w]


def crop_masks(masks: Tensor, boxes: Tensor, padding: float = 1.0) -> Tensor:
    """Zero each mask outside its (padded) box.

    Args:
        masks: ``Tensor[..., N, h, w]`` masks or probabilities.
        boxes: ``Tensor[..., N, 4]`` x1y1x2y2 in pixels of the ``h x w`` grid.
        padding: pixels added on every side of the box (YOLACT: 1).

    Returns:
        ``Tensor[..., N, h, w]``: ``masks`` times the box window.
    """
    window = box_crop_mask(boxes.to(masks.dtype), masks.shape[-2:], padding)
    return masks * window
