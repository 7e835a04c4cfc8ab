"""Convolution + normalisation + activation, the building block of every head here, and a
``Conv2d`` whose CPU backward avoids a slow oneDNN path (FCN's fc6)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class _ConvNativeBackward(torch.autograd.Function):
    """``conv2d`` (stride 1, no groups) whose backward runs with oneDNN switched off."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, bias, padding=padding, dilation=dilation)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        with torch.backends.mkldnn.flags(enabled=False):
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                [1, 1], list(ctx.padding), list(ctx.dilation), False, [0, 0], 1,
                [needs[0], needs[1], ctx.has_bias and needs[2]],
            )
        return grad_x, grad_w, grad_b, None, None


class NativeBackwardConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose backward on the CPU avoids oneDNN; same parameters and outputs.

    oneDNN's backward of a wide large-kernel convolution on a map not much larger than the
    kernel is pathologically slow: FCN's fc6 (``7x7``, 512 -> 4096, padding 3) on a ``6x8`` map
    takes ~36 s per image against ~0.6 s with PyTorch's native kernel, and both take the same
    time on a ``24x32`` map (measured with torch 2.15, one thread). The forward keeps oneDNN.
    GPUs, stride != 1 and grouped convolutions use ``nn.Conv2d`` unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        native = (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and self.stride == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
        )
        if not native:
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # cast here, so saved tensors share one dtype
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        else:
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return _ConvNativeBackward.apply(x, weight, bias, self.padding, self.dilation)
