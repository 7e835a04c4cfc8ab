"""Sliding-window semantic inference (mmseg "slide"): windows, borders, averaging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_seg.models.postprocess.sliding_window import (
    sliding_window_logits,
    window_grid,
    window_starts,
)


@pytest.mark.parametrize(
    ("size", "window", "stride", "expected"),
    [
        (12, 4, 4, [0, 4, 8]),  # divisible: no overlap
        (13, 4, 4, [0, 4, 8, 9]),  # not divisible: the last window ends at the border
        (10, 4, 3, [0, 3, 6]),
        (7, 4, 3, [0, 3]),
        (4, 4, 2, [0]),  # exactly one window
        (3, 4, 2, [0]),  # smaller than the window: one (clipped) window
        (1024, 512, 341, [0, 341, 512]),  # mmseg's Cityscapes setting (1024 side, 512 crop)
    ],
)
def test_window_starts(size, window, stride, expected):
    assert window_starts(size, window, stride) == expected


def test_window_grid_covers_every_pixel_with_the_expected_counts():
    grid = window_grid(10, 7, window=4, stride=3)
    assert grid == [(y, y + 4, x, x + 4) for y in (0, 3, 6) for x in (0, 3)]
    cover = torch.zeros(10, 7, dtype=torch.int64)
    for y1, y2, x1, x2 in grid:
        cover[y1:y2, x1:x2] += 1
    rows = torch.tensor([1, 1, 1, 2, 1, 1, 2, 1, 1, 1])  # windows over each row / column
    cols = torch.tensor([1, 1, 1, 2, 1, 1, 1])
    assert torch.equal(cover, rows[:, None] * cols[None, :])
    assert window_grid(3, 20, window=(8, 6), stride=(4, 5)) == [
        (0, 3, 0, 6), (0, 3, 5, 11), (0, 3, 10, 16), (0, 3, 14, 20)
    ]
    with pytest.raises(ValueError, match="stride .* larger than the window"):
        window_grid(10, 10, window=4, stride=5)


def test_fn_sees_each_window_once():
    h, w = 11, 9
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.stack([ys, xs, ys * 0]).float()[None].repeat(2, 1, 1, 1)  # [2, 3, H, W]
    seen = []

    def fn(crops):
        seen.extend((int(c[0, 0, 0]), int(c[1, 0, 0]), *c.shape[-2:]) for c in crops)
        return crops[:, :2]

    out = sliding_window_logits(fn, images, window=(5, 4), stride=(3, 3), num_classes=2,
                                max_windows_per_call=4)
    expected = [(y1, x1, y2 - y1, x2 - x1) for y1, y2, x1, x2 in window_grid(11, 9, (5, 4), 3)]
    # each call holds up to 4 windows of both images, window-major: every window twice in a row
    assert seen[0::2] == expected and seen[1::2] == expected
    assert torch.equal(out, images[:, :2])  # coordinates average back to themselves


@pytest.mark.parametrize(
    ("height", "width"), [(16, 24), (17, 29), (5, 30), (6, 7), (8, 8)]
)
@pytest.mark.parametrize("per_call", [1, 3])
def test_translation_equivariant_network_equals_the_whole_image(height, width, per_call):
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, kernel_size=1).eval()
    images = torch.rand(2, 3, height, width)
    with torch.no_grad():
        whole = net(images)
        slid = sliding_window_logits(net, images, window=8, stride=5, num_classes=5,
                                     max_windows_per_call=per_call)
    assert slid.shape == (2, 5, height, width)
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-6)


def test_overlaps_are_averaged_not_summed():
    images = torch.zeros(1, 3, 6, 10)
    calls = []

    def fn(crops):  # window k predicts the constant k
        calls.append(len(crops))
        return torch.full((len(crops), 1, *crops.shape[-2:]), float(len(calls) - 1))

    out = sliding_window_logits(fn, images, window=6, stride=4, num_classes=1)
    # windows at x = 0 (value 0) and x = 4 (value 1): columns 4, 5 are covered by both
    assert window_grid(6, 10, 6, 4) == [(0, 6, 0, 6), (0, 6, 4, 10)]
    assert out[0, 0, 0].tolist() == [0, 0, 0, 0, 0.5, 0.5, 1, 1, 1, 1]


def test_wrong_output_shape_errors():
    with pytest.raises(ValueError, match="fn returned .* expected"):
        sliding_window_logits(lambda x: x[:, :, ::2], torch.zeros(1, 3, 9, 9), 4, 4, 3)
