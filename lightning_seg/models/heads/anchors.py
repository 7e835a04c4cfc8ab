"""Anchors per feature level (Ren et al., Faster R-CNN, NeurIPS 2015; FPN, CVPR 2017).

Values and order equal torchvision's ``AnchorGenerator`` (golden test): per level, anchors are
ordered row-major over the grid ``(y, x)`` and, at each location, over
``(aspect_ratio, size)`` with the aspect ratio major.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred anchors of one level.

    Aspect ratio is ``h / w``; an anchor of size ``s`` and ratio ``r`` has ``w = s / sqrt(r)``,
    ``h = s * sqrt(r)`` (area ``s^2``), corners rounded to integers as in Detectron/torchvision.

    Args:
        sizes: anchor sizes (sqrt of the area) in pixels.
        aspect_ratios: ``h / w`` ratios.

    Returns:
        ``Tensor[len(aspect_ratios) * len(sizes), 4]`` float32 ``x1y1x2y2`` around ``(0, 0)``.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # [R*S], ratio major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors of ``len(sizes[l]) * len(aspect_ratios[l])`` shapes at every location of level ``l``.

    Anchor centres sit at ``(x * stride_x, y * stride_y)`` for grid cell ``(y, x)``. The spacing
    follows torchvision's rule ``image extent // grid size``, where the image extent is the finest
    level's grid times its nominal stride (``strides[0]``; the padded image size whenever the
    padded size is a multiple of it, e.g. size divisibility 32). It equals the nominal stride on
    every level except one made by an odd-size stride-2 subsampling: P6 of a 25-row P5 has
    spacing ``800 // 13 = 61`` rather than 64 along y, exactly as torchvision's detectors do
    (and as their trained weights expect).

    Args:
        sizes: per level, anchor sizes in pixels (Mask R-CNN FPN: 32..512, one per level).
        aspect_ratios: per level, ``h / w`` ratios (Mask R-CNN: 0.5, 1, 2 on every level).
        strides: per level, nominal stride of the feature map (the neck's ``strides``).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),) * 5,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
    ) -> None:
        super().__init__()
        if not (len(sizes) == len(aspect_ratios) == len(strides)):
            raise ValueError(
                f"sizes ({len(sizes)}), aspect_ratios ({len(aspect_ratios)}) and strides "
                f"({len(strides)}) must have one entry per feature level"
            )
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.strides = tuple(int(s) for s in strides)
        for level, (s, r) in enumerate(zip(self.sizes, self.aspect_ratios)):
            self.register_buffer(f"cell_anchors_{level}", cell_anchors(s, r), persistent=False)

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def num_anchors_per_location(self) -> list[int]:
        """``A`` per level: ``len(sizes[l]) * len(aspect_ratios[l])``."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def level_strides(self, grid_sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Anchor spacing ``(stride_y, stride_x)`` per level for these grid sizes (class doc)."""
        extent_h = grid_sizes[0][0] * self.strides[0]
        extent_w = grid_sizes[0][1] * self.strides[0]
        return [(extent_h // h, extent_w // w) for h, w in grid_sizes]

    def grid_anchors(
        self,
        grid_sizes: Sequence[tuple[int, int]],
        strides: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
    ) -> list[Tensor]:
        """Anchors for explicit grid sizes and spacings.

        Args:
            grid_sizes: ``(H_l, W_l)`` per level.
            strides: ``(stride_y, stride_x)`` per level.
            device: where to build them.

        Returns:
            per level ``Tensor[H_l * W_l * A_l, 4]`` float32 ``x1y1x2y2``, ordered ``(y, x, a)``.
        """
        if len(grid_sizes) != self.num_levels or len(strides) != self.num_levels:
            raise ValueError(
                f"got {len(grid_sizes)} feature levels, the anchor generator has {self.num_levels} "
                f"(sizes {self.sizes}); give one sizes/aspect_ratios entry per level"
            )
        anchors = []
        for level, ((h, w), (sy, sx)) in enumerate(zip(grid_sizes, strides)):
            base = getattr(self, f"cell_anchors_{level}").to(device)  # [A, 4]
            shift_x = torch.arange(w, dtype=torch.float32, device=device) * sx  # [W]
            shift_y = torch.arange(h, dtype=torch.float32, device=device) * sy  # [H]
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W]
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
            anchors.append((shifts + base[None]).reshape(-1, 4))  # [H*W*A, 4]
        return anchors

    def forward(
        self, grid_sizes: Sequence[tuple[int, int]], device: torch.device | str | None = None
    ) -> list[Tensor]:
        """Anchors of every level, the same for all images of a padded batch.

        Args:
            grid_sizes: ``(H_l, W_l)`` of each feature level, finest first.
            device: where to build them.

        Returns:
            per level ``Tensor[H_l * W_l * A_l, 4]`` float32 ``x1y1x2y2`` in padded-image pixels.
        """
        grid_sizes = [(int(h), int(w)) for h, w in grid_sizes]
        return self.grid_anchors(grid_sizes, self.level_strides(grid_sizes), device)
