"""Typed per-image targets: instances, panoptic segments, keypoints.

Every target validates its shapes in ``__post_init__`` and has field-wise ``.to(device)`` and
``.select(keep)`` (``TensorStruct``), so a model never receives a dict with magic keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lightning_seg.structures.base import TensorStruct, per_image


@dataclass
class InstanceTargets(TensorStruct):
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
class PanopticTargets(TensorStruct):
    """The panoptic annotation of one image (COCO panoptic semantics).

    Attributes:
        segment_map: ``Tensor[H, W]`` int64 segment id per pixel, 0 = void / unlabelled.
        ids: ``Tensor[S]`` int64 segment ids present in ``segment_map``.
        labels: ``Tensor[S]`` int64 contiguous category indices (things and stuff together).
        isthing: ``Tensor[S]`` bool.
        iscrowd: ``Tensor[S]`` bool.
    """

    segment_map: Tensor = per_image()
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

    def select(self, keep: Tensor) -> PanopticTargets:
        """Keep a subset of the segments; pixels of the dropped ones become void (0)."""
        kept = super().select(keep)
        dropped = ~torch.isin(self.segment_map, kept.ids)
        return replace(kept, segment_map=self.segment_map.masked_fill(dropped, 0))




@dataclass
class KeypointTargets(TensorStruct):
    """The annotated keypoints of the instances of one image (landmark / pose datasets).

    Top-down datasets give one instance per (cropped) sample; face-landmark sets one face.
    Heatmaps and their weights are rendered on the model's output grid by a heatmap assigner
    (they depend on the model's stride), so datasets leave them None.

    Attributes:
        keypoints: ``Tensor[N, K, 3]`` float32 ``(x, y, visibility)``, COCO visibility (0 not
            labelled, 1 labelled but hidden, 2 visible), continuous pixel frame
            (``COCO_KEYPOINT_OFFSET``).
        image_size: ``(H, W)`` of the image the keypoints are in.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 person / face boxes, or None.
        norm_size: ``Tensor[N]`` the length a metric divides errors by (MPII head size for
            PCKh, inter-ocular distance for NME, box size for PCK), or None.
        heatmaps: ``Tensor[N, K, h, w]`` rendered targets on the output grid, or None.
        weights: ``Tensor[N, K]`` per-keypoint target weight (0 for unlabelled), or None.
        track_ids: ``Tensor[N]`` int64 identities across video frames, or None.
        areas: ``Tensor[N]`` object area in original-image pixels (COCO's segmentation
            ``area``, the scale of OKS), or None.
        ids: ``Tensor[N]`` int64 the dataset's instance ids (COCO annotation ids), or None.
        scores: ``Tensor[N]`` confidence of ``boxes`` when they come from a person / face
            detector (top-down evaluation with detections), None for ground-truth boxes.

    Top-down samples (``lightning_seg.data.topdown``) hold one instance in the frame of the
    crop; ``keypoints`` may then lie outside the image (they keep their visibility, the
    heatmap targets give them weight 0), and ``norm_size`` and ``areas`` stay lengths and
    areas of the original image, where metrics are computed.
    """

    keypoints: Tensor
    image_size: tuple[int, int]
    boxes: Tensor | None = None
    norm_size: Tensor | None = None
    heatmaps: Tensor | None = None
    weights: Tensor | None = None
    track_ids: Tensor | None = None
    areas: Tensor | None = None
    ids: Tensor | None = None
    scores: Tensor | None = None

    def __post_init__(self) -> None:
        if self.keypoints.ndim != 3 or self.keypoints.shape[-1] != 3:
            raise ValueError(f"keypoints must be Tensor[N, K, 3], got {tuple(self.keypoints.shape)}")
        n, k = self.keypoints.shape[:2]
        expected = {"boxes": (n, 4), "norm_size": (n,), "weights": (n, k), "track_ids": (n,),
                    "areas": (n,), "ids": (n,), "scores": (n,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must be Tensor{list(shape)}, got {tuple(value.shape)}")
        if self.heatmaps is not None and (
            self.heatmaps.ndim != 4 or tuple(self.heatmaps.shape[:2]) != (n, k)
        ):
            raise ValueError(f"heatmaps must be Tensor[{n}, {k}, h, w], got {tuple(self.heatmaps.shape)}")

    def __len__(self) -> int:
        return self.keypoints.shape[0]

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]
