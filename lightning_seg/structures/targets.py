"""Typed per-image targets: instances, panoptic segments.

Every target validates its shapes in ``__post_init__`` and moves with ``.to(device)``, so a
model never receives a dict with magic keys (``../shared/STYLE.md`` convention 4).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

#: COCO JSON keypoints are pixel indices (pixel column ``j`` at ``x = j``); in memory they are
#: in the continuous frame of boxes and masks (its centre at ``j + 0.5``), as detectron2:
#: readers add this offset to labelled keypoints, writers to COCO JSON subtract it.
COCO_KEYPOINT_OFFSET = 0.5


def _move(obj, device: torch.device | str):
    """Return a copy of a dataclass with every tensor field moved to ``device``."""
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value.to(device)
    return replace(obj, **changes)


@dataclass
class InstanceTargets:
    """The instances of one image.

    Attributes:
        boxes: ``Tensor[N, 4]`` float32, x1y1x2y2 in pixels of the (augmented) image.
        labels: ``Tensor[N]`` int64 contiguous class indices ``0..K-1`` (no background).
        image_size: ``(H, W)`` of the image these targets belong to.
        masks: ``Tensor[N, H, W]`` bool bitmaps, or None when the dataset has no masks.
        iscrowd: ``Tensor[N]`` bool; crowd regions are ignored by losses and by COCO AP.
        keypoints: ``Tensor[N, K, 3]`` float32 ``(x, y, visibility)`` with COCO visibility
            (0 not labelled, 1 labelled but hidden, 2 visible), or None; ``x, y`` in the
            continuous frame of the boxes (``COCO_KEYPOINT_OFFSET``).
        track_ids: ``Tensor[N]`` int64 identities across video frames, or None.
    """

    boxes: Tensor
    labels: Tensor
    image_size: tuple[int, int]
    masks: Tensor | None = None
    iscrowd: Tensor | None = None
    keypoints: Tensor | None = None
    track_ids: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be Tensor[N, 4] (x1y1x2y2), got {tuple(self.boxes.shape)}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be Tensor[{n}], got {tuple(self.labels.shape)}")
        h, w = self.image_size
        if self.masks is not None and tuple(self.masks.shape) != (n, h, w):
            raise ValueError(
                f"masks must be Tensor[N={n}, H={h}, W={w}] matching image_size, "
                f"got {tuple(self.masks.shape)}"
            )
        if self.iscrowd is None:
            self.iscrowd = torch.zeros(n, dtype=torch.bool, device=self.boxes.device)
        elif self.iscrowd.shape != (n,):
            raise ValueError(f"iscrowd must be Tensor[{n}], got {tuple(self.iscrowd.shape)}")
        if self.keypoints is not None and (
            self.keypoints.ndim != 3 or self.keypoints.shape[0] != n or self.keypoints.shape[2] != 3
        ):
            raise ValueError(f"keypoints must be Tensor[{n}, K, 3], got {tuple(self.keypoints.shape)}")
        if self.track_ids is not None and self.track_ids.shape != (n,):
            raise ValueError(f"track_ids must be Tensor[{n}], got {tuple(self.track_ids.shape)}")

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> InstanceTargets:
        return _move(self, device)

    def select(self, keep: Tensor) -> InstanceTargets:
        """Keep a subset of instances (bool mask or index tensor); every field stays aligned."""
        return replace(
            self,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            masks=None if self.masks is None else self.masks[keep],
            iscrowd=None if self.iscrowd is None else self.iscrowd[keep],
            keypoints=None if self.keypoints is None else self.keypoints[keep],
            track_ids=None if self.track_ids is None else self.track_ids[keep],
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True) -> InstanceTargets:
        h, w = image_size
        return cls(
            boxes=torch.zeros(0, 4),
            labels=torch.zeros(0, dtype=torch.int64),
            image_size=image_size,
            masks=torch.zeros(0, h, w, dtype=torch.bool) if with_masks else None,
        )


@dataclass
class PanopticTargets:
    """The panoptic annotation of one image (COCO panoptic semantics).

    Attributes:
        segment_map: ``Tensor[H, W]`` int64 segment id per pixel, 0 = void / unlabelled.
        ids: ``Tensor[S]`` int64 segment ids present in ``segment_map``.
        labels: ``Tensor[S]`` int64 contiguous category indices (things and stuff together).
        isthing: ``Tensor[S]`` bool.
        iscrowd: ``Tensor[S]`` bool.
    """

    segment_map: Tensor
    ids: Tensor
    labels: Tensor
    isthing: Tensor
    iscrowd: Tensor

    def __post_init__(self) -> None:
        if self.segment_map.ndim != 2:
            raise ValueError(f"segment_map must be Tensor[H, W], got {tuple(self.segment_map.shape)}")
        s = self.ids.shape
        for name in ("labels", "isthing", "iscrowd"):
            if getattr(self, name).shape != s:
                raise ValueError(f"{name} must have the shape of ids {tuple(s)}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.segment_map.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> PanopticTargets:
        return _move(self, device)


@dataclass
class InstancePredictions:
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

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> InstancePredictions:
        return _move(self, device)
