"""Atrous separable convolution (Chen et al., "Encoder-Decoder with Atrous Separable
Convolution", ECCV 2018): a depthwise atrous conv followed by a pointwise 1x1 conv."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_seg.layers.conv import ActLayer, ConvNormAct, NormLayer, inplace_relu


class SeparableConv2d(nn.Module):
    """Depthwise ``k x k`` atrous conv + norm + act, then pointwise ``1x1`` conv + norm + act.

    DeepLab v3+ adds batch normalisation and ReLU after each depthwise convolution
    (MobileNet style); both are arguments so the plain Xception form (no activation in between)
    is one YAML change away.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        kernel_size: depthwise kernel size.
        stride: depthwise stride.
        dilation: atrous rate of the depthwise convolution ("same" padding).
        norm_layer: normalisation after both convolutions, or None.
        act_layer: activation after the pointwise convolution, or None.
        depthwise_act_layer: activation after the depthwise convolution, or None.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act_layer: ActLayer | None = inplace_relu,
        depthwise_act_layer: ActLayer | None = inplace_relu,
    ) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=in_channels,
            norm_layer=norm_layer,
            act_layer=depthwise_act_layer,
        )
        self.pointwise = ConvNormAct(
            in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer
        )
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))
