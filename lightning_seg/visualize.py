"""Pictures of predictions: label overlays, instance masks and boxes, side-by-side grids.

Pure functions on uint8 arrays, built on ``torchvision.utils`` drawing helpers; callbacks and
tasks use them to log overlays and write prediction images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from lightning_seg.structures import InstancePredictions, InstanceTargets


def to_uint8_image(image: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """``Tensor[3, H, W]`` float in [0, 1] or uint8 -> uint8 ``Tensor[3, h, w]`` cropped to ``size``."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if size is not None:
        image = image[:, : size[0], : size[1]]
    return image.cpu()


def overlay_labels(
    image: Tensor,
    labels: Tensor,
    palette: Sequence[tuple[int, int, int]],
    ignore_index: int | None = 255,
    alpha: float = 0.5,
) -> Tensor:
    """Blend a label map over an image.

    Args:
        image: uint8 ``Tensor[3, H, W]``.
        labels: int ``Tensor[H, W]`` class indices; ``ignore_index`` pixels stay unpainted.
        palette: one RGB colour per class.
        ignore_index: label drawn as nothing.
        alpha: opacity of the colours.

    Returns:
        uint8 ``Tensor[3, H, W]``.
    """
    labels = labels.cpu()
    classes = [int(c) for c in labels.unique() if int(c) != ignore_index and 0 <= int(c) < len(palette)]
    if not classes:
        return image
    masks = torch.stack([labels == c for c in classes])  # [C', H, W]
    colors = [tuple(int(v) for v in palette[c]) for c in classes]
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colors)


def draw_instances(
    image: Tensor,
    instances: InstancePredictions | InstanceTargets,
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    score_thresh: float = 0.3,
    alpha: float = 0.45,
) -> Tensor:
    """Draw instance masks, boxes and ``class score`` captions over an image (uint8 ``[3, H, W]``)."""
    inst = instances.to("cpu")
    keep = torch.ones(len(inst), dtype=torch.bool)
    scores = getattr(inst, "scores", None)
    if scores is not None:
        keep = scores >= score_thresh
    if not bool(keep.any()):
        return image
    labels = inst.labels[keep].tolist()
    colors = [tuple(int(v) for v in palette[c % len(palette)]) for c in labels]
    out = image
    if inst.masks is not None:
        masks = inst.masks[keep]
        masks = masks > 0.5 if masks.dtype != torch.bool else masks
        h, w = image.shape[1:]
        out = draw_segmentation_masks(out, masks[:, :h, :w], alpha=alpha, colors=colors)
    captions = []
    for i, c in enumerate(labels):
        name = class_names[c] if c < len(class_names) else str(c)
        captions.append(f"{name} {float(scores[keep][i]):.2f}" if scores is not None else name)
    return draw_bounding_boxes(out, inst.boxes[keep], labels=captions, colors=colors, width=2)


def hstack(images: Sequence[Tensor], gap: int = 4) -> Tensor:
    """Place uint8 ``[3, H_i, W_i]`` images side by side on a white background."""
    h = max(im.shape[1] for im in images)
    w = sum(im.shape[2] for im in images) + gap * (len(images) - 1)
    canvas = torch.full((3, h, w), 255, dtype=torch.uint8)
    x = 0
    for im in images:
        canvas[:, : im.shape[1], x : x + im.shape[2]] = im
        x += im.shape[2] + gap
    return canvas


def vstack(images: Sequence[Tensor], gap: int = 4) -> Tensor:
    """Stack uint8 ``[3, H_i, W_i]`` images vertically on a white background."""
    return hstack([im.transpose(1, 2) for im in images], gap).transpose(1, 2).contiguous()


def to_numpy(image: Tensor) -> np.ndarray:
    """uint8 ``Tensor[3, H, W]`` -> ``uint8[H, W, 3]`` for PIL / W&B."""
    return image.permute(1, 2, 0).contiguous().numpy()


def draw_skeleton(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[tuple[int, int]],
    colors: Sequence[tuple[int, int, int]],
    score_thresh: float = 0.0,
    radius: int = 2,
    width: int = 1,
    limb_color: tuple[int, int, int] = (255, 255, 255),
) -> Tensor:
    """Draw keypoints (one colour per keypoint) and their limbs over an image.

    Args:
        image: uint8 ``Tensor[3, H, W]``.
        keypoints: ``Tensor[N, K, 3]`` ``(x, y, visibility or score)`` in the image's
            continuous pixel frame; points whose third value is ``<= score_thresh`` are not
            drawn (nor their limbs).
        skeleton: limbs as keypoint index pairs.
        colors: one RGB colour per keypoint.
        score_thresh: see ``keypoints``.
        radius: point radius in pixels.
        width: limb width in pixels.
        limb_color: colour of the limbs.

    Returns:
        uint8 ``Tensor[3, H, W]``.
    """
    from torchvision.utils import draw_keypoints

    kpts = keypoints.detach().float().cpu()
    if kpts.numel() == 0:
        return image
    xy = kpts[..., :2] - 0.5  # continuous frame -> pixel index (drawing convention)
    shown = kpts[..., 2] > score_thresh  # [N, K]
    out = image
    if skeleton:
        out = draw_keypoints(out, xy, connectivity=[tuple(p) for p in skeleton], colors=limb_color,
                             radius=0, width=width, visibility=shown)
    for k in range(kpts.shape[1]):
        color = tuple(int(c) for c in colors[k % len(colors)])
        out = draw_keypoints(out, xy[:, k : k + 1], colors=color, radius=radius,
                             visibility=shown[:, k : k + 1])
    return out
