"""Typed predictions, what every network returns in eval mode (one structure per task family).

=====================  ==========================================================================
family                 ``model(batch)`` in eval mode returns
=====================  ==========================================================================
semantic               ``SemanticPredictions`` (the batch's logits and how to map them back)
instance               ``list[InstancePredictions]``, one per image, in the original image frame
panoptic               ``list[PanopticPredictions]``, one per image, in the original image frame
keypoints / landmarks  ``list[KeypointPredictions]``, one per image, in the original image frame
=====================  ==========================================================================

Video networks return the same per-frame structures with ``track_ids`` filled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.ops.labels import argmax_labels
from lightning_seg.structures.base import TensorStruct, per_image


@dataclass
class InstancePredictions(TensorStruct):
    """Detections of one image, in the pixel frame of ``image_size``.

    Attributes:
        boxes: ``Tensor[N, 4]`` float32 x1y1x2y2 pixels.
        scores: ``Tensor[N]`` float32 confidences in [0, 1].
        labels: ``Tensor[N]`` int64 contiguous class indices ``0..K-1``.
        image_size: ``(H, W)`` of the frame the boxes and masks are in (usually the original
            image size, after the model mapped its predictions back).
        masks: ``Tensor[N, H, W]`` bool (thresholded) or float probabilities, or None.
        keypoints: ``Tensor[N, K, 3]`` float32 ``(x, y, score)``, or None.
        track_ids: ``Tensor[N]`` int64 identities for video, or None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image_size: tuple[int, int]
    masks: Tensor | None = None
    keypoints: Tensor | None = None
    track_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be Tensor[N, 4], got {tuple(self.boxes.shape)}")
        n = self.boxes.shape[0]
        if self.scores.shape != (n,) or self.labels.shape != (n,):
            raise ValueError(
                f"scores {tuple(self.scores.shape)} and labels {tuple(self.labels.shape)} "
                f"must be Tensor[{n}]"
            )
        if self.masks is not None and tuple(self.masks.shape) != (n, *self.image_size):
            raise ValueError(
                f"masks must be Tensor[{n}, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {tuple(self.masks.shape)}"
            )
        if self.keypoints is not None and (
            self.keypoints.ndim != 3 or self.keypoints.shape[0] != n or self.keypoints.shape[2] != 3
        ):
            raise ValueError(f"keypoints must be Tensor[{n}, K, 3], got {tuple(self.keypoints.shape)}")
        if self.track_ids is not None and self.track_ids.shape != (n,):
            raise ValueError(f"track_ids must be Tensor[{n}], got {tuple(self.track_ids.shape)}")

    def __len__(self) -> int:
        return self.boxes.shape[0]


@dataclass
class SemanticPredictions(TensorStruct):
    """Per-pixel class scores of a batch, in the frame of the network's input.

    Validation compares ``labels()`` with the batch's label maps (same frame); ``lseg predict``
    writes ``original(i)``, the label map of image ``i`` at its size on disk.

    Attributes:
        logits: ``Tensor[B, K, H, W]`` class scores of the padded batch.
        image_sizes: ``(h, w)`` of each image before padding (its valid top-left region).
        orig_sizes: ``(H, W)`` of each image on disk (before the data transforms resized it).
    """

    logits: Tensor = per_image()
    image_sizes: list[tuple[int, int]] = per_image()
    orig_sizes: list[tuple[int, int]] = per_image()

    def __post_init__(self) -> None:
        if self.logits.ndim != 4:
            raise ValueError(f"logits must be Tensor[B, K, H, W], got {tuple(self.logits.shape)}")
        b = self.logits.shape[0]
        if len(self.image_sizes) != b or len(self.orig_sizes) != b:
            raise ValueError(
                f"{len(self.image_sizes)} image_sizes and {len(self.orig_sizes)} orig_sizes "
                f"for a batch of {b}"
            )

    def __len__(self) -> int:
        return self.logits.shape[0]

    def labels(self) -> Tensor:
        """``Tensor[B, H, W]`` int64 arg-max class per pixel (padding included)."""
        return argmax_labels(self.logits, 1)

    def original(self, i: int, max_bytes: int = 1 << 29) -> Tensor:
        """``Tensor[H_i, W_i]`` int64 label map of image ``i`` at its original size: the valid
        region of the logits bilinearly resized, then arg-max. When the resized logits would
        exceed ``max_bytes`` (a huge image with many classes), the arg-max is taken first and the
        labels are resized by nearest neighbour instead."""
        h, w = self.image_sizes[i]
        size = tuple(int(v) for v in self.orig_sizes[i])
        logits = self.logits[i : i + 1, :, :h, :w]
        if size == (h, w):
            return argmax_labels(logits, 1)[0]
        if logits.shape[1] * size[0] * size[1] * 4 > max_bytes:
            labels = argmax_labels(logits, 1)[:, None].float()
            return F.interpolate(labels, size=size, mode="nearest")[0, 0].long()
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return argmax_labels(logits, 1)[0]


@dataclass
class PanopticPredictions(TensorStruct):
    """The panoptic segmentation of one image (COCO panoptic semantics).

    Attributes:
        segment_map: ``Tensor[H, W]`` int64 segment id per pixel, 0 = void.
        ids: ``Tensor[S]`` int64 ids of the segments (non-zero, unique).
        labels: ``Tensor[S]`` int64 contiguous category indices (things and stuff together).
        isthing: ``Tensor[S]`` bool.
        scores: ``Tensor[S]`` float32 confidence (the detection score of a thing, 1 for stuff).
        track_ids: ``Tensor[S]`` int64 identities across video frames (VPS), or None.
    """

    segment_map: Tensor = per_image()
    ids: Tensor
    labels: Tensor
    isthing: Tensor
    scores: Tensor | None = None
    track_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.segment_map.ndim != 2:
            raise ValueError(f"segment_map must be Tensor[H, W], got {tuple(self.segment_map.shape)}")
        s = tuple(self.ids.shape)
        if self.scores is None:
            self.scores = torch.ones(s, dtype=torch.float32, device=self.ids.device)
        for name in ("labels", "isthing", "scores", "track_ids"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != s:
                raise ValueError(f"{name} must have the shape of ids {s}, got {tuple(value.shape)}")
        if bool((self.ids == 0).any()):
            raise ValueError("segment id 0 is reserved for void")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.segment_map.shape)  # type: ignore[return-value]

    @classmethod
    def empty(cls, image_size: Sequence[int], device: torch.device | str | None = None
              ) -> PanopticPredictions:
        """All void."""
        none = torch.zeros(0, dtype=torch.int64, device=device)
        return cls(torch.zeros(tuple(image_size), dtype=torch.int64, device=device), none, none,
                   none.bool())


@dataclass
class KeypointPredictions(TensorStruct):
    """Keypoints of the instances of one image, in the pixel frame of ``image_size``.

    Attributes:
        keypoints: ``Tensor[N, K, 3]`` float32 ``(x, y, score)`` (continuous pixel frame).
        scores: ``Tensor[N]`` float32 instance confidence (mean keypoint score for top-down).
        image_size: ``(H, W)`` of the frame the keypoints are in.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 boxes the instances were found in, or None.
        heatmaps: ``Tensor[N, K, h, w]`` the decoded heatmaps (for pictures), or None.
        track_ids: ``Tensor[N]`` int64 identities across video frames, or None.
    """

    keypoints: Tensor
    scores: Tensor
    image_size: tuple[int, int]
    boxes: Tensor | None = None
    heatmaps: Tensor | None = None
    track_ids: Tensor | None = None

    def __post_init__(self) -> None:
        if self.keypoints.ndim != 3 or self.keypoints.shape[-1] != 3:
            raise ValueError(f"keypoints must be Tensor[N, K, 3], got {tuple(self.keypoints.shape)}")
        n = self.keypoints.shape[0]
        for name, shape in {"scores": (n,), "boxes": (n, 4), "track_ids": (n,)}.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must be Tensor{list(shape)}, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.keypoints.shape[0]
