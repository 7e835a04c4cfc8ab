"""Convolution + normalisation + activation, the building block of every head here."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def inplace_relu() -> nn.Module:
    """The default activation: ReLU applied in place (it follows a conv or norm whose
    backward does not need the output, so no activation memory is spent on a copy)."""
    return nn.ReLU(inplace=True)


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation`` with children named ``conv``, ``norm``, ``act``.

    The convolution has a bias only when there is no normalisation. ``padding=None`` keeps
    the spatial size for stride 1 ("same": ``dilation * (kernel_size - 1) // 2``); pass
    ``padding=0`` for valid convolutions (U-Net).

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding, or None for "same" padding.
        dilation: atrous rate.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        norm_layer: ``C -> nn.Module`` (e.g. ``nn.BatchNorm2d``), or None for no norm.
        act_layer: ``() -> nn.Module`` (default ``inplace_relu``), or None for no activation.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H', W']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        act_layer: ActLayer | None = inplace_relu,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=norm_layer is None,
        )
        if norm_layer is not None:
            layers["norm"] = norm_layer(out_channels)
        if act_layer is not None:
            layers["act"] = act_layer()
        super().__init__(layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
