"""Deformable convolution with its offset branch, on ``torchvision.ops.deform_conv2d`` (no
compiled extension).

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (DCNv1: learned offsets); Zhu et al.,
"Deformable ConvNets v2", CVPR 2019 (DCNv2: offsets and a sigmoid modulation mask). A plain
3x3 conv predicts ``2 * k * k`` offsets (and ``k * k`` mask logits for v2); it is zero-initialised
as both papers do, so the layer starts as an ordinary convolution (DCNv1) or as one whose
samples are all weighted sigmoid(0) = 0.5 (DCNv2, as the official DCN).

On CPU the layer computes the same function with ``deform_conv2d_sampled``: one bilinear
``grid_sample`` of every kernel point followed by a matrix product (im2col with learned
positions), about 5x faster forward and 15x faster forward + backward than torchvision's CPU
kernel on UPSNet's semantic head; on CUDA, and when traced for export, it calls torchvision's
kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

_HALF = {torch.float16, torch.bfloat16}


def deform_conv2d_sampled(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """``torchvision.ops.deform_conv2d`` (same arguments and layouts) as ``grid_sample`` + matmul.

    Kernel point ``k = (ki, kj)`` of output pixel ``(i, j)`` reads the input bilinearly at
    ``(i * s_h - p_h + ki * d_h + dy, j * s_w - p_w + kj * d_w + dx)``, zero outside the image
    (``grid_sample`` with zero padding and ``align_corners=False`` is that interpolation), times
    the modulation mask; the samples of all kernel points form an im2col matrix that one
    (grouped) matrix product with the weights reduces.

    Args:
        x: ``Tensor[B, C, H, W]``.
        offset: ``Tensor[B, 2 * G * K, H', W']`` ``(dy, dx)`` per offset group ``G`` and kernel
            point ``K = kh * kw``.
        weight: ``Tensor[O, C / groups, kh, kw]``.
        bias: ``Tensor[O]`` or None.
        stride, padding, dilation: ``(h, w)`` pairs.
        mask: ``Tensor[B, G * K, H', W']`` modulation (DCNv2) or None.

    Returns:
        ``Tensor[B, O, H', W']``.
    """
    b, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    k = kh * kw
    groups, g = c // cg, offset.shape[1] // (2 * k)
    ho, wo = offset.shape[-2:]
    opts = {"device": x.device, "dtype": x.dtype}
    off = offset.view(b, g, k, 2, ho, wo)
    ky = (torch.arange(kh, **opts) * dilation[0]).repeat_interleave(kw)  # [K]
    kx = (torch.arange(kw, **opts) * dilation[1]).repeat(kh)
    base_y = torch.arange(ho, **opts) * stride[0] - padding[0]  # [H']
    base_x = torch.arange(wo, **opts) * stride[1] - padding[1]  # [W']
    py = base_y[None, :, None] + ky[:, None, None] + off[:, :, :, 0]  # [B, G, K, H', W']
    px = base_x[None, None, :] + kx[:, None, None] + off[:, :, :, 1]
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)  # [B, G, K, H', W', 2]
    col = F.grid_sample(x.reshape(b * g, c // g, h, w), grid.view(b * g, k * ho, wo, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    col = col.view(b, g, c // g, k, ho * wo)  # [B, G, C / G, K, H' W']
    if mask is not None:
        col = col * mask.view(b, g, 1, k, ho * wo)
    col = col.reshape(b, groups, cg * k, ho * wo)  # [B, groups, C / groups * K, H' W']
    out = torch.matmul(weight.reshape(groups, o // groups, cg * k), col)  # [B, groups, O / groups, H' W']
    out = out.reshape(b, o, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


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
            # as torchvision's CPU kernel (no half / bfloat16 version; on CUDA its autocast runs
            # the op in float32): compute in float32, return the input's dtype
            x, offset, weight = x.float(), offset.float(), weight.float()
            mask = None if mask is None else mask.float()
            bias = None if bias is None else bias.float()
        # torchvision's kernel on CUDA and when traced (TorchScript, ONNX export: the graph keeps
        # one deform_conv2d op, exported as ONNX DeformConv), the sampled form on CPU otherwise
        traced = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        conv = deform_conv2d if x.device.type == "cuda" or traced else deform_conv2d_sampled
        out = conv(x, offset, weight, bias, (self.stride, self.stride),
                   (self.padding, self.padding), (self.dilation, self.dilation), mask)
        return out.to(dtype)
