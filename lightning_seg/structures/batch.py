"""What a dataset returns (``Sample``) and what a model receives (``Batch``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from lightning_seg.structures.targets import InstanceTargets, PanopticTargets


@dataclass
class SampleMeta:
    """Where a sample came from and how to map predictions back to it.

    Attributes:
        image_id: the dataset's image id (COCO ``image_id``; an index for folder datasets).
        file_name: path of the image file, for error messages and prediction files.
        orig_size: ``(H, W)`` of the image on disk, before any resize.
        video_id: sequence id for video datasets, else None.
        frame_index: frame index inside the sequence, else None.
    """

    image_id: int
    file_name: str
    orig_size: tuple[int, int]
    video_id: int | None = None
    frame_index: int | None = None


@dataclass
class Sample:
    """One image and every target the dataset has for it.

    Attributes:
        image: ``Tensor[3, H, W]`` uint8 RGB.
        meta: provenance and original size.
        instances: instance boxes/masks/keypoints, or None.
        semantic: ``Tensor[H, W]`` int64 class index per pixel (``ignore_index`` for void), or None.
        panoptic: panoptic segments, or None.
    """

    image: Tensor
    meta: SampleMeta
    instances: InstanceTargets | None = None
    semantic: Tensor | None = None
    panoptic: PanopticTargets | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] != 3:
            raise ValueError(f"image must be Tensor[3, H, W], got {tuple(self.image.shape)}")
        size = tuple(self.image.shape[1:])
        if self.semantic is not None and tuple(self.semantic.shape) != size:
            raise ValueError(
                f"{self.meta.file_name}: semantic map {tuple(self.semantic.shape)} "
                f"differs from image size {size}"
            )
        if self.instances is not None and tuple(self.instances.image_size) != size:
            raise ValueError(
                f"{self.meta.file_name}: instances are for size {self.instances.image_size}, "
                f"image is {size}"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


@dataclass
class Batch:
    """A padded batch of images and their targets.

    Attributes:
        images: ``Tensor[B, 3, H, W]`` float32 in ``[0, 1]``, zero-padded at the bottom/right
            to the largest image (rounded up to the collate's size divisibility).
            Normalisation (mean/std) happens inside each model.
        image_sizes: ``(h, w)`` of each image before padding.
        meta: one ``SampleMeta`` per image.
        instances: per-image instance targets, or None.
        semantic: ``Tensor[B, H, W]`` int64 padded with the ignore index, or None.
        panoptic: per-image panoptic targets, or None.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    meta: list[SampleMeta]
    instances: list[InstanceTargets] | None = None
    semantic: Tensor | None = None
    panoptic: list[PanopticTargets] | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return replace(
            self,
            images=self.images.to(device, non_blocking=True),
            instances=None if self.instances is None else [t.to(device) for t in self.instances],
            semantic=None if self.semantic is None else self.semantic.to(device, non_blocking=True),
            panoptic=None if self.panoptic is None else [t.to(device) for t in self.panoptic],
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy of the dense tensors (the DataLoader calls it with ``pin_memory=True``)."""
        return replace(
            self,
            images=self.images.pin_memory(),
            semantic=None if self.semantic is None else self.semantic.pin_memory(),
        )
