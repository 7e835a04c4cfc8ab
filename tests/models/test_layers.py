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
