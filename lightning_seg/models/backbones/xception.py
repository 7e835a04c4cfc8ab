"""Aligned Xception as modified by DeepLab v3+ (Chen et al., ECCV 2018, Sec. 3.2; after Chollet,
CVPR 2017 and Dai et al., ICCV 2017): more middle-flow repeats (16), every max pool replaced by
a strided separable conv, and BatchNorm + ReLU after each depthwise conv.

The entry flow gives the decoder's stride-4 ``low_level`` feature (the second separable conv of
entry block 2, before its stride, as in the DeepLab reference code); output stride 16 or 8 is
reached with atrous rates, following the reference code's rule: the unit that would exceed the
output stride runs with stride 1 at the current rate, later units use ``rate * stride``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from lightning_seg.layers.conv import ActLayer, ConvNormAct, NormLayer, inplace_relu
from lightning_seg.layers.separable import SeparableConv2d
from lightning_seg.models.weights import load_checkpoint_file
from lightning_seg.structures.specs import FeatureShapesMixin


class XceptionBlock(nn.Module):
    """Three ``3x3`` separable convs (the last one strided) plus a shortcut.

    Args:
        in_channels: input channels C_in.
        channels: output channels of the three separable convs; C_out = ``channels[2]``.
        stride: stride of the third separable conv (and of the shortcut conv).
        dilation: atrous rate of the three depthwise convs.
        shortcut: ``"conv"`` (1x1 conv + BN, entry/exit flow), ``"identity"`` (middle flow) or
            ``"none"`` (last exit-flow block).
        norm_layer: normalisation constructor.
        act_layer: activation constructor.

    Shapes:
        ``Tensor[B, C_in, H, W] -> (Tensor[B, C_out, H / stride, W / stride],
        Tensor[B, channels[1], H, W])``: the output and the hidden feature before the stride.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        stride: int = 1,
        dilation: int = 1,
        shortcut: str = "conv",
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = inplace_relu,
    ) -> None:
        super().__init__()
        if shortcut not in ("conv", "identity", "none"):
            raise ValueError(f"shortcut must be 'conv', 'identity' or 'none', got {shortcut!r}")
        if shortcut == "identity" and (stride != 1 or in_channels != channels[2]):
            raise ValueError("an identity shortcut needs stride 1 and in_channels == channels[2]")
        c1, c2, c3 = channels
        kw = dict(dilation=dilation, norm_layer=norm_layer, act_layer=act_layer, depthwise_act_layer=act_layer)
        self.sep1 = SeparableConv2d(in_channels, c1, 3, **kw)
        self.sep2 = SeparableConv2d(c1, c2, 3, **kw)
        self.sep3 = SeparableConv2d(c2, c3, 3, stride=stride, **kw)
        self.shortcut_kind = shortcut
        self.shortcut = (
            ConvNormAct(in_channels, c3, 1, stride=stride, norm_layer=norm_layer, act_layer=None)
            if shortcut == "conv"
            else None
        )
        self.out_channels = c3

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.sep2(self.sep1(x))
        out = self.sep3(hidden)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        elif self.shortcut_kind == "identity":
            out = out + x
        return out, hidden


def _scaled(channels: int, multiplier: float) -> int:
    """Channels scaled by ``multiplier`` and rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * multiplier / 8)) * 8)


class XceptionBackbone(FeatureShapesMixin, nn.Module):
    """Aligned Xception-65 (DeepLab v3+) returning ``low_level`` (stride 4) and ``out``.

    Args:
        output_stride: 32, 16 (DeepLab v3+ training) or 8.
        middle_repeats: middle-flow blocks (16 in DeepLab v3+; 1 for tiny test variants).
        width_multiplier: scales every channel count (1.0 = the paper; tiny tests use 0.25).
        norm_layer: normalisation constructor.
        act_layer: activation constructor.
        out_features: among ``"low_level"`` and ``"out"``.
        weights_path: local checkpoint in this module's own key layout, or None.

    Attributes:
        out_channels: ``{"low_level": 256, "out": 2048}`` at width 1.
        strides: ``{"low_level": 4, "out": output_stride}``.

    Shapes:
        ``forward(Tensor[B, 3, H, W])`` (normalised) ``-> {"low_level": Tensor[B, 256, H/4, W/4],
        "out": Tensor[B, 2048, H/OS, W/OS]}`` (sizes rounded up).
    """

    def __init__(
        self,
        output_stride: int = 16,
        middle_repeats: int = 16,
        width_multiplier: float = 1.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = inplace_relu,
        out_features: Sequence[str] = ("low_level", "out"),
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        out_features = tuple(out_features)
        if not out_features or any(f not in ("low_level", "out") for f in out_features):
            raise ValueError(f"out_features must be a non-empty subset of ('low_level', 'out'), got {out_features}")
        self.out_features = out_features
        c = lambda n: _scaled(n, width_multiplier)  # noqa: E731
        layer = dict(norm_layer=norm_layer, act_layer=act_layer)

        self.stem = nn.Sequential(
            ConvNormAct(3, c(32), 3, stride=2, **layer),
            ConvNormAct(c(32), c(64), 3, **layer),
        )
        # (name, in, channels, nominal stride, shortcut); the stem already has stride 2
        plan = [("entry1", c(64), [c(128)] * 3, 2, "conv"), ("entry2", c(128), [c(256)] * 3, 2, "conv")]
        plan.append(("entry3", c(256), [c(728)] * 3, 2, "conv"))
        plan += [(f"middle{i + 1}", c(728), [c(728)] * 3, 1, "identity") for i in range(middle_repeats)]
        plan.append(("exit1", c(728), [c(728), c(1024), c(1024)], 2, "conv"))
        plan.append(("exit2", c(1024), [c(1536), c(1536), c(2048)], 1, "none"))

        current_stride, rate = 2, 1
        blocks: dict[str, nn.Module] = {}
        for name, in_ch, chans, stride, shortcut in plan:
            if current_stride * stride > output_stride:
                block_stride, block_rate = 1, rate
                rate *= stride
            else:
                block_stride, block_rate = stride, rate
                current_stride *= stride
            blocks[name] = XceptionBlock(in_ch, chans, block_stride, block_rate, shortcut, **layer)
        self.blocks = nn.ModuleDict(blocks)

        channels = {"low_level": c(256), "out": c(2048)}
        self.out_channels: dict[str, int] = {f: channels[f] for f in out_features}
        self.strides: dict[str, int] = {f: {"low_level": 4, "out": output_stride}[f] for f in out_features}
        if weights_path is not None:
            result = self.load_state_dict(load_checkpoint_file(weights_path, "weights_path"), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise KeyError(
                    f"{weights_path}: Xception checkpoint does not match this configuration: missing "
                    f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
                )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args:
            x: ``Tensor[B, 3, H, W]`` normalised images.

        Returns:
            the requested levels of ``{"low_level": ..., "out": ...}``.
        """
        out: dict[str, Tensor] = {}
        x = self.stem(x)
        for name, block in self.blocks.items():
            x, hidden = block(x)
            if name == "entry2" and "low_level" in self.out_features:
                out["low_level"] = hidden
                if "out" not in self.out_features:
                    return out
        if "out" in self.out_features:
            out["out"] = x
        return out
