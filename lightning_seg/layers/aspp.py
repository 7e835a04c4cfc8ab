"""Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution", 2017, Sec. 3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_seg.layers.conv import ActLayer, ConvNormAct, NormLayer, inplace_relu
from lightning_seg.layers.separable import SeparableConv2d


class ImagePooling(nn.Module):
    """Image-level features: global average pool, ``1x1`` conv + norm + act, broadcast back.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H, W]`` (constant over H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act_layer: ActLayer | None = inplace_relu,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        # bilinear upsampling of a 1x1 map is a broadcast: Tensor[B, C, 1, 1] -> Tensor[B, C, H, W]
        return self.conv(self.pool(x)).expand(-1, -1, h, w)


class ASPP(nn.Module):
    """ASPP: a ``1x1`` conv, one ``3x3`` atrous conv per rate and image pooling, concatenated
    and projected by a ``1x1`` conv (all with BN + ReLU), then dropout.

    The paper uses rates (6, 12, 18) at output stride 16 and doubles them at output stride 8.
    DeepLab v3+ makes the atrous branches separable (``separable=True``).

    Args:
        in_channels: channels of the backbone feature C_in.
        out_channels: channels of every branch and of the output (256 in the paper).
        rates: atrous rates of the ``3x3`` branches.
        separable: use atrous separable convolutions for the ``3x3`` branches (v3+).
        image_pooling: add the image-level pooling branch.
        dropout: dropout probability after the projection (0.1 in the DeepLab reference code,
            0.5 in torchvision).
        norm_layer: normalisation layer constructor, or None.
        act_layer: activation constructor, or None.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, out_channels, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        image_pooling: bool = True,
        dropout: float = 0.1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act_layer: ActLayer | None = inplace_relu,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)
        ]
        for rate in rates:
            if separable:
                branches.append(
                    SeparableConv2d(
                        in_channels,
                        out_channels,
                        3,
                        dilation=rate,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        depthwise_act_layer=act_layer,
                    )
                )
            else:
                branches.append(
                    ConvNormAct(
                        in_channels, out_channels, 3, dilation=rate, norm_layer=norm_layer, act_layer=act_layer
                    )
                )
        self.branches = nn.ModuleList(branches)
        self.pooling = (
            ImagePooling(in_channels, out_channels, norm_layer=norm_layer, act_layer=act_layer)
            if image_pooling
            else None
        )
        num_branches = len(branches) + (1 if image_pooling else 0)
        self.project = ConvNormAct(
            num_branches * out_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer
        )
        self.dropout = nn.Dropout(dropout)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rates = tuple(rates)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class SummedASPP(nn.Module):
    """DeepLab v2's ASPP ("ASPP-L" at rates 6, 12, 18, 24; Chen et al., "DeepLab: Semantic Image
    Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs",
    TPAMI 2017, Sec. 3.2 / Fig. 4): parallel atrous branches that each predict class scores;
    the score maps are summed. No normalisation, no image pooling, no projection (v3 added
    those).

    A branch is one ``3x3`` atrous conv straight to the K scores (the paper's ResNet-101 model,
    ``branch_channels=None``), or, as on VGG-16, ``3x3`` atrous conv (``branch_channels``) ->
    ReLU -> dropout -> ``1x1`` conv -> ReLU -> dropout -> ``1x1`` conv to K (fc6 / fc7 / fc8 of
    each branch, 1024 channels in the paper). The score convs are initialised from
    N(0, 0.01^2), biases 0, as in the paper's Caffe models.

    Args:
        in_channels: channels of the backbone feature C_in.
        num_classes: K.
        rates: atrous rate of each branch.
        branch_channels: width of the VGG-style branches, or None for single-conv branches.
        dropout: dropout inside the VGG-style branches.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, K, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        rates: Sequence[int] = (6, 12, 18, 24),
        branch_channels: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not rates:
            raise ValueError("SummedASPP needs at least one rate")
        branches: list[nn.Module] = []
        for rate in rates:
            if branch_channels is None:
                branch: nn.Module = nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate)
            else:
                branch = nn.Sequential(
                    nn.Conv2d(in_channels, branch_channels, 3, padding=rate, dilation=rate),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                    nn.Conv2d(branch_channels, branch_channels, 1),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),
                    nn.Conv2d(branch_channels, num_classes, 1),
                )
            branches.append(branch)
        self.branches = nn.ModuleList(branches)
        for branch in self.branches:
            last = branch if isinstance(branch, nn.Conv2d) else branch[-1]
            nn.init.normal_(last.weight, std=0.01)
            nn.init.zeros_(last.bias)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.rates = tuple(rates)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.branches[0](x)  # Tensor[B, K, H, W]
        for branch in self.branches[1:]:
            scores = scores + branch(x)
        return scores
