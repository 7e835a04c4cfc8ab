"""Deformable convolution with its offset branch, on ``torchvision.ops.deform_conv2d`` (no
compiled extension).

Dai et al., "Deformable Convolutional Networks", ICCV 2017 (DCNv1: learned offsets); Zhu et al.,
"Deformable ConvNets v2", CVPR 2019 (DCNv2: offsets and a sigmoid modulation mask). A plain
3x3 conv predicts ``2 * k * k`` offsets (and ``k * k`` mask logits for v2); it is zero-initialised
as both papers do, so the layer starts as an ordinary convolution (DCNv1) or as one whose
samples are all weighted sigmoid(0) = 0.5 (DCNv2, as the official DCN).

On CPU the layer computes the same function with ``deform_conv2d_sampled``: every bilinear
sample of every kernel point gathered from a channels-last copy of the input by one weighted
``F.embedding_bag``, then one matrix product (im2col with learned positions), run as a 1x1
convolution so that oneDNN's kernels do it, and at inference in cache-sized blocks of output
pixels. ``benchmarks/deform_conv.py`` times it against torchvision's CPU kernel (BENCHMARKS.md).
On CUDA, and when traced for export, the layer calls torchvision's kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

_HALF = {torch.float16, torch.bfloat16}
# inference on a CPU gathers and multiplies the im2col matrix in blocks of about this many
# elements (8 MB of float32), which stay in cache between the two
CPU_BLOCK_ELEMENTS = 2**21


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
    """``torchvision.ops.deform_conv2d`` (same arguments and layouts) as a weighted gather + matmul.

    Kernel point ``k = (ki, kj)`` of output pixel ``(i, j)`` reads the input bilinearly at
    ``(i * s_h - p_h + ki * d_h + dy, j * s_w - p_w + kj * d_w + dx)``, zero outside the image,
    times the modulation mask. With the input laid out channels-last as a table of pixel rows,
    each sample is the weighted sum of its four neighbouring rows (weight 0 for a row outside
    the image): one ``F.embedding_bag(mode="sum", per_sample_weights=...)`` gathers every sample
    of every kernel point (a channels-last im2col matrix with learned positions) and one
    (grouped) matrix product with the weights reduces it. Gradients reach the input through the
    gather and the offsets and mask through the bilinear weights, as in the CUDA kernel. Without
    gradients on a CPU the gather and the product run in blocks of ``CPU_BLOCK_ELEMENTS``
    (the same values).

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
    size = tuple((n + 2 * p - d * (kn - 1) - 1) // s + 1
                 for n, p, d, kn, s in zip((h, w), padding, dilation, (kh, kw), stride))
    if c % cg or o % max(groups, 1):
        raise ValueError(f"deform_conv2d: weight {tuple(weight.shape)} does not fit {c} input channels "
                         f"(in-channels per group must divide {c}, and the groups must divide {o} outputs)")
    if g < 1 or offset.shape[1] != 2 * g * k or c % g:
        raise ValueError(f"deform_conv2d: offset has {offset.shape[1]} channels; expected 2 * G * {k} "
                         f"for the {kh}x{kw} kernel, with G offset groups dividing {c} input channels")
    if (ho, wo) != size or offset.shape[0] != b:
        raise ValueError(f"deform_conv2d: offset {tuple(offset.shape)} must be [{b}, {2 * g * k}, "
                         f"{size[0]}, {size[1]}] (the output size of the convolution)")
    if mask is not None and tuple(mask.shape) != (b, g * k, ho, wo):
        raise ValueError(f"deform_conv2d: mask {tuple(mask.shape)} must be [{b}, {g * k}, {ho}, {wo}]")
    opts = {"device": x.device, "dtype": x.dtype}
    # the input channels-last with a zero border (1 before, 2 after each side), a table whose row
    # ((n * (H + 3) + y + 1) * (W + 3) + x + 1) * G + j is pixel (y, x) of image n, offset group j
    hp, wp = h + 3, w + 3
    table = F.pad(x, (1, 2, 1, 2)).permute(0, 2, 3, 1).reshape(b * hp * wp * g, c // g).contiguous()
    # sample positions (y, x), ordered [B, H', W', K, G] (an output pixel's im2col row is (K, C)),
    # clamped to [-1, H] x [-1, W]: a sample beyond reads only the border (zero, zero gradient)
    ky = (torch.arange(kh, **opts) * dilation[0]).repeat_interleave(kw)  # [K]
    kx = (torch.arange(kw, **opts) * dilation[1]).repeat(kh)
    base = torch.stack(torch.broadcast_tensors(
        (torch.arange(ho, **opts) * stride[0] - padding[0]).view(ho, 1, 1, 1) + ky.view(k, 1),
        (torch.arange(wo, **opts) * stride[1] - padding[1]).view(wo, 1, 1) + kx.view(k, 1),
    ), -1)  # [H', W', K, 1, 2]
    pos = offset.view(b, g, k, 2, ho, wo).permute(0, 4, 5, 2, 1, 3) + base  # [B, H', W', K, G, 2]
    pos = torch.minimum(pos.clamp(min=-1), torch.tensor([h, w], **opts))
    low = pos.floor()
    frac = pos - low
    pair = torch.stack([1 - frac, frac], -1)  # [B, H', W', K, G, 2 (y, x), 2 (low, high)]
    weights = pair[..., 0, :, None] * pair[..., 1, None, :]  # [..., 2 (y), 2 (x)]
    if mask is not None:
        weights = weights * mask.view(b, g, k, ho, wo).permute(0, 3, 4, 2, 1)[..., None, None]
    low = low.nan_to_num(-1).long() + 1  # in the padded table (NaN offsets: NaN weights, out NaN)
    start = ((torch.arange(b, device=x.device).view(b, 1, 1, 1, 1) * hp + low[..., 0]) * wp
             + low[..., 1]) * g + torch.arange(g, device=x.device)  # [B, H', W', K, G]
    rows = start[..., None, None] + torch.tensor([[0, g], [wp * g, (wp + 1) * g]], device=x.device)
    rows, weights = rows.reshape(-1, 4), weights.reshape(-1, 4)
    pixels = b * ho * wo
    if groups == 1 and ho * wo:
        # the product [B H' W', K C] x [K C, O] as a 1x1 convolution over the im2col matrix read
        # as a channels-last image of K C channels (no copy): oneDNN's kernels instead of the
        # BLAS sgemm, 2-2.7x faster on an AMD EPYC (MKL's sgemm takes a slower path there)
        wmat = weight.view(o, c, k).transpose(1, 2).reshape(o, k * c, 1, 1)
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, offset, weight, bias, mask))
        block = pixels if grad or x.device.type != "cpu" else max(1, CPU_BLOCK_ELEMENTS // (k * c))
        if block >= pixels:
            col = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")  # [B H' W' K G, C / G]
            out = F.conv2d(col.view(b, ho, wo, k * c).permute(0, 3, 1, 2), wmat, bias)  # channels-last
            return out.contiguous()  # as torchvision's (a channels-last map slows some later ops)
        # inference on a CPU: blocks of output pixels, each block's im2col rows gathered and
        # multiplied while they are still in cache (1.4-1.9x faster at UPSNet's COCO P2)
        out = x.new_empty(pixels, o)
        for s in range(0, pixels, block):
            e = min(s + block, pixels)
            col = F.embedding_bag(rows[s * k * g : e * k * g], table, mode="sum",
                                  per_sample_weights=weights[s * k * g : e * k * g])  # [(e - s) K G, C / G]
            out[s:e] = F.conv2d(col.view(1, e - s, 1, k * c).permute(0, 3, 1, 2), wmat, bias)[0, :, :, 0].t()
        return out.view(b, ho, wo, o).permute(0, 3, 1, 2).contiguous()  # [B, O, H', W']
    col = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")  # [B H' W' K G, C / G]
    # one matrix product per convolution group: [B H' W', K C / groups] x [K C / groups, O / groups]
    col = col.view(b * ho * wo, k, groups, cg).transpose(0, 2)  # [groups, K, B H' W', C / groups]
    col = col.transpose(1, 2).reshape(groups, b * ho * wo, k * cg)
    wmat = weight.view(groups, o // groups, cg, k).permute(0, 3, 2, 1)  # [groups, K, C / groups, O / groups]
    out = torch.bmm(col, wmat.reshape(groups, k * cg, o // groups))  # [groups, B H' W', O / groups]
    out = out.view(groups, b, ho, wo, o // groups).permute(1, 0, 4, 2, 3).reshape(b, o, ho, wo)
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
