"""Sliding-window inference for semantic segmentation (mmsegmentation's ``mode="slide"``).

A network trained on crops (e.g. 512 x 1024 on Cityscapes) can be run on a larger image by
running it on overlapping windows of the training size and averaging the logits where
windows overlap. Windows start every ``stride`` pixels; the last window of a row / column is
moved back so that it ends at the image border (every window is full-size unless the image is
smaller than the window, when the window is the whole image along that side), as in
mmseg's ``EncoderDecoder.slide_inference``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side of length ``size``.

    ``ceil((size - window) / stride) + 1`` windows at ``0, stride, 2 * stride, ...``, the last
    one moved back to ``size - window`` so that it ends at the border; a single window at 0
    when ``size <= window``.
    """
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


def window_grid(
    height: int, width: int, window: int | tuple[int, int], stride: int | tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The windows ``(y1, y2, x1, x2)`` (end exclusive) covering a ``height x width`` image,
    row by row; see ``window_starts``. Every pixel is covered at least once."""
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    if sh > wh or sw > ww:
        raise ValueError(
            f"stride {(sh, sw)} is larger than the window {(wh, ww)}: pixels between windows "
            f"would get no prediction. Use a stride <= window (e.g. 2/3 of it)."
        )
    return [
        (y, min(y + wh, height), x, min(x + ww, width))
        for y in window_starts(height, wh, sh)
        for x in window_starts(width, ww, sw)
    ]


def sliding_window_logits(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    max_windows_per_call: int = 1,
) -> Tensor:
    """Run a semantic network on overlapping windows and average the logits.

    Args:
        fn: the network (in eval mode; call this under ``torch.no_grad()``): maps images
            ``Tensor[b, 3, h, w]`` to logits ``Tensor[b, K, h, w]`` at the same size (upsample
            inside ``fn`` if the network predicts at a lower resolution).
        images: ``Tensor[B, 3, H, W]`` (any size: smaller than, equal to or larger than the
            window, not necessarily a multiple of the stride).
        window: window size, ``int`` or ``(height, width)`` (usually the training crop).
        stride: step between window starts, ``int`` or ``(height, width)``, at most the
            window (mmseg uses about 2/3 of it).
        num_classes: ``K``, the number of logit channels ``fn`` returns.
        max_windows_per_call: how many windows of all ``B`` images ``fn`` gets at once
            (``fn`` sees a batch of ``B * n`` crops); more is faster and uses more memory.

    Returns:
        ``Tensor[B, K, H, W]``: for every pixel, the mean of the logits of the windows that
        contain it (dtype and device of ``fn``'s output). For a network that is exactly
        translation-equivariant (no padding effects, e.g. a 1 x 1 convolution) this equals
        ``fn(images)``.

    Raises:
        ValueError: a bad window / stride, or ``fn`` returning another shape.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
    if max_windows_per_call < 1:
        raise ValueError(f"max_windows_per_call must be >= 1, got {max_windows_per_call}")
    b, _, height, width = images.shape
    grid = window_grid(height, width, window, stride)
    total: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for start in range(0, len(grid), max_windows_per_call):
        boxes = grid[start : start + max_windows_per_call]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # [n*B, 3, h, w]
        logits = fn(crops)
        h, w = crops.shape[-2:]
        if tuple(logits.shape) != (len(crops), num_classes, h, w):
            raise ValueError(
                f"fn returned {tuple(logits.shape)} for windows {tuple(crops.shape)}; expected "
                f"{(len(crops), num_classes, h, w)} (logits at the window's size)."
            )
        if total is None:
            total = logits.new_zeros(b, num_classes, height, width)
            count = count.to(logits.device)
        for k, (y1, y2, x1, x2) in enumerate(boxes):
            total[:, :, y1:y2, x1:x2] += logits[k * b : (k + 1) * b]
            count[:, :, y1:y2, x1:x2] += 1
    assert total is not None  # the grid always has a window
    return total / count.to(total.dtype)
