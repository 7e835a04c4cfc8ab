"""Stacked Hourglass backbones: Newell et al. (ECCV 2016) and Hourglass-104 (CornerNet).

An hourglass module processes features down to a very low resolution and back up: at each
level an upper branch keeps the resolution (residual blocks), a lower branch downsamples,
recurses and is upsampled by nearest neighbour, and the two are *added*. Stacking several,
with the features of one fed into the next, gives repeated bottom-up / top-down inference.

Two styles, each the official structure of its paper:

* ``"newell"`` (princeton-vl/pose-hg-train @ 2fef691, ``src/models/hg.lua``,
  ``layers/Residual.lua``): pre-activation bottleneck residuals (BN-ReLU-1x1 to C/2,
  BN-ReLU-3x3, BN-ReLU-1x1 to C; the skip is a 1x1 conv only when the channels change),
  2 x 2 max-pool down, depth 4, 256 features, one residual per location; stem 7x7/2 conv 64 +
  BN + ReLU, Res(64 -> 128), max-pool, Res(128), Res(128 -> 256) (a 256 input gives 64 x 64
  features); after each hourglass a residual and a 1x1 conv-BN-ReLU give the stack's
  features; the next stack receives ``inter + 1x1(features)`` plus what the network adds
  (the heatmaps mapped back by a 1x1 conv, ``StackedHourglass``).
* ``"cornernet"`` (Law and Deng, ECCV 2018; Hourglass-104 of CornerNet / CenterNet): post-
  activation residuals (3x3 conv-BN-ReLU, 3x3 conv-BN, added to the skip, ReLU), the first
  residual of each lower branch downsamples with stride 2 (no max-pool), depth 5 with channels
  256, 256, 384, 384, 384, 512 and 2, 2, 2, 2, 2, 4 residuals per level; stem 7x7/2 conv 128 +
  BN + ReLU and a stride-2 residual to 256; each stack ends with a 3x3 conv-BN-ReLU; the next
  stack receives ``ReLU(BN(1x1(inter)) + BN(1x1(features)))`` through one more residual.
  ``hourglass104`` builds it.

``forward(images)`` returns the features of every stack, ``{"s0": ..., "s<n-1>": ...}``, each
at stride 4 (``output_shape()``); heads that supervise every stack (intermediate supervision)
read all of them, others read the last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.structures.specs import FeatureShapesMixin

Style = Literal["newell", "cornernet"]
#: ``inject(i, features_i) -> Tensor | None``: what a network adds to the input of stack i + 1.
Injector = Callable[[int, Tensor], Tensor | None]


class PreActResidual(nn.Module):
    """Newell et al.'s residual: pre-activation bottleneck, 1x1 conv skip when channels differ.

    Args:
        in_channels: input channels.
        out_channels: output channels (the bottleneck has half).
        stride: stride of the 3x3 conv (and of the skip conv); 1 in the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 2
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class BasicResidual(nn.Module):
    """CornerNet's residual: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus the skip (1x1 conv-BN when the
    shape changes), then ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv and of the skip.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels and stride == 1
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.skip(x))


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (bias, as the official Torch code) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


_BLOCKS = {"newell": PreActResidual, "cornernet": BasicResidual}


def _blocks(block: type[nn.Module], in_channels: int, out_channels: int, count: int,
            stride: int = 1, change_last: bool = False) -> nn.Sequential:
    """``count`` residuals from ``in_channels`` to ``out_channels``: the channel (and stride)
    change happens in the first block, or in the last one with ``change_last``."""
    layers = []
    for i in range(count):
        first, last = i == 0, i == count - 1
        if change_last:
            cin, cout = (in_channels, out_channels if last else in_channels)
            layers.append(block(cin, cout, stride if first else 1))
        else:
            cin = in_channels if first else out_channels
            layers.append(block(cin, out_channels, stride if first else 1))
    return nn.Sequential(*layers)


class HourglassModule(nn.Module):
    """One hourglass: ``depth`` levels of (upper branch + pooled, recursed, upsampled lower
    branch), added.

    Args:
        depth: number of downsamplings (4 in Newell et al., 5 in Hourglass-104).
        channels: ``depth + 1`` channel counts, outermost first.
        blocks: ``depth + 1`` residual counts per level, outermost first (the last is the
            bottom's).
        style: ``"newell"`` (max-pool down, pre-activation residuals) or ``"cornernet"``
            (stride-2 residual down, post-activation residuals).
    """

    def __init__(self, depth: int, channels: Sequence[int], blocks: Sequence[int],
                 style: Style = "newell") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if len(channels) != depth + 1 or len(blocks) != depth + 1:
            raise ValueError(
                f"channels and blocks need depth + 1 = {depth + 1} entries, got "
                f"{len(channels)} and {len(blocks)}"
            )
        if min(blocks) < 1:
            raise ValueError(f"every level needs at least one residual, got blocks={list(blocks)}")
        block = _BLOCKS[style]
        cur, nxt = int(channels[0]), int(channels[1])
        n = int(blocks[0])
        self.up1 = _blocks(block, cur, cur, n)
        if style == "newell":
            self.down = nn.MaxPool2d(2, 2)
            self.low1 = _blocks(block, cur, nxt, n)
        else:
            self.down = nn.Identity()
            self.low1 = _blocks(block, cur, nxt, n, stride=2)
        if depth > 1:
            self.low2: nn.Module = HourglassModule(depth - 1, channels[1:], blocks[1:], style)
        else:
            self.low2 = _blocks(block, nxt, nxt, int(blocks[1]))
        self.low3 = _blocks(block, nxt, cur, n, change_last=True)

    def forward(self, x: Tensor) -> Tensor:
        up1 = self.up1(x)
        low = self.low3(self.low2(self.low1(self.down(x))))
        up2 = F.interpolate(low, size=up1.shape[-2:], mode="nearest")  # x2 nearest
        return up1 + up2


class HourglassBackbone(FeatureShapesMixin, nn.Module):
    """Stacked hourglasses returning every stack's features (module docstring).

    Args:
        num_stacks: hourglasses in sequence (1, 2, 4, 8 in Newell et al.; 2 in Hourglass-104).
        depth: downsamplings per hourglass.
        channels: one count for every level (Newell: 256), or ``depth + 1`` counts.
        blocks: residuals per level (Newell: 1), or ``depth + 1`` counts.
        style: ``"newell"`` or ``"cornernet"`` (stem, residual, downsampling and merging).
        stem_channels: channels after the stem's first conv (Newell 64, CornerNet 128).

    ``forward(images, inject=None)``: ``images`` normalised ``Tensor[B, 3, H, W]`` with H and
    W multiples of ``4 * 2 ** depth``; ``inject(i, features_i)`` may return a tensor added to
    the input of stack ``i + 1`` (the Newell network adds its heatmaps there).
    """

    def __init__(
        self,
        num_stacks: int = 8,
        depth: int = 4,
        channels: int | Sequence[int] = 256,
        blocks: int | Sequence[int] = 1,
        style: Style = "newell",
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {num_stacks}")
        if style not in _BLOCKS:
            raise ValueError(f"style must be 'newell' or 'cornernet', got {style!r}")
        channels = [int(channels)] * (depth + 1) if isinstance(channels, int) else list(channels)
        blocks = [int(blocks)] * (depth + 1) if isinstance(blocks, int) else list(blocks)
        feat = channels[0]
        self.num_stacks = num_stacks
        self.depth = depth
        self.style = style
        block = _BLOCKS[style]
        if style == "newell":
            stem = stem_channels or 64
            self.stem = nn.Sequential(
                conv_bn_relu(3, stem, 7, stride=2),
                PreActResidual(stem, 128),
                nn.MaxPool2d(2, 2),
                PreActResidual(128, 128),
                PreActResidual(128, feat),
            )
        else:
            stem = stem_channels or 128
            self.stem = nn.Sequential(conv_bn_relu(3, stem, 7, stride=2), BasicResidual(stem, feat, 2))
        self.hourglasses = nn.ModuleList(
            HourglassModule(depth, channels, blocks, style) for _ in range(num_stacks)
        )
        if style == "newell":
            self.stack_outputs = nn.ModuleList(
                nn.Sequential(_blocks(block, feat, feat, blocks[0]), conv_bn_relu(feat, feat, 1))
                for _ in range(num_stacks)
            )
            self.merge_features = nn.ModuleList(nn.Conv2d(feat, feat, 1) for _ in range(num_stacks - 1))
            self.merge_inter = nn.ModuleList(nn.Identity() for _ in range(num_stacks - 1))
            self.after_merge = nn.ModuleList(nn.Identity() for _ in range(num_stacks - 1))
        else:
            self.stack_outputs = nn.ModuleList(conv_bn_relu(feat, feat, 3) for _ in range(num_stacks))
            self.merge_features = nn.ModuleList(
                nn.Sequential(nn.Conv2d(feat, feat, 1, bias=False), nn.BatchNorm2d(feat))
                for _ in range(num_stacks - 1)
            )
            self.merge_inter = nn.ModuleList(
                nn.Sequential(nn.Conv2d(feat, feat, 1, bias=False), nn.BatchNorm2d(feat))
                for _ in range(num_stacks - 1)
            )
            self.after_merge = nn.ModuleList(
                nn.Sequential(nn.ReLU(inplace=True), BasicResidual(feat, feat))
                for _ in range(num_stacks - 1)
            )
        names = [f"s{i}" for i in range(num_stacks)]
        self.out_channels = dict.fromkeys(names, feat)
        self.strides = dict.fromkeys(names, 4)

    @property
    def size_divisibility(self) -> int:
        """Input sizes must be multiples of this (stride 4 stem, ``depth`` halvings)."""
        return 4 * 2**self.depth

    def forward(self, images: Tensor, inject: Injector | None = None) -> dict[str, Tensor]:
        d = self.size_divisibility
        if images.shape[-2] % d or images.shape[-1] % d:
            raise ValueError(
                f"{type(self).__name__}: input {tuple(images.shape[-2:])} must be a multiple of "
                f"{d} (stride 4 and {self.depth} halvings); use ImagePreprocessor("
                f"size_divisibility={d}) or a crop of that size"
            )
        inter = self.stem(images)
        out = {}
        for i in range(self.num_stacks):
            features = self.stack_outputs[i](self.hourglasses[i](inter))
            out[f"s{i}"] = features
            if i < self.num_stacks - 1:
                merged = self.merge_inter[i](inter) + self.merge_features[i](features)
                extra = inject(i, features) if inject is not None else None
                if extra is not None:
                    merged = merged + extra
                inter = self.after_merge[i](merged)
        return out


def stacked_hourglass_backbone(num_stacks: int = 8, **kwargs) -> HourglassBackbone:
    """Newell et al.'s backbone: depth 4, 256 features, one pre-activation residual per
    location (``HourglassBackbone`` arguments in ``kwargs``)."""
    return HourglassBackbone(num_stacks=num_stacks, style="newell", **kwargs)


def hourglass104(num_stacks: int = 2) -> HourglassBackbone:
    """Hourglass-104 of CornerNet / CenterNet (Law and Deng 2018; Zhou et al. 2019): 2 stacks,
    depth 5, channels 256-256-384-384-384-512, residuals 2-2-2-2-2-4, input multiple of 128."""
    return HourglassBackbone(
        num_stacks=num_stacks,
        depth=5,
        channels=(256, 256, 384, 384, 384, 512),
        blocks=(2, 2, 2, 2, 2, 4),
        style="cornernet",
        stem_channels=128,
    )
