"""U-Net (Ronneberger, Fischer and Brox, MICCAI 2015).

Two variants, one class:

* ``padding="valid"`` (the paper): 3x3 valid convs, so the output is smaller than the input
  (572 -> 388 at depth 4). ``forward`` still returns logits of the input size with the
  paper's *overlap-tile* strategy: the input is mirror-extrapolated by the margin
  (``(input_size_for(o) - o) / 2``, 92 px at depth 4) and, when larger than ``tile_size``,
  split into tiles whose outputs are disjoint and whose inputs overlap.
* ``padding="same"`` (the practical default, with BatchNorm): the output has the input size
  once the input is a multiple of ``2**depth``; ``forward`` mirror-pads to that and crops back.

Tiles also apply to the "same" variant (with ``tile_size``), which bounds memory on big images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.layers.conv import ConvNormAct, NormLayer
from lightning_seg.models.detectors.semantic import SemanticSegmentor
from lightning_seg.models.preprocess import ImagePreprocessor


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Mirror (reflect) extrapolation by any amount, reflecting repeatedly when the pad is
    larger than the image (``F.pad(mode="reflect")`` alone needs pad < size).

    Shapes:
        ``Tensor[B, C, H, W] -> Tensor[B, C, top + H + bottom, left + W + right]``.
    """
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pads must be >= 0, got {(top, bottom, left, right)}")
    while top > 0 or bottom > 0 or left > 0 or right > 0:
        h, w = x.shape[-2:]
        if (h < 2 and (top or bottom)) or (w < 2 and (left or right)):
            # a single row/column cannot be reflected: replicate it
            x = F.pad(x, (left, right, top, bottom), mode="replicate")
            break
        t, b = min(top, h - 1), min(bottom, h - 1)
        lf, r = min(left, w - 1), min(right, w - 1)
        x = F.pad(x, (lf, r, t, b), mode="reflect")
        top, bottom, left, right = top - t, bottom - b, left - lf, right - r
    return x


def _center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop the centre ``size`` of ``Tensor[B, C, H, W]`` (the paper's skip cropping)."""
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[:, :, top : top + size[0], left : left + size[1]]


class UNet(SemanticSegmentor):
    """U-Net with valid (paper) or same (padded) 3x3 convolutions.

    The paper's border-weighted loss is the criterion ``BorderWeightedCrossEntropy`` (a YAML
    switch: ``criterion: {class_path: lightning_seg.models.losses.BorderWeightedCrossEntropy}``).

    Args:
        num_classes: K output channels (filled from the dataset).
        in_channels: image channels (3).
        base_channels: channels of the first level (64); doubled at each of the ``depth``
            poolings (1024 at the bottom for depth 4).
        depth: number of 2x2 max-poolings (4 in the paper).
        padding: ``"valid"`` (paper, output smaller) or ``"same"``.
        norm_layer: normalisation after each 3x3 conv, e.g. ``nn.BatchNorm2d``; None for the
            paper's plain conv + ReLU.
        bottom_dropout: dropout at the end of the contracting path (the paper mentions
            dropout there without giving a rate; 0 disables it).
        tile_size: ``(h, w)`` network input tile for overlap-tile inference, or None to process
            the whole (padded) image at once. For "valid" it is rounded down to a valid size.
        ignore_index: label of void pixels (filled from the dataset); for the default criterion.
        criterion: the loss part (``SemanticSegmentor``); None: cross-entropy.
        preprocessor: normalisation (``SemanticSegmentor``); None: ImageNet mean / std.
        inference_window, inference_stride: sliding-window inference (``SemanticSegmentor``).

    Inputs / outputs: the ``SemanticSegmentor`` contract (``model(batch)``;
    ``model.logits(images)`` gives ``Tensor[B, K, H, W]`` logits, both variants).
    ``forward_tile`` runs the bare network: ``Tensor[B, 3, h, w]`` (normalised) ->
        ``Tensor[B, K, *output_size((h, w))]``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        in_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        padding: str = "same",
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        bottom_dropout: float = 0.0,
        tile_size: Sequence[int] | None = None,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        num_classes = self.num_classes
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.padding = padding
        pad = 1 if padding == "same" else 0

        def double_conv(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                ConvNormAct(c_in, c_out, 3, padding=pad, norm_layer=norm_layer),
                ConvNormAct(c_out, c_out, 3, padding=pad, norm_layer=norm_layer),
            )

        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans[:-1]:
            self.down.append(double_conv(c_prev, c))
            c_prev = c
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = double_conv(chans[-2], chans[-1])
        self.bottom_dropout = nn.Dropout(bottom_dropout)
        self.up = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for c_high, c_low in zip(chans[:0:-1], chans[-2::-1]):
            self.up.append(nn.ConvTranspose2d(c_high, c_low, 2, stride=2))  # 2x2 up-conv halving channels
            self.up_convs.append(double_conv(2 * c_low, c_low))
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                # the paper's init: Gaussian with std sqrt(2 / N), N = incoming nodes
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        if tile_size is not None:
            tile_size = tuple(int(t) for t in tile_size)
            if padding == "valid":
                tile_size = tuple(self._round_down_valid(t) for t in tile_size)
            else:
                tile_size = tuple(max(t // 2**depth, 1) * 2**depth for t in tile_size)
        self.tile_size: tuple[int, int] | None = tile_size  # type: ignore[assignment]

    # ------------------------------------------------------------------ sizes

    def _output_size_1d(self, size: int) -> int | None:
        """Output length of the bare network for an input length, None when invalid."""
        if self.padding == "same":
            return size if size % 2**self.depth == 0 else None
        s = size
        for _ in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                return None
            s //= 2
        s -= 4
        if s <= 0:
            return None
        for _ in range(self.depth):
            s = 2 * s - 4
        return s

    def _input_size_for_1d(self, out: int) -> int:
        if self.padding == "same":
            return math.ceil(out / 2**self.depth) * 2**self.depth
        s = max(out, 1)
        for _ in range(self.depth):
            s = math.ceil((s + 4) / 2)
        s += 4
        for _ in range(self.depth):
            s = 2 * s + 4
        return s

    def _round_down_valid(self, size: int) -> int:
        s = size
        while s > 0 and self._output_size_1d(s) is None:
            s -= 1
        if s <= 0:
            raise ValueError(f"tile size {size} is too small for a valid U-Net of depth {self.depth}")
        return s

    def output_size(self, input_size: Sequence[int]) -> tuple[int, int]:
        """Output ``(h, w)`` of the bare network (``forward_tile``) for an input ``(h, w)``.

        Raises:
            ValueError: when a size is not valid, naming the nearest valid sizes.
        """
        out = []
        for s in input_size:
            o = self._output_size_1d(int(s))
            if o is None:
                lower = [v for v in range(int(s) - 1, max(int(s) - 2 ** (self.depth + 1), 0), -1)
                         if self._output_size_1d(v) is not None]
                upper = next(v for v in range(int(s) + 1, int(s) + 2 ** (self.depth + 1) + 100)
                             if self._output_size_1d(v) is not None)
                hint = f"{lower[0]} or {upper}" if lower else f"{upper}"
                raise ValueError(
                    f"input size {tuple(int(v) for v in input_size)} is not valid for a {self.padding} U-Net "
                    f"of depth {self.depth}: use {hint} instead of {int(s)} (forward() pads automatically)"
                )
            out.append(o)
        return out[0], out[1]

    def input_size_for(self, output_size: Sequence[int]) -> tuple[int, int]:
        """Smallest valid network input ``(h, w)`` whose output covers ``output_size``."""
        h, w = (self._input_size_for_1d(int(s)) for s in output_size)
        return h, w

    # ------------------------------------------------------------------ forward

    def forward_tile(self, x: Tensor) -> Tensor:
        """The bare network on a normalised input of a valid size (see ``output_size``).

        Args:
            x: ``Tensor[B, C_in, h, w]`` normalised.

        Returns:
            ``Tensor[B, K, h', w']`` with ``(h', w') = output_size((h, w))``.
        """
        self.output_size(x.shape[-2:])
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = self.bottom_dropout(self.bottom(self.pool(x)))
        for up, convs, skip in zip(self.up, self.up_convs, reversed(skips)):
            x = up(x)
            x = convs(torch.cat([_center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.classifier(x)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images (any H, W) -> ``Tensor[B, K, H, W]`` logits
        (mirror extrapolation at the borders, tiled when larger than ``tile_size``)."""
        h, w = x.shape[-2:]
        if self.tile_size is None:
            in_h, in_w = self.input_size_for((h, w))
            out_h, out_w = self.output_size((in_h, in_w))
            top, left = (in_h - out_h) // 2, (in_w - out_w) // 2
            x = mirror_pad(x, top, in_h - h - top, left, in_w - w - left)
            return self.forward_tile(x)[:, :, :h, :w]
        return self._forward_tiled(x, h, w)

    def _forward_tiled(self, x: Tensor, h: int, w: int) -> Tensor:
        """Overlap-tile: disjoint output tiles, overlapping mirror-padded input tiles."""
        tile_in = self.tile_size
        assert tile_in is not None
        tile_out = self.output_size(tile_in)
        # when the image is smaller than a tile, shrink the tile to the image
        steps = []
        for dim, size in enumerate((h, w)):
            if size <= tile_out[dim]:
                t_in = self._input_size_for_1d(size)
                steps.append((t_in, self._output_size_1d(t_in), 1))
            else:
                steps.append((tile_in[dim], tile_out[dim], math.ceil(size / tile_out[dim])))
        (tin_h, tout_h, n_h), (tin_w, tout_w, n_w) = steps
        m_h, m_w = (tin_h - tout_h) // 2, (tin_w - tout_w) // 2
        full_h, full_w = (n_h - 1) * tout_h + tin_h, (n_w - 1) * tout_w + tin_w
        x = mirror_pad(x, m_h, full_h - h - m_h, m_w, full_w - w - m_w)
        rows = []
        for i in range(n_h):
            cols = []
            for j in range(n_w):
                tile = x[:, :, i * tout_h : i * tout_h + tin_h, j * tout_w : j * tout_w + tin_w]
                cols.append(self.forward_tile(tile))  # Tensor[B, K, tout_h, tout_w]
            rows.append(torch.cat(cols, dim=3))
        return torch.cat(rows, dim=2)[:, :, :h, :w]


def unet(
    num_classes: int,
    padding: str = "same",
    base_channels: int = 64,
    depth: int = 4,
    tile_size: Sequence[int] | None = None,
) -> UNet:
    """U-Net builder: ``padding="same"`` gives the practical BatchNorm variant, ``"valid"`` the
    paper's (no normalisation, valid convs, overlap-tile with ``tile_size`` e.g. (572, 572))."""
    return UNet(
        num_classes,
        base_channels=base_channels,
        depth=depth,
        padding=padding,
        norm_layer=nn.BatchNorm2d if padding == "same" else None,
        tile_size=tile_size,
    )
