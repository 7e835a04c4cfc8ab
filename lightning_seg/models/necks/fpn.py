"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

Numerically equal to ``torchvision.ops.FeaturePyramidNetwork`` with ``LastLevelMaxPool`` once the
weights are copied (golden test). Parameter layout, with ``f`` the input level name::

    lateral_convs.{f}.{weight,bias}   1x1 conv  <-  torchvision inner_blocks.{i}.0.{weight,bias}
    output_convs.{f}.{weight,bias}    3x3 conv  <-  torchvision layer_blocks.{i}.0.{weight,bias}

where ``i`` is the index of ``f`` in ``in_features`` (see ``fpn_key_map_from_torchvision``).
In torchvision's ``maskrcnn_resnet50_fpn`` these keys live under ``backbone.fpn.``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.structures.specs import FeatureShapes, FeatureShapesMixin


def level_name(stride: int) -> str:
    """Name of the pyramid level of a stride: 4 -> ``"p2"``, 64 -> ``"p6"``."""
    level = math.log2(stride)
    if stride < 1 or level != int(level):
        raise ValueError(f"FPN input strides must be powers of two, got {stride}")
    return f"p{int(level)}"


class FPN(FeatureShapesMixin, nn.Module):
    """Top-down pathway with lateral 1x1 and output 3x3 convs; optional P6 by subsampling P5.

    A network receives the FPN as a callable of its backbone's shapes (YAML: ``class_path``
    ``FPN`` with the arguments below except ``input_shape``), so channels and strides are never
    typed twice.

    Args:
        input_shape: ``{level: ShapeSpec}`` of the backbone (its ``output_shape()``).
        out_channels: channels of every pyramid level (256 in the paper).
        in_features: backbone levels used, finest first (consecutive factor-2 strides).
        extra_max_pool: add one coarser level by stride-2 subsampling of the coarsest output
            (``max_pool2d`` with kernel 1, as Mask R-CNN's P6 for the RPN).

    Attributes:
        out_channels: ``{"p2": 256, ..., "p6": 256}``.
        strides: ``{"p2": 4, ..., "p6": 64}`` (names follow ``p{log2(stride)}``).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        out_channels: int = 256,
        in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
        extra_max_pool: bool = True,
    ) -> None:
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"FPN in_features {missing} are not among the backbone levels {list(input_shape)}; "
                f"set in_features to levels the backbone returns (its out_features)"
            )
        strides = [int(input_shape[f].stride) for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"FPN in_features must be finest first with strides doubling, got {strides}"
            )
        self.in_features = tuple(in_features)
        self.extra_max_pool = extra_max_pool
        self.lateral_convs = nn.ModuleDict(
            {f: nn.Conv2d(input_shape[f].channels, out_channels, kernel_size=1) for f in self.in_features}
        )
        self.output_convs = nn.ModuleDict(
            {
                f: nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
                for f in self.in_features
            }
        )
        out_strides = strides + ([strides[-1] * 2] if extra_max_pool else [])
        self.strides: dict[str, int] = {level_name(s): s for s in out_strides}
        self.out_channels: dict[str, int] = {name: out_channels for name in self.strides}
        self._out_names = list(self.strides)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Build the pyramid.

        Args:
            features: backbone levels ``{f: Tensor[B, in_channels[f], H_f, W_f]}`` (extra keys
                are ignored).

        Returns:
            ``{"p2": Tensor[B, out_channels, H_2, W_2], ..., "p6": ...}``, finest first; each
            level has the spatial size of its input level (P6: ``ceil(H_5 / 2)``).
        """
        top_down = self.lateral_convs[self.in_features[-1]](features[self.in_features[-1]])
        outputs = [self.output_convs[self.in_features[-1]](top_down)]
        for f in reversed(self.in_features[:-1]):
            lateral = self.lateral_convs[f](features[f])
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output_convs[f](top_down))
        if self.extra_max_pool:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return dict(zip(self._out_names, outputs))


def fpn_key_map_from_torchvision(
    in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
    src_prefix: str = "backbone.fpn.",
    dst_prefix: str = "",
) -> dict[str, str]:
    """State-dict key correspondence torchvision ``FeaturePyramidNetwork`` -> ``FPN``.

    Covers both torchvision layouts (``inner_blocks.{i}.0.weight`` since v2,
    ``inner_blocks.{i}.weight`` before); map the keys a state dict has. ``LastLevelMaxPool``
    has no parameters.

    Args:
        in_features: the ``FPN``'s ``in_features`` (torchvision block ``i`` is ``in_features[i]``).
        src_prefix: prefix of the torchvision keys (``"backbone.fpn."`` in its detectors).
        dst_prefix: prefix of our keys (where the ``FPN`` sits in our model, e.g. ``"neck."``).

    Returns:
        ``{torchvision_key: our_key}``.
    """
    mapping = {}
    for i, f in enumerate(in_features):
        blocks = (("inner_blocks", "lateral_convs"), ("layer_blocks", "output_convs"))
        for src_block, dst_block in blocks:
            for param in ("weight", "bias"):
                dst = f"{dst_prefix}{dst_block}.{f}.{param}"
                mapping[f"{src_prefix}{src_block}.{i}.0.{param}"] = dst
                mapping[f"{src_prefix}{src_block}.{i}.{param}"] = dst
    return mapping
