"""Collate a list of ``Sample`` into a padded ``Batch``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from lightning_seg.structures import Batch, Sample


class Collate:
    """Pad images and dense label maps bottom/right to one size and stack them.

    - ``images``: ``Tensor[B, 3, H, W]`` float32 in ``[0, 1]``, zero padded; ``H, W`` are the
      largest height/width in the batch rounded up to ``size_divisibility``.
    - ``semantic``: ``Tensor[B, H, W]`` int64 padded with ``ignore_index`` (only when every
      sample has a semantic map).
    - ``panoptic``: per-image ``PanopticTargets`` whose ``segment_map`` is padded with 0 (void)
      to ``(H, W)``, so it lines up with ``images``.
    - ``instances``: per-image ``InstanceTargets`` kept **unpadded**, at their own image size
      (``image_size == image_sizes[i]``): boxes and keypoints are the same in the padded frame
      (padding is bottom/right), and a model that needs masks at the padded size pads them
      itself. This avoids copying N full-size masks per image.

    Args:
        size_divisibility: pad height and width up to a multiple of this (1 disables).
        ignore_index: fill value of padded semantic pixels.
    """

    def __init__(self, size_divisibility: int = 32, ignore_index: int = 255) -> None:
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        self.size_divisibility = size_divisibility
        self.ignore_index = ignore_index

    def padded_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """Largest ``(H, W)`` of ``sizes`` rounded up to ``size_divisibility``."""
        d = self.size_divisibility
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        return math.ceil(h / d) * d, math.ceil(w / d) * d

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of samples")
        sizes = [s.image_size for s in samples]
        ph, pw = self.padded_size(sizes)
        images = torch.zeros(len(samples), 3, ph, pw, dtype=torch.uint8)
        for i, s in enumerate(samples):
            h, w = s.image_size
            if s.image.dtype != torch.uint8:
                raise ValueError(f"{s.meta.file_name}: Sample.image must be uint8, got {s.image.dtype}")
            images[i, :, :h, :w] = s.image
        images = images.float().div_(255.0)  # one conversion for the whole padded batch

        semantic = None
        if all(s.semantic is not None for s in samples):
            semantic = torch.full((len(samples), ph, pw), self.ignore_index, dtype=torch.int64)
            for i, s in enumerate(samples):
                h, w = s.image_size
                semantic[i, :h, :w] = s.semantic
        elif any(s.semantic is not None for s in samples):
            raise ValueError("some samples have a semantic map and others do not; cannot collate")

        panoptic = None
        if all(s.panoptic is not None for s in samples):
            panoptic = []
            for s in samples:
                seg = s.panoptic.segment_map
                padded = seg.new_zeros(ph, pw)
                padded[: seg.shape[0], : seg.shape[1]] = seg
                panoptic.append(replace(s.panoptic, segment_map=padded))
        elif any(s.panoptic is not None for s in samples):
            raise ValueError("some samples have panoptic targets and others do not; cannot collate")

        return Batch(
            images=images,
            image_sizes=sizes,
            meta=[s.meta for s in samples],
            instances=_per_image(samples, "instances"),
            semantic=semantic,
            panoptic=panoptic,
            keypoints=_per_image(samples, "keypoints"),
        )


def _per_image(samples: Sequence[Sample], name: str) -> list | None:
    """The per-image targets ``name`` of every sample (kept unpadded), or None when none has them."""
    values = [getattr(s, name) for s in samples]
    if all(v is not None for v in values):
        return values
    if any(v is not None for v in values):
        raise ValueError(f"some samples have {name} targets and others do not; cannot collate")
    return None



class ClipCollate(Collate):
    """Collate video clips (``list[Sample]`` of T frames each) into one ``Batch`` of frames.

    The B clips are flattened clip-major: frame ``t`` of clip ``b`` is batch row ``b * T + t``;
    ``Batch.clip_length = T``. ``meta[i].video_id`` / ``frame_index`` name each frame,
    and instance ``track_ids`` link objects across the frames of a clip. A single ``Sample`` is
    a clip of one frame.
    """

    def __call__(self, clips: Sequence[Sample | Sequence[Sample]]) -> Batch:
        clips = [[c] if isinstance(c, Sample) else list(c) for c in clips]
        lengths = {len(c) for c in clips}
        if len(lengths) != 1:
            raise ValueError(f"clips of one batch must have the same length, got {sorted(lengths)}")
        batch = super().__call__([frame for clip in clips for frame in clip])
        return replace(batch, clip_length=lengths.pop())
