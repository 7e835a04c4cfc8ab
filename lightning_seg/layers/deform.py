"""Deformable convolution with its offset branch, on ``torchvision.ops.deform_conv2d`` (no
compiled extension).

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (DCNv1: learned offsets); Zhu et al.,
"Deformable ConvNets v2", CVPR 2019 (DCNv2: offsets and a sigmoid modulation mask). A plain
3x3 conv predicts ``2 * k * k`` offsets (and ``k * k`` mask logits for v2); it is zero-initialised
so that the layer starts as an ordinary convolution, as both papers do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

_HALF = {torch.float16, torch.bfloat16}


class DeformConv2d(nn.Module):
    """``k x k`` deformable convolution whose offsets (and, modulated, mask) come from the input.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``k``.
        stride: stride of the convolution (and of the offset branch).
        padding: zero padding (default ``dilation * (k - 1) // 2``, "same").
        dilation: dilation.
        groups: groups of the main convolution.
        offset_groups: groups of offsets (``deform_groups``): channels sharing one offset field.
        bias: bias of the main convolution.
        modulated: DCNv2 (a learned mask per sampling point) instead of DCNv1.

    Shapes:
        ``Tensor[B, C_in, H, W] -> Tensor[B, C_out, H', W']`` as ``nn.Conv2d`` with the same
        arguments.
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
        offset_groups: int = 1,
        bias: bool = True,
        modulated: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or in_channels % offset_groups:
            raise ValueError(
                f"in_channels {in_channels} must be divisible by groups {groups} and "
                f"offset_groups {offset_groups}"
            )
        self.stride, self.dilation = stride, dilation
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.modulated = modulated
        self.offset_groups = offset_groups
        points = offset_groups * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.offset = nn.Conv2d(
            in_channels, points * (3 if modulated else 2), kernel_size, stride, self.padding,
            dilation,
        )
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.offset(x)  # [B, P*2 (+ P), H', W']
        mask = None
        if self.modulated:
            points = out.shape[1] // 3
            offset, mask = out[:, : 2 * points], out[:, 2 * points :].sigmoid()
        else:
            offset = out
        weight, bias, dtype = self.weight, self.bias, x.dtype
        if x.device.type == "cpu" and {x.dtype, offset.dtype, weight.dtype} & _HALF:
            # torchvision's CPU kernel has no half / bfloat16 version (on CUDA its autocast runs
            # the op in float32): compute in float32, return the input's dtype
            x, offset, weight = x.float(), offset.float(), weight.float()
            mask = None if mask is None else mask.float()
            bias = None if bias is None else bias.float()
        out = deform_conv2d(x, offset, weight, bias, (self.stride, self.stride),
                            (self.padding, self.padding), (self.dilation, self.dilation), mask)
        return out.to(dtype)
