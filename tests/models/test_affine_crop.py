"""The top-down affine crop (issue #15): exact inverse, image and keypoints move together,
rotation direction, aspect-ratio boxes, the crop recorded in the sample, flip swaps left/right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_seg.data.topdown import TopDownAffine
from lightning_seg.models.postprocess.keypoints import targets_to_original_frame, to_original_frame
from lightning_seg.ops.affine import (
    apply_affine,
    box_center_size,
    crop_matrix,
    invert_affine,
    warp_image,
)
from lightning_seg.structures import AffineCrop, DatasetInfo, KeypointTargets, Sample, SampleMeta


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (37.0, False), (-80.0, True), (0.0, True)])
def test_crop_and_uncrop_are_inverse(rotation, flip):
    m = crop_matrix((123.4, 77.7), (90.0, 120.0), (256, 192), rotation, flip)
    pts = torch.rand(50, 2, dtype=torch.float64) * 300 - 20
    back = apply_affine(apply_affine(pts, m), invert_affine(m))
    torch.testing.assert_close(back, pts, atol=1e-9, rtol=0)
    crop = AffineCrop.from_matrix(m, (256, 192))
    torch.testing.assert_close(apply_affine(apply_affine(pts, crop.forward()), crop.inverse()), pts,
                               atol=1e-9, rtol=0)


def test_box_fills_the_output_and_rotation_direction():
    m = crop_matrix((100.0, 50.0), (40.0, 80.0), (160, 80))
    corners = torch.tensor([[80.0, 10.0], [120.0, 90.0], [100.0, 50.0]], dtype=torch.float64)
    assert apply_affine(corners, m).tolist() == [[0.0, 0.0], [80.0, 160.0], [40.0, 80.0]]
    # 90 degrees: a point right of the centre lands above it (content turns counter-clockwise)
    r = crop_matrix((0.0, 0.0), (10.0, 10.0), (10, 10), rotation=90.0)
    out = apply_affine(torch.tensor([[3.0, 0.0]], dtype=torch.float64), r)[0]
    torch.testing.assert_close(out, torch.tensor([5.0, 2.0], dtype=torch.float64), atol=1e-12, rtol=0)
    f = crop_matrix((0.0, 0.0), (10.0, 10.0), (10, 10), flip=True)
    assert apply_affine(torch.tensor([[3.0, 0.0]], dtype=torch.float64), f)[0].tolist() == [2.0, 5.0]


def test_warp_image_agrees_with_the_matrix_on_a_linear_image():
    """Bilinear resampling reproduces a linear image exactly, so the warped pixel (i, j) must
    equal the image's value at the inverse-mapped continuous point (j + .5, i + .5)."""
    h, w = 60, 80
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)

    def f(x, y):
        return 2.0 * x - 0.5 * y + 30.0

    image = f(xs + 0.5, ys + 0.5).astype(np.float32)[..., None].repeat(3, -1)
    m = crop_matrix((41.3, 29.8), (30.0, 40.0), (48, 36), rotation=23.0, flip=True)
    out = warp_image(image, m, (48, 36))[..., 0]
    oy, ox = np.mgrid[0:48, 0:36].astype(np.float64)
    src = apply_affine(torch.from_numpy(np.stack([ox + 0.5, oy + 0.5], -1)), invert_affine(m)).numpy()
    inside = (src[..., 0] > 1) & (src[..., 0] < w - 1) & (src[..., 1] > 1) & (src[..., 1] < h - 1)
    expected = f(src[..., 0], src[..., 1])
    assert inside.mean() > 0.9
    np.testing.assert_allclose(out[inside], expected[inside], atol=2e-3)


def test_box_center_size_fixes_the_aspect_ratio_and_pads():
    c, s = box_center_size(torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 10.0, 80.0]]), 0.75, 1.25)
    assert c.tolist() == [[30.0, 30.0], [5.0, 40.0]]
    torch.testing.assert_close(s, torch.tensor([[50.0, 50.0 / 0.75], [60.0 * 1.25, 100.0]]))


def _sample(h=120, w=160, points=((60.5, 40.5), (100.5, 70.5))) -> Sample:
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    kpts = torch.zeros(1, len(points), 3)
    for k, (x, y) in enumerate(points):
        image[k % 3, int(y), int(x)] = 255  # a bright pixel centred on the keypoint
        kpts[0, k] = torch.tensor([x, y, 2.0])
    targets = KeypointTargets(kpts, (h, w), boxes=torch.tensor([[40.0, 20.0, 120.0, 100.0]]),
                              norm_size=torch.tensor([7.0]), areas=torch.tensor([500.0]))
    return Sample(image, SampleMeta(3, "x.png", (h, w)), keypoints=targets)


def test_topdown_affine_moves_image_and_keypoints_together():
    info = DatasetInfo(["thing"], keypoint_names=["left_a", "right_a"], keypoint_flip_map=[(0, 1)])
    transform = TopDownAffine((96, 96), train=True, box_padding=1.0, rotation_prob=1.0,
                              flip_prob=1.0, color_range=None, seed=0).bind(info)
    sample = _sample()
    out = transform(sample)
    assert out.image.shape == (3, 96, 96) and out.meta.crop is not None and out.meta.crop.flip
    assert out.meta.orig_size == (120, 160)
    kpts = out.keypoints.keypoints[0]
    # flipped: keypoint 0 of the crop is the original keypoint 1 (left/right swapped)
    for k_out, k_in in ((0, 1), (1, 0)):
        x, y = kpts[k_out, :2].tolist()
        channel = out.image[k_in % 3].float()
        iy, ix = divmod(int(channel.argmax()), 96)
        assert abs(ix + 0.5 - x) < 1.0 and abs(iy + 0.5 - y) < 1.0
    # back to the image on disk: exact
    back = targets_to_original_frame(out.keypoints, out.meta)
    torch.testing.assert_close(back.keypoints[0, [1, 0]], sample.keypoints.keypoints[0], atol=1e-4, rtol=0)
    assert back.image_size == (120, 160) and back.norm_size.tolist() == [7.0]


def test_eval_crop_is_deterministic_and_keeps_visibility_outside():
    transform = TopDownAffine((64, 64), train=False, box_padding=1.0)
    sample = _sample(points=((60.5, 40.5), (5.5, 5.5)))  # the second one is outside the box
    a, b = transform(sample), transform(sample)
    assert torch.equal(a.image, b.image) and a.meta.crop == b.meta.crop
    assert a.keypoints.keypoints[0, 1, 2] == 2.0  # kept; heatmap targets give it weight 0
    assert a.keypoints.keypoints[0, 1, 0] < 0
    pred = to_original_frame(a.keypoints.keypoints[0, :, :2].double(), a.meta, (64, 64))
    torch.testing.assert_close(pred.float(), sample.keypoints.keypoints[0, :, :2], atol=1e-4, rtol=0)


def test_flip_needs_a_permutation():
    transform = TopDownAffine((32, 32), train=True, flip_prob=1.0, seed=0)
    with pytest.raises(ValueError, match="flip_permutation"):
        transform(_sample())


def test_whole_image_without_targets():
    sample = Sample(torch.zeros(3, 50, 100, dtype=torch.uint8), SampleMeta(0, "f.png", (50, 100)))
    out = TopDownAffine((64, 64))(sample)
    assert out.keypoints is None and out.image.shape == (3, 64, 64)
    window = out.meta.crop.window()
    assert window.tolist() == pytest.approx([-12.5, -37.5, 112.5, 87.5])
    assert math.isclose(out.meta.crop.size[0], 125.0)
