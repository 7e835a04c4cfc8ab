"""Top-down keypoint post-processing: back to the image on disk, instance scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from lightning_seg.ops.affine import apply_affine
from lightning_seg.structures import KeypointTargets, SampleMeta


def to_original_frame(points: Tensor, meta: SampleMeta, image_size: Sequence[int]) -> Tensor:
    """Map input-frame ``Tensor[..., 2]`` points of one sample to its image on disk: through
    the inverse of its crop (``meta.crop``), else scaled from ``image_size`` to
    ``meta.orig_size`` (an image resized without a crop)."""
    if meta.crop is not None:
        return apply_affine(points, meta.crop.inverse())
    h, w = int(image_size[0]), int(image_size[1])
    oh, ow = int(meta.orig_size[0]), int(meta.orig_size[1])
    if (h, w) == (oh, ow):
        return points
    return points * points.new_tensor([ow / w, oh / h])


def boxes_to_original_frame(boxes: Tensor, meta: SampleMeta, image_size: Sequence[int]) -> Tensor:
    """``Tensor[N, 4]`` x1y1x2y2 boxes of the input frame mapped to the image on disk: the
    bounding box of the four mapped corners (exact without rotation)."""
    if len(boxes) == 0:
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack(
        [torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
         torch.stack([x1, y2], -1), torch.stack([x2, y2], -1)], dim=1
    )  # [N, 4, 2]
    mapped = to_original_frame(corners, meta, image_size)
    return torch.cat([mapped.amin(1), mapped.amax(1)], dim=-1)  # [N, 4]


def targets_to_original_frame(targets: KeypointTargets, meta: SampleMeta) -> KeypointTargets:
    """Keypoint targets of a (cropped) sample in the frame of its image on disk: keypoints and
    boxes mapped back, visibility, norm sizes and areas unchanged."""
    size = targets.image_size
    kpts = targets.keypoints.clone()
    labelled = kpts[..., 2] > 0
    mapped = to_original_frame(kpts[..., :2], meta, size)
    kpts[..., :2] = torch.where(labelled[..., None], mapped, torch.zeros_like(mapped))
    boxes = None if targets.boxes is None else boxes_to_original_frame(targets.boxes, meta, size)
    return replace(targets, keypoints=kpts, boxes=boxes, image_size=tuple(meta.orig_size),
                   heatmaps=None, weights=None)


def instance_scores(keypoint_scores: Tensor, box_scores: Tensor | None = None,
                    score_thresh: float = 0.2) -> Tensor:
    """Confidence of each top-down instance: the mean of its keypoint scores above
    ``score_thresh`` (0 when none is), times the box score when the box came from a detector
    (the rescoring of SimpleBaseline / mmpose for COCO keypoint AP).

    Args:
        keypoint_scores: ``Tensor[N, K]``.
        box_scores: ``Tensor[N]`` or None (ground-truth boxes: 1).
        score_thresh: keypoint scores counted.

    Returns:
        ``Tensor[N]``.
    """
    above = keypoint_scores > score_thresh
    total = (keypoint_scores * above).sum(-1)
    count = above.sum(-1)
    score = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    return score if box_scores is None else score * box_scores.to(score)
