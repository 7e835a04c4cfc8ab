"""RefineMask's boundary operator and inference overwrite against independent references:
window counts by brute force, Chebyshev distance transforms (scipy when installed), a hand-drawn
case, and the official formulation of the overwrite (threshold the upsampled non-boundary map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_seg.ops.boundary import boundary_region, refine_with_boundary, upsample_region


def brute_force_region(mask: np.ndarray, width: int, min_fraction: float = 0.1) -> np.ndarray:
    """Count, pixel by pixel, the window pixels of the other class (outside = background)."""
    h, w = mask.shape
    k = 2 * width + 1
    out = np.zeros_like(mask, dtype=bool)
    for i in range(h):
        for j in range(w):
            opposite = 0
            for di in range(-width, width + 1):
                for dj in range(-width, width + 1):
                    y, x = i + di, j + dj
                    inside = 0 <= y < h and 0 <= x < w
                    value = bool(mask[y, x]) if inside else False
                    opposite += value != bool(mask[i, j])
            out[i, j] = opposite > min_fraction * k * k
    return out


def random_masks(n: int, h: int, w: int, seed: int, cells: int | None = None) -> torch.Tensor:
    """Blobby masks (smoothed noise thresholded) with thin parts and holes, some at the border;
    ``cells`` noise values per side (default: one per 2 pixels, very ragged masks)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, cells or h // 2 + 1, cells or w // 2 + 1, generator=g)
    smooth = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return smooth > 0.5


def test_hand_drawn_square_width_1():
    """A 3x3 square in a 7x7 frame: every square pixel touches background, and the ring of
    background around it touches the square; the far background does not."""
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 2:5, 2:5] = True
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[1:6, 1:6] = True  # the square and its 8-connected ring
    expected[3, 3] = False  # the centre sees only foreground
    assert torch.equal(boundary_region(mask, 1)[0], expected)


def test_width_2_needs_more_than_10_percent_of_the_window():
    """One foreground pixel in a 5x5 window is 4% (no boundary around it at width 2, except
    itself: 24/25 of its window is background); a 2x2 block is 16% of the windows that hold it
    all, 8% of those that hold two of its pixels."""
    single = torch.zeros(1, 9, 9, dtype=torch.bool)
    single[0, 4, 4] = True
    region = boundary_region(single, 2)[0]
    assert region.sum() == 1 and region[4, 4]
    block = torch.zeros(1, 9, 9, dtype=torch.bool)
    block[0, 4:6, 4:6] = True
    region = boundary_region(block, 2)[0]
    # only windows holding the whole block (16%) count: pixels at Chebyshev distance <= 1 from
    # it; at distance 2 a window holds 1 or 2 block pixels (4%, 8%)
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[3:7, 3:7] = True
    assert torch.equal(region, expected)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_matches_brute_force_window_counts(width):
    masks = random_masks(6, 17, 23, seed=width)
    masks[0] = True  # all foreground: a band along the frame only
    masks[1] = False  # empty: no boundary
    ours = boundary_region(masks, width)
    for i in range(masks.shape[0]):
        ref = brute_force_region(masks[i].numpy(), width)
        assert np.array_equal(ours[i].numpy(), ref), f"mask {i}"
    assert not ours[1].any()
    frame = torch.ones(17, 23, dtype=torch.bool)
    frame[width:-width, width:-width] = False  # all foreground: the band along the frame
    assert torch.equal(ours[0], frame)


def test_width_1_is_chebyshev_distance_1_to_the_other_class():
    """At width 1 the region is exactly the pixels whose nearest pixel of the other class (the
    outside counting as background) is at Chebyshev distance 1: a distance transform."""
    ndimage = pytest.importorskip("scipy.ndimage")
    masks = random_masks(4, 21, 19, seed=7).numpy()
    ours = boundary_region(torch.from_numpy(masks), 1).numpy()
    for mask, region in zip(masks, ours):
        padded_fg = np.pad(mask, 1, constant_values=False)  # outside = background
        d_to_bg = ndimage.distance_transform_cdt(padded_fg, metric="chessboard")[1:-1, 1:-1]
        padded_bg = np.pad(~mask, 1, constant_values=True)
        d_to_fg = ndimage.distance_transform_cdt(padded_bg, metric="chessboard")[1:-1, 1:-1]
        # cdt gives -1 where no zero exists (an all-background image has no foreground)
        d_to_fg = np.where(d_to_fg < 0, 10**6, d_to_fg)
        expected = np.where(mask, d_to_bg == 1, d_to_fg == 1)
        assert np.array_equal(region, expected)


def test_upsample_region_bilinear_align_corners():
    region = torch.zeros(1, 4, 4, dtype=torch.bool)
    region[0, 1, 1] = True
    up = upsample_region(region, (8, 8))[0]
    ref = F.interpolate(region[:, None].float(), size=(8, 8), mode="bilinear", align_corners=True)
    assert torch.equal(up, ref[0, 0] >= 0.5)
    assert 0 < up.sum() < 64


def test_overwrite_touches_only_the_boundary_band():
    g = torch.Generator().manual_seed(0)
    prev_masks = random_masks(5, 28, 28, seed=3, cells=4)
    previous = torch.where(prev_masks, 3.0, -3.0)[:, None] + 0.1 * torch.randn(5, 1, 28, 28, generator=g)
    new = torch.randn(5, 1, 56, 56, generator=g) * 5
    out = refine_with_boundary(previous, new, width=1)
    up_prev = F.interpolate(previous, size=(56, 56), mode="bilinear", align_corners=True)
    band = upsample_region(boundary_region(previous[:, 0] >= 0, 1), (56, 56))[:, None]
    assert band.any() and not band.all()
    assert torch.equal(out[band], new[band])  # inside the band: this stage's logits
    assert torch.equal(out[~band], up_prev[~band])  # outside: the previous mask, untouched
    assert (out != up_prev).any() and band.float().mean() < 0.5  # a band, not the whole RoI


def test_overwrite_equals_the_official_formulation():
    """The official inference thresholds the upsampled *non*-boundary map and overwrites with
    the previous logits there; for sizes that double from an even side both are the same."""
    g = torch.Generator().manual_seed(1)
    for h in (14, 28, 56):
        previous = torch.randn(4, 1, h, h, generator=g) * 4
        new = torch.randn(4, 1, 2 * h, 2 * h, generator=g) * 4
        block = boundary_region(previous[:, 0].sigmoid() >= 0.5, 1)
        non_boundary = F.interpolate((~block)[:, None].float(), size=(2 * h, 2 * h),
                                     mode="bilinear", align_corners=True) >= 0.5
        expected = new.clone()
        up_prev = F.interpolate(previous, size=(2 * h, 2 * h), mode="bilinear", align_corners=True)
        expected[non_boundary] = up_prev[non_boundary]
        assert torch.equal(refine_with_boundary(previous, new, 1), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        boundary_region(torch.zeros(1, 4, 4, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="Tensor\\[N, H, W\\]"):
        boundary_region(torch.zeros(4, 4, dtype=torch.bool), 1)
