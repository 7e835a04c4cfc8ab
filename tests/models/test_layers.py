"""Layer blocks: NativeBackwardConv2d equals nn.Conv2d in value and gradient; in-place ReLU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_seg.layers import ConvNormAct, NativeBackwardConv2d


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dilation", [1, 2])
def test_native_backward_conv_equals_conv2d(bias: bool, dilation: int) -> None:
    torch.manual_seed(0)
    ref = nn.Conv2d(8, 16, 7, padding=3 * dilation, dilation=dilation, bias=bias)
    ours = NativeBackwardConv2d(8, 16, 7, padding=3 * dilation, dilation=dilation, bias=bias)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 5, 6)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 16, 5, 6)
    (ref(x_ref) * g).sum().backward()
    out = ours(x_ours)
    (out * g).sum().backward()
    torch.testing.assert_close(out, ref(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_native_backward_conv_frozen_input_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    conv = NativeBackwardConv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)  # no grad for the input: only the parameters get one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all()
    with torch.no_grad():  # inference takes the plain nn.Conv2d path
        torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))


def test_conv_norm_act_relu_is_in_place_and_gradients_flow() -> None:
    block = ConvNormAct(3, 4)
    assert block.act.inplace
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and block.conv.weight.grad is not None


def test_deform_conv_starts_as_a_plain_convolution():
    """Zero offsets (and a mask of sigmoid(0) = 0.5 for DCNv2) reduce it to nn.Conv2d."""
    import torch.nn.functional as F

    from lightning_seg.layers.deform import DeformConv2d

    x = torch.randn(2, 6, 11, 13)
    for modulated, scale in ((False, 1.0), (True, 0.5)):
        layer = DeformConv2d(6, 4, 3, stride=2, modulated=modulated)
        ref = F.conv2d(x, layer.weight * scale, None, 2, 1) + layer.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    # a learned offset moves the sampling: shift every point one pixel right
    layer = DeformConv2d(1, 1, 1, bias=False, modulated=False)
    torch.nn.init.ones_(layer.weight)
    torch.nn.init.constant_(layer.offset.bias, 0.0)
    layer.offset.bias.data[1] = 1.0  # (dy, dx) of the single sampling point
    img = torch.arange(20.0).view(1, 1, 4, 5)
    assert torch.equal(layer(img)[0, 0, :, :4], img[0, 0, :, 1:])


def test_traced_deform_conv_keeps_torchvision_op():
    """Traced (TorchScript, ONNX export) the layer records torchvision's one deform_conv2d op,
    which the ONNX export writes as DeformConv, not the CPU path's gather + matmul."""
    from lightning_seg.layers.deform import DeformConv2d

    layer = DeformConv2d(4, 4, 3, modulated=True).eval()
    torch.nn.init.normal_(layer.offset.weight, std=0.1)
    x = torch.randn(1, 4, 9, 10)
    traced = torch.jit.trace(layer, (x,))
    graph = str(traced.graph)
    assert "torchvision::deform_conv2d" in graph and "embedding_bag" not in graph
    y = torch.randn(1, 4, 12, 7)  # another size: the same function as the CPU path
    torch.testing.assert_close(traced(y), layer(y), atol=1e-5, rtol=1e-5)


def test_deform_conv_half_precision_on_cpu():
    """torchvision's CPU kernel has no bfloat16 / float16 version: the layer computes in float32
    under CPU autocast and for half inputs, and returns the input's dtype."""
    from lightning_seg.layers.deform import DeformConv2d

    layer = DeformConv2d(4, 3, 3, modulated=True)
    x = torch.randn(1, 4, 9, 9)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    half = layer.bfloat16()(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("stride,padding,dilation,groups,offset_groups,modulated", [
    (1, 1, 1, 1, 1, False),
    (1, 1, 1, 1, 1, True),
    (2, 1, 1, 2, 1, True),
    (1, 2, 2, 1, 2, False),
    (2, 0, 1, 2, 2, True),
])
def test_sampled_deform_conv_equals_torchvision(stride, padding, dilation, groups, offset_groups,
                                               modulated):
    """The CPU path (weighted gather + matmul) is torchvision's deform_conv2d: outputs and the
    gradients of the input, offsets, mask, weight and bias, with offsets that leave the image."""
    from torchvision.ops import deform_conv2d

    from lightning_seg.layers.deform import deform_conv2d_sampled

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    ho = (9 + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (11 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = 3 * torch.randn(2, 2 * offset_groups * 9, ho, wo, generator=g, dtype=torch.float64)
    mask = torch.rand(2, offset_groups * 9, ho, wo, generator=g, dtype=torch.float64) if modulated else None
    inputs = [t.requires_grad_() for t in (x, offset, weight, bias) + ((mask,) if modulated else ())]
    args = (stride, stride), (padding, padding), (dilation, dilation)
    ref = deform_conv2d(x, offset, weight, bias, *args, mask)
    out = deform_conv2d_sampled(x, offset, weight, bias, *args, mask)
    torch.testing.assert_close(out, ref)
    grads_ref = torch.autograd.grad((ref * ref.detach().cos()).sum(), inputs)
    grads = torch.autograd.grad((out * ref.detach().cos()).sum(), inputs)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("offset_groups,modulated,block",
                         [(1, False, 7), (2, True, 7), (1, True, 1), (1, False, 10**6)])
def test_sampled_deform_conv_in_blocks_equals_torchvision(monkeypatch, offset_groups, modulated, block):
    """Without gradients on a CPU the gather and the product run in blocks of output pixels (here
    7 pixels: blocks that straddle rows and images, a short last one; 1 pixel; one block): the
    same outputs as torchvision's kernel, in float64 and in float32."""
    from torchvision.ops import deform_conv2d

    import lightning_seg.layers.deform as deform

    monkeypatch.setattr(deform, "CPU_BLOCK_ELEMENTS", block * 9 * 4)  # K C = 9 x 4 per pixel
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64)
    offset = 3 * torch.randn(2, 2 * offset_groups * 9, 9, 11, generator=g, dtype=torch.float64)
    mask = torch.rand(2, offset_groups * 9, 9, 11, generator=g, dtype=torch.float64) if modulated else None
    args = (1, 1), (1, 1), (1, 1)
    ref = deform_conv2d(x, offset, weight, bias, *args, mask)
    with torch.no_grad():
        torch.testing.assert_close(deform.deform_conv2d_sampled(x, offset, weight, bias, *args, mask), ref)
        f32 = [t if t is None else t.float() for t in (x, offset, weight, bias, mask)]
        out = deform.deform_conv2d_sampled(*f32[:4], *args, f32[4])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(0, 4, 6, 6), (1, 4, 0, 6), (2, 4, 6, 0)])
def test_sampled_deform_conv_of_an_empty_map_is_empty(shape):
    """An empty batch or a map without pixels gives an empty output, with or without gradients."""
    from lightning_seg.layers.deform import deform_conv2d_sampled

    b, _, h, w = shape
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = deform_conv2d_sampled(torch.randn(*shape, requires_grad=grad), torch.zeros(b, 18, h, w),
                                        torch.randn(5, 4, 3, 3), padding=(1, 1))
        assert out.shape == (b, 5, h, w)


def test_sampled_deform_conv_nan_offsets_give_nan_not_a_crash():
    """A diverged network's NaN offsets reach the loss as NaN (which training can skip), not as an
    index error from the gather."""
    from lightning_seg.layers.deform import deform_conv2d_sampled

    x = torch.randn(1, 4, 6, 6)
    offset = torch.zeros(1, 18, 6, 6)
    offset[0, :, 2, 3] = float("nan")
    out = deform_conv2d_sampled(x, offset, torch.randn(5, 4, 3, 3), padding=(1, 1))
    assert out[0, :, 2, 3].isnan().all()
    assert out.isfinite().sum() == 5 * 35


def test_sampled_deform_conv_names_misshapen_inputs():
    """Offsets, masks or weights of the wrong shape are refused with the expected shape."""
    from lightning_seg.layers.deform import deform_conv2d_sampled

    x, weight = torch.randn(1, 4, 6, 6), torch.randn(5, 4, 3, 3)
    with pytest.raises(ValueError, match="offset has 17 channels"):
        deform_conv2d_sampled(x, torch.zeros(1, 17, 6, 6), weight, padding=(1, 1))
    with pytest.raises(ValueError, match=r"must be \[1, 18, 6, 6\]"):
        deform_conv2d_sampled(x, torch.zeros(1, 18, 4, 4), weight, padding=(1, 1))
    with pytest.raises(ValueError, match=r"mask \(1, 3, 6, 6\)"):
        deform_conv2d_sampled(x, torch.zeros(1, 18, 6, 6), weight, padding=(1, 1), mask=torch.ones(1, 3, 6, 6))
    with pytest.raises(ValueError, match="does not fit 4 input channels"):
        deform_conv2d_sampled(x, torch.zeros(1, 18, 6, 6), torch.randn(5, 3, 3, 3), padding=(1, 1))
