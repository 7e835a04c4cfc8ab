"""Shared preprocessing: normalise, pad to a size divisibility, map predictions back.

Every network normalises its own input (``Batch.images`` are in ``[0, 1]``) with one
``ImagePreprocessor``, so that mean/std and padding are one constructor argument of the network,
and the functions below map what it predicts from the network's input frame back to the image's
size on disk (``SampleMeta.orig_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_seg.structures import InstancePredictions


class ImagePreprocessor(nn.Module):
    """Normalise a padded batch, zero its padding and pad it to a size divisibility.

    Padding is zero *after* normalisation (as torchvision and detectron2), whatever the collate
    padded with.

    Args:
        pixel_mean: per-channel mean of images in ``[0, 1]`` (ImageNet's by default).
        pixel_std: per-channel std.
        size_divisibility: the normalised batch is cropped to its largest image and zero-padded
            at the bottom/right to a multiple of this (32 for a 5-level FPN; 1: no padding).
    """

    def __init__(
        self,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        size_divisibility: int = 1,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"pixel_mean and pixel_std need 3 values, got {pixel_mean}, {pixel_std}")
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.size_divisibility = size_divisibility

    def forward(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Normalise, zero the padding, crop to the largest image and pad to the divisibility.

        Args:
            images: ``Tensor[B, 3, H, W]`` float in ``[0, 1]``, padded bottom/right.
            image_sizes: ``(h, w)`` of each image before padding.

        Returns:
            ``Tensor[B, 3, H', W']`` with ``H' = ceil(max h / d) * d`` (same for W').
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {images.shape[0]}")
        max_h = max(int(h) for h, _ in image_sizes)
        max_w = max(int(w) for _, w in image_sizes)
        if max_h > images.shape[2] or max_w > images.shape[3]:
            raise ValueError(
                f"image_sizes up to ({max_h}, {max_w}) exceed the batch {tuple(images.shape[2:])}"
            )
        x = (images[:, :, :max_h, :max_w] - self.pixel_mean) / self.pixel_std
        for i, (h, w) in enumerate(image_sizes):
            if int(h) < max_h:
                x[i, :, int(h) :, :] = 0
            if int(w) < max_w:
                x[i, :, :, int(w) :] = 0
        d = self.size_divisibility
        pad_h = int(math.ceil(max_h / d) * d) - max_h
        pad_w = int(math.ceil(max_w / d) * d) - max_w
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def box_scale(from_size: Sequence[int], to_size: Sequence[int], like: Tensor) -> Tensor:
    """``Tensor[4]`` ``(sx, sy, sx, sy)`` mapping x1y1x2y2 boxes from one frame to another."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return torch.tensor([sx, sy, sx, sy], dtype=like.dtype, device=like.device)


def rescale_instances(
    pred: InstancePredictions, size: Sequence[int], mask_thresh: float | None = 0.5
) -> InstancePredictions:
    """Map detections whose masks cover their whole frame to another frame ``size``.

    Boxes and keypoints are scaled; masks are bilinearly resized (probabilities) and thresholded
    at ``mask_thresh`` (None keeps probabilities; bool masks are resized by nearest neighbour).
    Networks that predict masks inside boxes (Mask R-CNN) paste them at the target size instead.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(pred.image_size) == size:
        return pred
    boxes = pred.boxes * box_scale(pred.image_size, size, pred.boxes)
    masks = pred.masks
    if masks is not None:
        if masks.dtype == torch.bool:
            masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        else:
            masks = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            if mask_thresh is not None:
                masks = masks >= mask_thresh
    keypoints = pred.keypoints
    if keypoints is not None:
        scale = keypoints.new_tensor([size[1] / pred.image_size[1], size[0] / pred.image_size[0], 1.0])
        keypoints = keypoints * scale
    return InstancePredictions(boxes=boxes, scores=pred.scores, labels=pred.labels, image_size=size,
                               masks=masks, keypoints=keypoints, track_ids=pred.track_ids)
