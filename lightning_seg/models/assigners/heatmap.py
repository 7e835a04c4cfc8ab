"""Heatmap targets of top-down keypoint heads: Gaussians on the head's output grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_seg.ops.heatmaps import ENCODINGS, Encoding, render_heatmaps
from lightning_seg.structures import KeypointTargets


class GaussianHeatmapTargets:
    """Render the keypoints of a batch of top-down samples as Gaussian heatmaps.

    Args:
        sigma: Gaussian sigma in output cells (2 on a 64 x 48 / 64 x 64 grid, mmpose and
            SimpleBaseline; the official Hourglass kernel is ``encoding="hourglass"``).
        encoding: ``"msra"``, ``"hourglass"`` or ``"unbiased"`` (``ops.heatmaps``).
        kernel_size: size of the official Hourglass kernel (sigma ``0.25 * kernel_size``).
    """

    def __init__(self, sigma: float = 2.0, encoding: Encoding = "msra", kernel_size: int = 7) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.sigma = float(sigma)
        self.encoding = encoding
        self.kernel_size = int(kernel_size)

    def __call__(
        self, targets: Sequence[KeypointTargets], heatmap_size: Sequence[int], stride: float
    ) -> tuple[Tensor, Tensor]:
        """Targets of B samples with one instance each.

        Args:
            targets: one ``KeypointTargets`` per sample, keypoints in the input frame.
            heatmap_size: ``(h, w)`` of the head's output.
            stride: input pixels per output cell.

        Returns:
            ``Tensor[B, K, h, w]`` heatmaps and ``Tensor[B, K]`` target weights.
        """
        keypoints = torch.cat([stack_one(t) for t in targets])  # [B, K, 3]
        return render_heatmaps(
            keypoints, heatmap_size, stride, self.sigma, self.encoding, self.kernel_size
        )


def stack_one(targets: KeypointTargets) -> Tensor:
    """``Tensor[1, K, 3]`` keypoints of a top-down sample; a clear error when it holds another
    number of instances."""
    if len(targets) != 1:
        raise ValueError(
            f"a top-down keypoint head needs one instance per sample, got {len(targets)}; crop "
            f"the instances with lightning_seg.data.topdown.TopDownAffine (the keypoint "
            f"DataModules do)"
        )
    return targets.keypoints
