"""What a dataset returns (``Sample``) and what a model receives (``Batch``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_seg.structures.base import TensorStruct, per_image
from lightning_seg.structures.crop import AffineCrop
from lightning_seg.structures.targets import InstanceTargets, KeypointTargets, PanopticTargets


@dataclass
class SampleMeta:
    """Where a sample came from and how to map predictions back to it.

    Attributes:
        image_id: the dataset's image id (COCO ``image_id``; an index for folder datasets).
        file_name: path of the image file, for error messages and prediction files.
        orig_size: ``(H, W)`` of the image on disk, before any resize.
        video_id: sequence id for video datasets, else None.
        frame_index: frame index inside the sequence, else None.
        crop: for a top-down sample (one instance cut out of the image), the affine crop from
            the image on disk to the sample's image; networks map predictions back through its
            inverse. None when the sample is the whole image.
    """

    image_id: int
    file_name: str
    orig_size: tuple[int, int]
    video_id: int | None = None
    frame_index: int | None = None
    crop: AffineCrop | None = None


@dataclass
class Sample:
    """One image and every target the dataset has for it.

    Attributes:
        image: ``Tensor[3, H, W]`` uint8 RGB.
        meta: provenance and original size.
        instances: instance boxes/masks/keypoints, or None.
        semantic: ``Tensor[H, W]`` int64 class index per pixel (``ignore_index`` for void), or None.
        panoptic: panoptic segments, or None.
        keypoints: keypoints of the instances (landmark / top-down pose datasets), or None.
    """

    image: Tensor
    meta: SampleMeta
    instances: InstanceTargets | None = None
    semantic: Tensor | None = None
    panoptic: PanopticTargets | None = None
    keypoints: KeypointTargets | None = None

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
        if self.keypoints is not None and tuple(self.keypoints.image_size) != size:
            raise ValueError(
                f"{self.meta.file_name}: keypoints are for size {self.keypoints.image_size}, "
                f"image is {size}"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


@dataclass
class Batch(TensorStruct):
    """A padded batch of images and their targets: what every network's ``forward`` receives.

    Attributes:
        images: ``Tensor[B, 3, H, W]`` float32 in ``[0, 1]``, zero-padded at the bottom/right
            to the largest image (rounded up to the collate's size divisibility).
            Normalisation (mean/std) happens inside each model (``ImagePreprocessor``).
        image_sizes: ``(h, w)`` of each image before padding.
        meta: one ``SampleMeta`` per image (``orig_size``: the size predictions map back to).
        instances: per-image instance targets, or None.
        semantic: ``Tensor[B, H, W]`` int64 padded with the ignore index, or None.
        panoptic: per-image panoptic targets, or None.
        keypoints: per-image keypoint targets, or None.
        clip_length: for video, the number of frames ``T`` per clip: the batch holds ``B / T``
            clips, clip-major (frame ``t`` of clip ``c`` is row ``c * T + t``), and instance
            ``track_ids`` link objects across the frames of a clip. None for still images.
    """

    images: Tensor = per_image()
    image_sizes: list[tuple[int, int]] = per_image()
    meta: list[SampleMeta] = per_image()
    instances: list[InstanceTargets] | None = None
    semantic: Tensor | None = per_image(default=None)
    panoptic: list[PanopticTargets] | None = None
    keypoints: list[KeypointTargets] | None = None
    clip_length: int | None = None

    def __post_init__(self) -> None:
        b = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got {tuple(self.images.shape)}")
        if len(self.image_sizes) != b or len(self.meta) != b:
            raise ValueError(f"{len(self.image_sizes)} image_sizes and {len(self.meta)} meta for {b} images")
        for name in ("instances", "panoptic", "keypoints"):
            value = getattr(self, name)
            if value is not None and len(value) != b:
                raise ValueError(f"{len(value)} {name} targets for a batch of {b} images")
        if self.clip_length is not None and (self.clip_length < 1 or b % self.clip_length):
            raise ValueError(f"a batch of {b} frames cannot hold clips of {self.clip_length} frames")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def orig_sizes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of each image on disk, where predictions are mapped back to."""
        return [tuple(m.orig_size) for m in self.meta]  # type: ignore[misc]

    @property
    def num_clips(self) -> int:
        """Number of video clips (``len(self)`` for still images: one frame each)."""
        return len(self) // (self.clip_length or 1)

    def clip_rows(self, clip: int) -> range:
        """Batch rows of the frames of clip ``clip``, in time order."""
        t = self.clip_length or 1
        if not 0 <= clip < self.num_clips:
            raise IndexError(f"clip {clip} out of range for {self.num_clips} clips")
        return range(clip * t, (clip + 1) * t)

    @classmethod
    def from_images(
        cls,
        images: Tensor | Sequence[Tensor],
        instances: Sequence[InstanceTargets] | None = None,
        semantic: Tensor | Sequence[Tensor] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
        size_divisibility: int = 1,
        ignore_index: int = 255,
    ) -> Batch:
        """A batch from plain tensors (Python use and tests; datasets use ``Collate``).

        Args:
            images: a list of ``Tensor[3, H_i, W_i]``, or ``Tensor[B, 3, H, W]`` (with
                ``image_sizes``: already padded, image ``i`` in its top-left ``image_sizes[i]``);
                float in ``[0, 1]`` or uint8.
            instances: per-image targets in the pixel frame of each image, or None.
            semantic: ``Tensor[B, H, W]`` or a list of ``Tensor[H_i, W_i]`` labels, or None.
            image_sizes: ``(h, w)`` of each image of a padded ``images`` tensor.
            orig_sizes: ``(H, W)`` to map predictions back to; default ``image_sizes``.
            size_divisibility: pad the batch to a multiple of this.
            ignore_index: fill value of padded label pixels.
        """
        if isinstance(images, Tensor) and images.ndim == 4 and image_sizes is not None:
            images = [im[:, : int(h), : int(w)] for im, (h, w) in zip(images, image_sizes)]
        images = [im.float() / 255 if im.dtype == torch.uint8 else im.float() for im in images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        d = size_divisibility
        ph = -(-max(h for h, _ in sizes) // d) * d
        pw = -(-max(w for _, w in sizes) // d) * d
        padded = images[0].new_zeros(len(images), 3, ph, pw)
        labels = None
        if semantic is not None:
            labels = torch.full((len(images), ph, pw), ignore_index, dtype=torch.int64,
                                device=padded.device)
        for i, (image, (h, w)) in enumerate(zip(images, sizes)):
            padded[i, :, :h, :w] = image
            if labels is not None:
                labels[i, :h, :w] = semantic[i][:h, :w]
        orig = sizes if orig_sizes is None else [(int(h), int(w)) for h, w in orig_sizes]
        meta = [SampleMeta(image_id=i, file_name=f"image_{i}", orig_size=o) for i, o in enumerate(orig)]
        return cls(padded, sizes, meta, instances=None if instances is None else list(instances),
                   semantic=labels)
