"""Pasting fixed-size RoI masks back into the image (Mask R-CNN inference).

He et al., "Mask R-CNN", ICCV 2017, section 3: the ``M x M`` mask predicted for a box is
resized to the box and thresholded at 0.5. This follows torchvision's
``paste_masks_in_image`` exactly (a 1-pixel zero border around the mask, the box enlarged by
``(M + 2) / M`` and truncated to integers, bilinear resizing with ``align_corners=False``),
so that its results equal torchvision's pixel for pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``Tensor[N, 4]`` x1y1x2y2 boxes about their centres."""
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # [N, 2]
    half_sizes = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale  # [N, 2]
    return torch.cat([centers - half_sizes, centers + half_sizes], dim=1)  # [N, 4]


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1
) -> Tensor:
    """Paste per-box soft masks into a full image canvas.

    Args:
        masks: ``Tensor[N, 1, M, M]`` or ``Tensor[N, M, M]`` mask probabilities of each box.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 in pixels of the target image.
        image_size: ``(H, W)`` of the target image.
        padding: zero border added around each mask before resizing (removes the bias of
            bilinear interpolation at the box edges; torchvision and detectron2 use 1).

    Returns:
        ``Tensor[N, H, W]`` soft masks in the dtype of ``masks`` (zero outside each box);
        threshold them to get binary masks.
    """
    if masks.ndim == 4:
        masks = masks[:, 0]  # [N, M, M]
    h_img, w_img = int(image_size[0]), int(image_size[1])
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    canvas = masks.new_zeros((num_masks, h_img, w_img))
    if num_masks == 0:
        return canvas
    padded = F.pad(masks, (padding,) * 4)  # [N, M + 2p, M + 2p]
    scale = float(mask_size + 2 * padding) / mask_size
    int_boxes = _expand_boxes(boxes.to(torch.float32), scale).to(torch.int64).tolist()
    for i, (x1, y1, x2, y2) in enumerate(int_boxes):
        box_w = max(x2 - x1 + 1, 1)
        box_h = max(y2 - y1 + 1, 1)
        resized = F.interpolate(
            padded[i][None, None], size=(box_h, box_w), mode="bilinear", align_corners=False
        )[0, 0]  # [box_h, box_w]
        x_start, x_end = max(x1, 0), min(x2 + 1, w_img)
        y_start, y_end = max(y1, 0), min(y2 + 1, h_img)
        if x_end <= x_start or y_end <= y_start:
            continue
        canvas[i, y_start:y_end, x_start:x_end] = resized[
            y_start - y1 : y_end - y1, x_start - x1 : x_end - x1
        ]
    return canvas
