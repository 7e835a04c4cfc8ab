"""Multi-level RoIAlign over a feature pyramid.

RoIAlign: He et al., "Mask R-CNN", ICCV 2017 (bilinear sampling at real-valued coordinates,
no quantisation). Level assignment: Lin et al., "Feature Pyramid Networks", CVPR 2017, eq. 1:
``k = floor(k0 + log2(sqrt(w * h) / 224))`` clamped to the available levels.

The sampling itself is ``torchvision.ops.roi_align``. ``aligned=True`` shifts the box by
-0.5 px so that a pixel's centre sits at ``(i + 0.5)`` (the paper / detectron2 convention);
torchvision's ``MultiScaleRoIAlign`` uses ``aligned=False`` (use that for torchvision parity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from lightning_seg.structures.specs import ShapeSpec


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Concatenate per-image boxes into the ``(batch_index, x1, y1, x2, y2)`` RoI format.

    Args:
        boxes: one ``Tensor[N_i, 4]`` x1y1x2y2 per image.

    Returns:
        ``Tensor[sum N_i, 5]``.
    """
    batch_index = torch.cat(
        [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0
    )  # [R, 1]
    return torch.cat([batch_index, torch.cat(list(boxes), dim=0)], dim=1)  # [R, 5]


def map_boxes_to_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box (FPN paper eq. 1), clamped to ``[min_level, max_level]``.

    Args:
        boxes: ``Tensor[R, 4]`` x1y1x2y2 pixels of the input image.
        min_level: finest available level (2 for P2, stride 4).
        max_level: coarsest available level (5 for P5, stride 32).
        canonical_box_size: box side mapped to ``canonical_level`` (224, the ImageNet size).
        canonical_level: ``k0`` (4).
        eps: added before ``floor`` so that boxes exactly at a level boundary are stable.

    Returns:
        ``Tensor[R]`` int64 absolute level indices.
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [R]
    levels = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_box_size) + eps)
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


def multilevel_roi_align(
    features: Sequence[Tensor],
    strides: Sequence[int],
    boxes: Sequence[Tensor],
    output_size: int | tuple[int, int],
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """Pool every box from the pyramid level that suits its size.

    Args:
        features: per level ``Tensor[B, C, H_l, W_l]``, finest first, strides powers of two.
        strides: stride of each level in input pixels (e.g. ``(4, 8, 16, 32)``).
        boxes: one ``Tensor[N_i, 4]`` x1y1x2y2 per image, in input pixels.
        output_size: ``S`` or ``(S_h, S_w)`` of the pooled grid.
        sampling_ratio: bilinear samples per bin side (2 in the paper; <= 0: adaptive).
        aligned: half-pixel-correct sampling (paper); False reproduces torchvision's pooler.
        canonical_box_size: see ``map_boxes_to_levels``.
        canonical_level: see ``map_boxes_to_levels``.

    Returns:
        ``Tensor[R, C, S_h, S_w]`` in the order of ``torch.cat(boxes)``, dtype of ``features[0]``.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    rois = boxes_to_rois(boxes)  # [R, 5]; kept in the boxes' dtype (autocast casts inside)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, 1.0 / strides[0], sampling_ratio, aligned)
    level_of = [int(round(math.log2(s))) for s in strides]
    if level_of != list(range(level_of[0], level_of[0] + len(level_of))):
        raise ValueError(f"strides must be consecutive powers of two, finest first; got {strides}")
    levels = map_boxes_to_levels(
        rois[:, 1:].float(), level_of[0], level_of[-1], canonical_box_size, canonical_level
    ) - level_of[0]  # [R] in 0..L-1
    # Group the RoIs by level with a single host sync (the counts), pool each group, and
    # write each group's result straight into its rows of the output (one copy per level).
    order = torch.argsort(levels, stable=True)  # [R]
    counts = torch.bincount(levels, minlength=len(features)).tolist()
    rois_by_level = rois[order].split(counts)
    rows_by_level = order.split(counts)
    out = features[0].new_empty((rois.shape[0], features[0].shape[1], *output_size))
    for f, s, r, rows in zip(features, strides, rois_by_level, rows_by_level):
        if len(rows) > 0:
            pooled = roi_align(f, r, output_size, 1.0 / s, sampling_ratio, aligned)
            out.index_copy_(0, rows, pooled.to(out.dtype))  # [R, C, S_h, S_w], input order
    return out


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign over named pyramid levels (a module wrapper of ``multilevel_roi_align``).

    Args:
        in_features: names of the levels to pool from, finest first (e.g. ``p2``..``p5``).
        strides: stride of every level by name (a neck's ``strides``); only ``in_features``
            are used.
        output_size: ``S`` of the ``S x S`` pooled grid (7 for boxes, 14 for masks).
        sampling_ratio: bilinear samples per bin side (paper: 2).
        aligned: half-pixel-correct RoIAlign (paper, detectron2); torchvision uses False.
        canonical_box_size: box side that maps to ``canonical_level`` (224).
        canonical_level: ``k0`` of FPN eq. 1 (4).
    """

    def __init__(
        self,
        in_features: Sequence[str],
        strides: Mapping[str, int],
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = True,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        missing = [name for name in in_features if name not in strides]
        if missing:
            raise ValueError(
                f"levels {missing} have no stride; available levels: {sorted(strides)}"
            )
        self.in_features = list(in_features)
        self.level_strides = [int(strides[name]) for name in self.in_features]
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, features: Mapping[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pool ``boxes`` (one ``Tensor[N_i, 4]`` per image, input pixels).

        Returns:
            ``Tensor[sum N_i, C, S, S]``.
        """
        return multilevel_roi_align(
            [features[name] for name in self.in_features],
            self.level_strides,
            boxes,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            self.canonical_box_size,
            self.canonical_level,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


def pooled_channels(input_shape: Mapping[str, ShapeSpec], in_features: Sequence[str]) -> int:
    """Channels of the features a RoI head pools from ``in_features`` (they must agree)."""
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(f"levels {missing} are not among the neck's levels {list(input_shape)}")
    widths = {input_shape[f].channels for f in in_features}
    if len(widths) != 1:
        raise ValueError(f"RoI heads pool levels of one width; {list(in_features)} have {widths}")
    return widths.pop()
