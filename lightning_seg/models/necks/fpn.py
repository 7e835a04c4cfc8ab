"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

Numerically equal to ``torchvision.ops.FeaturePyramidNetwork`` with ``LastLevelMaxPool`` once the
weights are copied (golden test). Parameter layout, with ``f`` the input level name::

    lateral_convs.{f}.{weight,bias}   1x1 conv  <-  torchvision inner_blocks.{i}.0.{weight,bias}
    output_convs.{f}.{weight,bias}    3x3 conv  <-  torchvision layer_blocks.{i}.0.{weight,bias}

where ``i`` is the index of ``f`` in ``in_features`` (see ``fpn_key_map_from_torchvision``).
In torchvision's ``maskrcnn_resnet50_fpn`` these keys live under ``backbone.fpn.``. With
``extra_levels="conv"`` the stride-2 convs are ``extra_convs.{i}.{weight,bias}``.

Options for the other detectors' pyramids: YOLACT (Bolya et al., ICCV 2019) upsamples
bilinearly, puts a ReLU after each 3x3 output conv and makes P6 / P7 with two stride-2 3x3 convs
on P5 (no ReLU after them): ``upsample_mode="bilinear", output_relu=True, extra_levels="conv",
num_extra_levels=2, init="xavier_uniform"``.
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
    """Top-down pathway with lateral 1x1 and output 3x3 convs; optional coarser levels.

    A network receives the FPN as a callable of its backbone's shapes (YAML: ``class_path``
    ``FPN`` with the arguments below except ``input_shape``), so channels and strides are never
    typed twice.

    Args:
        input_shape: ``{level: ShapeSpec}`` of the backbone (its ``output_shape()``).
        out_channels: channels of every pyramid level (256 in the paper).
        in_features: backbone levels used, finest first (consecutive factor-2 strides).
        extra_levels: coarser levels added on top of the coarsest output: ``"max_pool"``
            (stride-2 subsampling, ``max_pool2d`` with kernel 1, as Mask R-CNN's P6 for the
            RPN), ``"conv"`` (a stride-2 3x3 conv each, chained, as YOLACT's P6 / P7) or None.
        num_extra_levels: how many extra levels (each halves the previous one).
        upsample_mode: ``F.interpolate`` mode of the top-down pathway (``"nearest"`` in the
            FPN paper; ``"bilinear"`` with ``align_corners=False`` in YOLACT).
        output_relu: ReLU after each 3x3 output conv (YOLACT); the extra levels are made from
            the coarsest output after it.
        init: ``"kaiming_uniform"`` (``a=1``, as torchvision / Detectron) or
            ``"xavier_uniform"`` (YOLACT); biases start at 0.
        extra_max_pool: the older spelling of ``extra_levels``: True is ``"max_pool"``, False
            is None (one level); None defers to ``extra_levels``.

    Attributes:
        out_channels: ``{"p2": 256, ..., "p6": 256}``.
        strides: ``{"p2": 4, ..., "p6": 64}`` (names follow ``p{log2(stride)}``).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        out_channels: int = 256,
        in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
        extra_levels: str | None = "max_pool",
        num_extra_levels: int = 1,
        upsample_mode: str = "nearest",
        output_relu: bool = False,
        init: str = "kaiming_uniform",
        extra_max_pool: bool | None = None,
    ) -> None:
        super().__init__()
        if extra_max_pool is not None:
            extra_levels, num_extra_levels = ("max_pool", 1) if extra_max_pool else (None, 0)
        if extra_levels not in ("max_pool", "conv", None):
            raise ValueError(f"extra_levels must be 'max_pool', 'conv' or None, got {extra_levels!r}")
        if extra_levels is None:
            num_extra_levels = 0
        if num_extra_levels < 0:
            raise ValueError(f"num_extra_levels must be >= 0, got {num_extra_levels}")
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {upsample_mode!r}")
        if init not in ("kaiming_uniform", "xavier_uniform"):
            raise ValueError(f"init must be 'kaiming_uniform' or 'xavier_uniform', got {init!r}")
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
        self.extra_levels = extra_levels
        self.num_extra_levels = num_extra_levels
        self.upsample_mode = upsample_mode
        self.output_relu = output_relu
        self.lateral_convs = nn.ModuleDict(
            {f: nn.Conv2d(input_shape[f].channels, out_channels, kernel_size=1) for f in self.in_features}
        )
        self.output_convs = nn.ModuleDict(
            {
                f: nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
                for f in self.in_features
            }
        )
        if extra_levels == "conv":
            self.extra_convs = nn.ModuleList(
                nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
                for _ in range(num_extra_levels)
            )
        out_strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels)]
        self.strides: dict[str, int] = {level_name(s): s for s in out_strides}
        self.out_channels: dict[str, int] = {name: out_channels for name in self.strides}
        self._out_names = list(self.strides)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if init == "xavier_uniform":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Build the pyramid.

        Args:
            features: backbone levels ``{f: Tensor[B, in_channels[f], H_f, W_f]}`` (extra keys
                are ignored).

        Returns:
            ``{"p2": Tensor[B, out_channels, H_2, W_2], ..., "p6": ...}``, finest first; each
            level has the spatial size of its input level (an extra level: ``ceil(H / 2)`` of
            the previous one).
        """
        top_down = self.lateral_convs[self.in_features[-1]](features[self.in_features[-1]])
        outputs = [self._output(self.in_features[-1], top_down)]
        for f in reversed(self.in_features[:-1]):
            lateral = self.lateral_convs[f](features[f])
            top_down = lateral + self._upsample(top_down, lateral.shape[-2:])
            outputs.insert(0, self._output(f, top_down))
        for i in range(self.num_extra_levels):
            if self.extra_levels == "conv":
                outputs.append(self.extra_convs[i](outputs[-1]))
            else:
                outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return dict(zip(self._out_names, outputs))

    def _upsample(self, x: Tensor, size) -> Tensor:
        if self.upsample_mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")

    def _output(self, level: str, top_down: Tensor) -> Tensor:
        out = self.output_convs[level](top_down)
        return F.relu(out) if self.output_relu else out


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
