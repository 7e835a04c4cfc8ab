"""The crop a top-down sample was cut with, so that predictions can be mapped back exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AffineCrop:
    """An affine crop of the image on disk: the map from its frame to the network input.

    Top-down pose datasets cut one instance out of an image (``lightning_seg.data.topdown``);
    the sample's image is the crop, ``SampleMeta.orig_size`` stays the size on disk, and this
    record lets a network map its predictions back (``inverse()``). Both frames are continuous
    pixel frames (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``).

    Attributes:
        matrix: the 6 numbers ``(a, b, c, d, e, f)`` of the 2 x 3 map ``x' = a x + b y + c``,
            ``y' = d x + e y + f`` from the original image to the input (float64 values).
        input_size: ``(H, W)`` of the crop.
        center: ``(cx, cy)`` of the crop window in the original image.
        size: ``(w, h)`` of the crop window in original pixels (before rotation).
        rotation: degrees the content was turned (counter-clockwise on screen).
        flip: whether the crop was mirrored (its keypoints were then swapped left/right).
    """

    matrix: tuple[float, ...]
    input_size: tuple[int, int]
    center: tuple[float, float] = (0.0, 0.0)
    size: tuple[float, float] = (0.0, 0.0)
    rotation: float = 0.0
    flip: bool = False

    def __post_init__(self) -> None:
        if len(self.matrix) != 6:
            raise ValueError(f"matrix must hold 6 numbers (a 2 x 3 map), got {len(self.matrix)}")

    @classmethod
    def from_matrix(cls, matrix: Tensor, input_size: Sequence[int], **info) -> AffineCrop:
        """From a ``Tensor[2, 3]`` map (``lightning_seg.ops.affine.crop_matrix``)."""
        values = tuple(float(v) for v in matrix.reshape(-1).tolist())
        return cls(values, (int(input_size[0]), int(input_size[1])), **info)

    def forward(self) -> Tensor:
        """``Tensor[2, 3]`` float64: original image -> input."""
        return torch.tensor(self.matrix, dtype=torch.float64).view(2, 3)

    def inverse(self) -> Tensor:
        """``Tensor[2, 3]`` float64: input -> original image."""
        from lightning_seg.ops.affine import invert_affine

        return invert_affine(self.forward())

    def window(self) -> Tensor:
        """``Tensor[4]`` x1y1x2y2 of the (unrotated) crop window in the original image."""
        cx, cy = self.center
        w, h = self.size
        return torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
