"""Golden tests of the heatmap ops (issue #15): rendering against the formulas, the official
Hourglass kernel, decoding round trips, quarter shift, DARK, soft-argmax, flip back."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seg.ops.heatmaps import (
    decode_heatmaps,
    flip_back_heatmaps,
    flip_keypoints,
    grid_to_input,
    heatmap_argmax,
    input_to_grid,
    refine_dark,
    refine_quarter,
    render_heatmaps,
    soft_argmax,
)


def kp(points, vis=2.0) -> torch.Tensor:
    """``Tensor[N, 1, 3]`` from a list of (x, y)."""
    t = torch.tensor(points, dtype=torch.float32).view(-1, 1, 2)
    return torch.cat([t, torch.full((t.shape[0], 1, 1), float(vis))], dim=-1)


def test_frames_are_inverse_and_centre_cells():
    p = torch.tensor([[10.0, 3.0], [0.0, 0.0]])
    assert torch.equal(grid_to_input(input_to_grid(p, 4), 4), p)
    # the centre of cell (i, j) = (1, 2) is the input point ((2 + .5) 4, (1 + .5) 4)
    assert input_to_grid(torch.tensor([10.0, 6.0]), 4).tolist() == [2.0, 1.0]


def test_msra_rendering_matches_the_formula():
    sigma = 2.0
    # input (21, 14) at stride 4 -> grid (4.75, 3.0): centre cell (5, 3)
    hm, w = render_heatmaps(kp([(21.0, 14.0)]), (16, 12), 4, sigma, "msra")
    assert hm.shape == (1, 1, 16, 12) and w.tolist() == [[1.0]]
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    ref = torch.exp(-((xs - 5) ** 2 + (ys - 3) ** 2) / (2 * sigma**2))
    ref[(xs - 5).abs() > 3 * sigma] = 0
    ref[(ys - 3).abs() > 3 * sigma] = 0
    torch.testing.assert_close(hm[0, 0], ref, atol=1e-6, rtol=0)
    assert hm[0, 0, 3, 5] == 1.0 and hm.argmax() == 3 * 12 + 5


def test_official_hourglass_kernel_is_torch_image_gaussian_7():
    """pose-hg-train draws Torch ``image.gaussian(7)``: sigma 0.25 x 7 = 1.75 cells, peak 1,
    7 x 7 support, centred on the cell that contains the keypoint."""
    hm, _ = render_heatmaps(kp([(4 * 6 + 1.0, 4 * 7 + 3.9)]), (16, 16), 4, encoding="hourglass")
    g = hm[0, 0]
    assert torch.nonzero(g).amin(0).tolist() == [7 - 3, 6 - 3]
    assert torch.nonzero(g).amax(0).tolist() == [7 + 3, 6 + 3]
    # Torch: exp(-((i - c) / (0.25 * 7))^2 / 2 - ...), i, c 1-based, c = 4
    for di, dj in [(0, 0), (1, 0), (3, 3), (-2, 1)]:
        expected = math.exp(-((di / 1.75) ** 2 + (dj / 1.75) ** 2) / 2)
        assert g[7 + di, 6 + dj].item() == pytest.approx(expected, abs=1e-6)
    assert g[7, 6 + 4].item() == 0.0


def test_unlabelled_and_outside_keypoints_get_zero_maps_and_weights():
    pts = torch.tensor([[[8.0, 8.0, 2.0], [8.0, 8.0, 0.0], [-3.0, 8.0, 2.0], [8.0, 70.0, 1.0]]])
    hm, w = render_heatmaps(pts, (16, 16), 4, 2.0, "unbiased")
    assert w.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert hm[0, 0].max() > 0.9 and hm[0, 1:].abs().sum() == 0


def test_combined_by_max():
    pts = torch.cat([kp([(10.0, 10.0)]), kp([(40.0, 30.0)])])
    single, _ = render_heatmaps(pts, (16, 16), 4, 2.0, "msra")
    combined, w = render_heatmaps(pts, (16, 16), 4, 2.0, "msra", combine="max")
    assert combined.shape == (1, 1, 16, 16) and w.tolist() == [[1.0]]
    torch.testing.assert_close(combined[0], single.amax(0))


@pytest.mark.parametrize("blur", [0.0, 2.0])
def test_dark_round_trip_below_a_tenth_of_a_pixel(blur):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 1, 2, generator=g) * torch.tensor([48 * 4 - 48.0, 64 * 4 - 48.0]) + 24
    hm, _ = render_heatmaps(torch.cat([xy, torch.full((300, 1, 1), 2.0)], -1), (64, 48), 4, 2.0, "unbiased")
    coords, scores = decode_heatmaps(hm, "dark", blur_sigma=blur)
    err_cells = (grid_to_input(coords, 4) - xy).norm(dim=-1) / 4
    assert err_cells.max() < 0.1
    if blur == 0.0:
        assert err_cells.max() < 1e-3  # the log of a Gaussian is a quadratic: one Newton step
    assert scores.min() > 0.8


def test_quarter_shift_and_argmax_errors_are_bounded():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 1, 2, generator=g) * 40 + 12
    hm, _ = render_heatmaps(torch.cat([xy, torch.full((300, 1, 1), 2.0)], -1), (16, 16), 4, 2.0, "unbiased")
    err = {m: ((grid_to_input(decode_heatmaps(hm, m)[0], 4) - xy).norm(dim=-1) / 4)
           for m in ("argmax", "quarter", "dark")}
    assert err["argmax"].max() <= math.sqrt(0.5) + 1e-6
    assert err["quarter"].mean() < 0.6 * err["argmax"].mean()  # the paper's step helps
    assert err["dark"].mean() < 0.1 * err["quarter"].mean()


def test_quantised_encodings_cannot_be_undone():
    """msra / hourglass centre the Gaussian on a cell: a symmetric map around it, so every
    decoder returns that cell (the quantisation error UDP/DARK remove)."""
    hm, _ = render_heatmaps(kp([(4 * 5 + 1.1, 4 * 5 + 3.3)]), (16, 16), 4, 2.0, "msra")
    for method in ("argmax", "quarter", "dark"):
        coords, _ = decode_heatmaps(hm, method)
        torch.testing.assert_close(coords[0, 0], torch.tensor([5.0, 5.0]))


def test_refine_quarter_golden():
    hm = torch.zeros(1, 2, 5, 5)
    hm[0, 0, 2, 2], hm[0, 0, 2, 3], hm[0, 0, 1, 2] = 1.0, 0.5, 0.2  # right and up higher
    hm[0, 1, 0, 4] = 1.0  # on the border: no shift
    coords, maxvals = heatmap_argmax(hm)
    assert coords.tolist() == [[[2.0, 2.0], [4.0, 0.0]]] and maxvals.tolist() == [[1.0, 1.0]]
    assert refine_quarter(hm, coords).tolist() == [[[2.25, 1.75], [4.0, 0.0]]]


def test_dark_skips_borders_and_non_maxima():
    hm = torch.zeros(1, 1, 8, 8)
    hm[0, 0, 0, 0] = 1.0
    coords, _ = heatmap_argmax(hm)
    assert torch.equal(refine_dark(hm, coords), coords)


def test_soft_argmax():
    # a map symmetric around a cell (the middle of a 15 x 15 grid): exactly that cell, any beta
    hm, _ = render_heatmaps(kp([(4 * 7 + 2.0, 4 * 7 + 2.0)]), (15, 15), 4, 2.0, "unbiased")
    for beta in (1.0, 10.0):
        torch.testing.assert_close(soft_argmax(hm, beta)[0, 0], torch.tensor([7.0, 7.0]))
    # sub-cell centres: a sharp softmax in a window recovers them closely
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(100, 1, 2, generator=g) * 24 + 20
    hm, _ = render_heatmaps(torch.cat([xy, torch.full((100, 1, 1), 2.0)], -1), (16, 16), 4, 2.0, "unbiased")
    err = (grid_to_input(soft_argmax(hm, 10.0, window=6), 4) - xy).norm(dim=-1) / 4
    assert err.max() < 0.05


def test_flip_back_is_exact_in_the_continuous_frame():
    """Heatmaps of a mirrored input (x -> W - x, left/right swapped), flipped back, equal the
    heatmaps of the input: no one-pixel shift is needed."""
    g = torch.Generator().manual_seed(3)
    w_in = 64
    pts = torch.cat([torch.rand(4, 3, 2, generator=g) * 50 + 7, torch.full((4, 3, 1), 2.0)], -1)
    perm = [0, 2, 1]
    mirrored = pts.clone()
    mirrored[..., 0] = w_in - mirrored[..., 0]
    mirrored = mirrored[:, perm]
    hm, _ = render_heatmaps(pts, (16, 16), 4, 2.0, "unbiased")
    hm_m, _ = render_heatmaps(mirrored, (16, 16), 4, 2.0, "unbiased")
    torch.testing.assert_close(flip_back_heatmaps(hm_m, perm), hm, atol=1e-6, rtol=0)
    back = flip_keypoints(mirrored, perm, w_in)
    torch.testing.assert_close(back, pts)
    with pytest.raises(ValueError):
        flip_back_heatmaps(hm, [0, 1])


def test_oks_matrix_and_nms_against_the_formula():
    from lightning_seg.ops.keypoints import oks_matrix, oks_nms

    sigmas = [0.05, 0.1]
    a = torch.tensor([[10.0, 10.0, 0.9], [20.0, 10.0, 0.9]])
    b = a.clone()
    b[:, 0] += 3.0
    c = a.clone()
    c[1, 2] = 0.1  # its second keypoint is below the score threshold
    kpts, areas = torch.stack([a, b, c]), torch.tensor([400.0, 600.0, 400.0])
    oks = oks_matrix(kpts, areas, sigmas, score_thresh=0.2)
    s2 = 500.0  # mean area of a and b
    ref = sum(math.exp(-9.0 / (2 * s2 * (2 * s) ** 2)) for s in sigmas) / 2
    assert oks[0, 1].item() == pytest.approx(ref) and oks[1, 0].item() == pytest.approx(ref)
    assert oks[0, 2].item() == pytest.approx(1.0)  # only the first keypoint counts: identical
    # best first: b (0.9) keeps c (OKS 0.41 on the one shared keypoint), c suppresses a (OKS 1)
    keep = oks_nms(kpts, torch.tensor([0.5, 0.9, 0.7]), areas, sigmas, thresh=0.9)
    assert keep.tolist() == [1, 2]
    assert oks_nms(kpts, torch.tensor([0.5, 0.9, 0.7]), areas, sigmas, thresh=1.0).tolist() == [1, 2, 0]
