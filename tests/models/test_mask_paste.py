"""Mask pasting: both implementations against the one-mask-at-a-time reference (golden test)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import roi_heads as tv_roi_heads

from lightning_seg.models.postprocess.masks import _chunks, paste_masks_in_image

IMPLS = ["per_box", "chunked"]
THRESH = 0.5
BF16_ULP = 2.0**-8  # spacing of bfloat16 numbers in [0.5, 1), the coarsest for values <= 1


def _paste_one_by_one_reference(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], padding: int = 1
) -> torch.Tensor:
    """``paste_masks_in_image`` as it was before the chunked path (torchvision's arithmetic).

    Kept verbatim (apart from the inlined box expansion) as the reference both implementations
    must reproduce.
    """
    if masks.ndim == 4:
        masks = masks[:, 0]
    h_img, w_img = int(image_size[0]), int(image_size[1])
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    canvas = masks.new_zeros((num_masks, h_img, w_img))
    if num_masks == 0:
        return canvas
    padded = F.pad(masks, (padding,) * 4)
    scale = float(mask_size + 2 * padding) / mask_size
    boxes = boxes.to(torch.float32)
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half_sizes = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    expanded = torch.cat([centers - half_sizes, centers + half_sizes], dim=1)
    int_boxes = expanded.to(torch.int64).tolist()
    for i, (x1, y1, x2, y2) in enumerate(int_boxes):
        box_w = max(x2 - x1 + 1, 1)
        box_h = max(y2 - y1 + 1, 1)
        resized = F.interpolate(
            padded[i][None, None], size=(box_h, box_w), mode="bilinear", align_corners=False
        )[0, 0]
        x_start, x_end = max(x1, 0), min(x2 + 1, w_img)
        y_start, y_end = max(y1, 0), min(y2 + 1, h_img)
        if x_end <= x_start or y_end <= y_start:
            continue
        canvas[i, y_start:y_end, x_start:x_end] = resized[
            y_start - y1 : y_end - y1, x_start - x1 : x_end - x1
        ]
    return canvas


def _mixed_boxes(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """``Tensor[n, 4]`` fractional boxes of mixed kinds: inside, partly or wholly outside the
    image, larger than the image, thin, and smaller than a pixel."""
    size = torch.tensor([w, h], dtype=torch.float32)
    kind = torch.arange(n) % 5
    xy = torch.rand(n, 2, generator=generator) * size * 1.6 - 0.3 * size  # [n, 2]
    wh = torch.rand(n, 2, generator=generator) * size * 0.7  # [n, 2]
    wh[kind == 1] = torch.rand(int((kind == 1).sum()), 2, generator=generator) * 0.9  # < 1 px
    wh[kind == 2, 0] *= 0.05  # thin
    wh[kind == 3] = size * (1.2 + torch.rand(int((kind == 3).sum()), 2, generator=generator))
    xy[kind == 3] = -0.1 * size - torch.rand(int((kind == 3).sum()), 2, generator=generator)
    return torch.cat([xy, xy + wh], dim=1)


def _assert_matches(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    """Probabilities within ``atol``; thresholded masks equal except within ``atol`` of it."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if ours.numel() == 0:
        return
    assert (ours.float() - ref.float()).abs().max().item() < atol
    flipped = (ours >= THRESH) != (ref >= THRESH)
    assert ((ref.float() - THRESH).abs()[flipped] < atol).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("image_size", "mask_size", "padding"),
    [((61, 87), 28, 1), ((33, 17), 14, 1), ((1, 1), 28, 1), ((97, 64), 28, 0), ((40, 41), 7, 2)],
)
def test_paste_equals_one_by_one_reference(impl, image_size, mask_size, padding):
    g = torch.Generator().manual_seed(sum(image_size) + mask_size + padding)
    h, w = image_size
    masks = torch.rand(60, 1, mask_size, mask_size, generator=g)
    boxes = _mixed_boxes(60, h, w, g)
    ref = _paste_one_by_one_reference(masks, boxes, image_size, padding)
    assert ref.abs().sum() > 0  # some mask is visible: the comparison is not of two zeros
    # one chunk, a few, one mask per chunk; the CPU default of the padding bound
    for budget, overhead in [(1 << 30, 1e9), (16 * 40 * 40, 1e9), (1, 1e9), (1 << 30, None)]:
        ours = paste_masks_in_image(
            masks, boxes, image_size, padding, impl=impl, max_chunk_bytes=budget,
            chunk_overhead_px=overhead,
        )
        _assert_matches(ours, ref, atol=1e-5)
    if impl == "per_box":  # the same arithmetic as the reference: equal to the bit
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_bfloat16_within_rounding(impl):
    """bf16 masks. The reference resizes in bf16 and is off the float32 result by up to about
    1.5 bf16 steps; the chunked path samples in float32 and rounds once (within half a step of
    float32), so the two agree within two steps; the per-box path is the reference's own."""
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(40, 1, 28, 28, generator=g).to(torch.bfloat16)
    boxes = _mixed_boxes(40, 51, 77, g)
    ref = _paste_one_by_one_reference(masks, boxes, (51, 77))
    ours = paste_masks_in_image(masks, boxes, (51, 77), impl=impl)
    assert ours.dtype == torch.bfloat16
    _assert_matches(ours, ref, atol=2 * BF16_ULP)
    if impl == "per_box":
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    else:
        ref32 = _paste_one_by_one_reference(masks.float(), boxes, (51, 77))
        assert (ours.float() - ref32).abs().max().item() <= BF16_ULP / 2 + 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_empty_and_invisible(impl):
    masks = torch.rand(3, 28, 28)  # [N, M, M] input is accepted too
    empty = paste_masks_in_image(masks[:0], torch.zeros(0, 4), (5, 7), impl=impl)
    assert empty.shape == (0, 5, 7)
    outside = torch.tensor(
        [[20.0, 1.0, 30.0, 4.0], [-9.0, -9.0, -3.0, -2.0], [1.0, 9.0, 4.0, 20.0]]
    )
    pasted = paste_masks_in_image(masks, outside, (5, 7), impl=impl)
    assert pasted.shape == (3, 5, 7) and pasted.abs().sum() == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_paste_equals_torchvision(impl):
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(7, 1, 28, 28, generator=g)
    boxes = torch.tensor(
        [[3.2, 4.7, 40.1, 30.9], [0.0, 0.0, 87.0, 61.0], [-5.0, -3.0, 20.0, 15.0],
         [70.5, 50.2, 95.0, 70.0], [10.0, 10.0, 10.4, 10.3], [30.0, 2.0, 31.0, 60.0],
         [0.0, 0.0, 0.5, 0.5]]
    )
    expected = tv_roi_heads.paste_masks_in_image(masks, boxes, (61, 87), padding=1)[:, 0]
    ours = paste_masks_in_image(masks, boxes, (61, 87), impl=impl)
    _assert_matches(ours, expected, atol=1e-5)


def test_paste_auto_is_per_box_on_cpu():
    g = torch.Generator().manual_seed(7)
    masks = torch.rand(20, 1, 28, 28, generator=g)
    boxes = _mixed_boxes(20, 45, 62, g)
    auto = paste_masks_in_image(masks, boxes, (45, 62))
    per_box = paste_masks_in_image(masks, boxes, (45, 62), impl="per_box")
    torch.testing.assert_close(auto, per_box, rtol=0, atol=0)


def test_paste_rejects_bad_arguments():
    masks, boxes = torch.rand(2, 1, 28, 28), torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    with pytest.raises(ValueError, match="impl='grid'"):
        paste_masks_in_image(masks, boxes, (8, 8), impl="grid")
    with pytest.raises(ValueError, match="max_chunk_bytes=0"):
        paste_masks_in_image(masks, boxes, (8, 8), max_chunk_bytes=0)
    with pytest.raises(ValueError, match="chunk_overhead_px=-1"):
        paste_masks_in_image(masks, boxes, (8, 8), chunk_overhead_px=-1)
    with pytest.raises(ValueError, match=r"boxes of shape \(1, 4\) for 2 masks"):
        paste_masks_in_image(masks, boxes[:1], (8, 8))


def _padded(chunk: list[list[int]]) -> int:
    return len(chunk) * max(h for h, _ in chunk) * max(w for _, w in chunk)


@pytest.mark.parametrize(
    ("budget", "overhead"),
    [(16 * 2 * 60 * 52, 1e9), (16 * 10_000, 1e9), (1 << 30, 0), (1 << 30, 500), (1 << 30, 1e9)],
)
def test_chunks_respect_budget_and_overhead(budget, overhead):
    sizes = [[60, 50], [58, 52], [30, 30], [29, 31], [28, 10], [5, 5], [4, 6], [1, 1], [1, 1]]
    runs = _chunks(sizes, max_chunk_bytes=budget, chunk_overhead_px=overhead)
    assert runs[0][0] == 0 and runs[-1][1] == len(sizes)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(runs, runs[1:]))  # cover all
    for start, end in runs:
        assert 16 * _padded(sizes[start:end]) <= budget or end == start + 1
        for k in range(start + 1, end):  # every member added at most `overhead` padding
            added = _padded(sizes[start : k + 1]) - _padded(sizes[start:k])
            assert added <= sizes[k][0] * sizes[k][1] + overhead
        if end < len(sizes):  # greedy: the next window would break a bound
            grown = sizes[start : end + 1]
            added = _padded(grown) - _padded(sizes[start:end])
            assert 16 * _padded(grown) > budget or added > sizes[end][0] * sizes[end][1] + overhead
    if budget == 16 * 2 * 60 * 52:
        assert runs[0] == (0, 2)  # the two large windows fill the budget exactly
    if overhead == 0:  # only equal windows or ones inside the first share a chunk
        assert runs == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 9)]
    if budget == 1 << 30 and overhead == 1e9:
        assert runs == [(0, len(sizes))]


def test_chunks_single_window_over_budget():
    assert _chunks([[60, 50]], max_chunk_bytes=1, chunk_overhead_px=1e9) == [(0, 1)]
    assert _chunks([[60, 50], [3, 3]], max_chunk_bytes=1, chunk_overhead_px=1e9) == [
        (0, 1), (1, 2)
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_paste_cuda_auto_equals_reference():
    g = torch.Generator().manual_seed(11)
    masks = torch.rand(100, 1, 28, 28, generator=g)
    boxes = _mixed_boxes(100, 203, 317, g)
    ref = _paste_one_by_one_reference(masks, boxes, (203, 317))
    ours = paste_masks_in_image(masks.cuda(), boxes.cuda(), (203, 317), max_chunk_bytes=1 << 20)
    _assert_matches(ours.cpu(), ref, atol=1e-5)
