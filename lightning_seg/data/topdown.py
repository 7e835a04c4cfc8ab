"""The top-down crop as a data transform, with the papers' augmentation.

``TopDownAffine`` cuts one instance out of its image: the instance's box (``KeypointTargets.
boxes``) is widened to the input's aspect ratio and padded (``box_padding``), and the image is
warped so that the box fills ``input_size`` (``lightning_seg.ops.affine``). For training it also
draws a random scale, rotation and horizontal flip, and a per-channel colour gain. The affine map
travels with the sample (``SampleMeta.crop``), so networks map their predictions back to the
image on disk exactly.

Defaults are the official Stacked Hourglass augmentation (princeton-vl/pose-hg-train,
``src/util/pose.lua``): scale ``x 2^clip(N(0, 0.25), +-0.5)``, rotation ``clip(N(0, 30),
+-60)`` degrees applied with probability 0.4, flip with probability 0.5 (left/right keypoints
swapped through the dataset's flip map), colour ``x U(0.6, 1.4)`` per channel. The official code
draws ``N(0, s)`` and clips at ``2 s``; ``scale_sigma`` / ``rotation_sigma`` are those ``s``.

Keypoints: every keypoint keeps its visibility, wherever the crop puts it; keypoints outside
the crop get heatmap target weight 0 in the model (nothing is counted: this is augmentation).
``norm_size`` and ``areas`` stay in original-image units (metrics are computed there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from lightning_seg.ops.affine import apply_affine, box_center_size, crop_matrix, warp_image
from lightning_seg.structures import AffineCrop, DatasetInfo, KeypointTargets, Sample


class TopDownAffine:
    """Crop (and augment) the one instance of a top-down sample (module docstring).

    YAML: the keypoint DataModules build it from their arguments; in Python
    ``TopDownAffine((256, 256), train=True).bind(info)``.

    Args:
        input_size: ``(H, W)`` of the network input.
        train: draw random scale / rotation / flip / colour; False: the deterministic crop.
        box_padding: the box (after the aspect-ratio fix) is multiplied by this (1.25 for COCO
            boxes and the face sets; 1 for MPII, whose reader already applies the official
            1.25).
        scale_sigma: std of the log2 scale factor, clipped at 2 sigma (0.25).
        rotation_sigma: std of the rotation in degrees, clipped at 2 sigma (30).
        rotation_prob: probability of rotating at all (0.4: the official code zeroes it with
            probability 0.6).
        flip_prob: probability of a horizontal flip (0.5).
        color_range: per-channel gain range ``(lo, hi)`` (0.6, 1.4); None: no colour change.
        flip_permutation: keypoint permutation of a flip; None: from ``bind(info)``.
        seed: seed of the random stream (re-seeded per DataLoader worker); None: fresh entropy.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (256, 256),
        train: bool = False,
        box_padding: float = 1.25,
        scale_sigma: float = 0.25,
        rotation_sigma: float = 30.0,
        rotation_prob: float = 0.4,
        flip_prob: float = 0.5,
        color_range: Sequence[float] | None = (0.6, 1.4),
        flip_permutation: list[int] | None = None,
        seed: int | None = None,
    ) -> None:
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (H, W) > 0, got {input_size}")
        if box_padding <= 0:
            raise ValueError(f"box_padding must be > 0, got {box_padding}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train = train
        self.box_padding = float(box_padding)
        self.scale_sigma = float(scale_sigma)
        self.rotation_sigma = float(rotation_sigma)
        self.rotation_prob = float(rotation_prob)
        self.flip_prob = float(flip_prob)
        self.color_range = None if color_range is None else (float(color_range[0]), float(color_range[1]))
        self.flip_permutation = None if flip_permutation is None else list(flip_permutation)
        self.seed = seed
        self._worker_seed: int | None = None
        self._rng = np.random.default_rng(seed)

    def bind(self, info: DatasetInfo) -> TopDownAffine:
        """Take the flip permutation from the dataset unless set explicitly."""
        if self.flip_permutation is None:
            self.flip_permutation = info.flip_permutation()
        return self

    def _reseed_in_worker(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or self._worker_seed == info.seed:
            return
        self._worker_seed = info.seed
        entropy = [info.seed % 2**63] if self.seed is None else [self.seed, info.seed % 2**63]
        self._rng = np.random.default_rng(entropy)

    def _clipped_normal(self, sigma: float) -> float:
        return float(np.clip(self._rng.normal(0.0, sigma), -2 * sigma, 2 * sigma)) if sigma > 0 else 0.0

    def __call__(self, sample: Sample) -> Sample:
        """The crop of ``sample``'s instance (the whole image when it has no keypoints, e.g. a
        folder of face crops for ``lseg predict``). Returns a new ``Sample``."""
        self._reseed_in_worker()
        targets = sample.keypoints
        h0, w0 = sample.image_size
        if targets is not None and len(targets) != 1:
            raise ValueError(
                f"{sample.meta.file_name}: a top-down sample holds one instance, got {len(targets)}"
            )
        if targets is not None and targets.boxes is not None:
            box = targets.boxes.to(torch.float64)
        else:
            box = torch.tensor([[0.0, 0.0, float(w0), float(h0)]], dtype=torch.float64)
        out_h, out_w = self.input_size
        center, size = box_center_size(box, out_w / out_h, self.box_padding)
        center, size = center[0].tolist(), size[0].tolist()
        rotation, flip = 0.0, False
        if self.train:
            factor = 2.0 ** self._clipped_normal(self.scale_sigma)
            size = [size[0] * factor, size[1] * factor]
            if self._rng.random() < self.rotation_prob:
                rotation = self._clipped_normal(self.rotation_sigma)
            flip = bool(self._rng.random() < self.flip_prob)
        matrix = crop_matrix(center, size, self.input_size, rotation, flip)
        image = warp_image(sample.image, matrix, self.input_size)  # [H, W, 3] uint8
        if self.train and self.color_range is not None:
            gains = self._rng.uniform(*self.color_range, size=3)
            image = np.clip(image.astype(np.float32) * gains, 0, 255).round().astype(np.uint8)
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()  # [3, H, W]
        crop = AffineCrop.from_matrix(
            matrix, self.input_size, center=(center[0], center[1]), size=(size[0], size[1]),
            rotation=rotation, flip=flip,
        )
        meta = replace(sample.meta, crop=crop)
        new_targets = None
        if targets is not None:
            new_targets = self._targets_after(targets, matrix, flip, sample.meta.file_name)
        return Sample(image=image_t, meta=meta, keypoints=new_targets)

    def _targets_after(
        self, targets: KeypointTargets, matrix: torch.Tensor, flip: bool, file_name: str
    ) -> KeypointTargets:
        kpts = targets.keypoints.clone().float()  # [1, K, 3]
        labelled = kpts[..., 2] > 0
        xy = apply_affine(kpts[..., :2].double(), matrix).float()
        kpts[..., :2] = torch.where(labelled[..., None], xy, torch.zeros_like(xy))
        if flip:
            perm = self.flip_permutation
            if perm is None:
                raise ValueError(
                    f"{file_name}: TopDownAffine flipped a sample but has no flip_permutation; "
                    f"call bind(info) (the keypoint DataModules do) or pass flip_permutation"
                )
            if len(perm) != kpts.shape[1]:
                raise ValueError(
                    f"flip_permutation has {len(perm)} entries for {kpts.shape[1]} keypoints"
                )
            kpts = kpts[:, torch.as_tensor(perm, dtype=torch.long)]
        boxes = targets.boxes
        if boxes is not None:
            x1, y1, x2, y2 = boxes.double().unbind(-1)
            corners = torch.stack(
                [torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
                 torch.stack([x1, y2], -1), torch.stack([x2, y2], -1)], dim=1
            )  # [1, 4, 2]
            mapped = apply_affine(corners, matrix)
            boxes = torch.cat([mapped.amin(1), mapped.amax(1)], dim=-1).float()  # [1, 4]
        return replace(targets, keypoints=kpts, boxes=boxes, image_size=self.input_size,
                       heatmaps=None, weights=None)

