"""Joint augmentation: instances, keypoints and label maps move with the image."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from lightning_seg.data.transforms import (
    AlbumentationsTransform,
    boxes_from_masks,
    eval_transform,
    is_reflection,
    train_transform,
)
from lightning_seg.structures import (
    DatasetInfo,
    InstanceTargets,
    PanopticTargets,
    Sample,
    SampleMeta,
)

H, W = 23, 37  # odd, unequal


def _sample(with_masks: bool = True, with_keypoints: bool = True) -> Sample:
    """Three instances: A top-left, B straddling x=15, C bottom-right; 2 keypoints each."""
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g)
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 2:7, 3:9] = True  # A
    masks[1, 4:10, 11:20] = True  # B
    masks[2, 14:21, 25:35] = True  # C
    keypoints = torch.tensor(
        [
            [[4.0, 3.0, 2.0], [7.0, 5.0, 2.0]],  # A: left, right
            [[12.0, 5.0, 2.0], [18.0, 8.0, 1.0]],  # B: left inside a crop x<15, right outside
            [[26.0, 15.0, 2.0], [33.0, 19.0, 2.0]],  # C
        ]
    )
    inst = InstanceTargets(
        boxes=boxes_from_masks(masks),
        labels=torch.tensor([3, 1, 2]),
        image_size=(H, W),
        masks=masks if with_masks else None,
        keypoints=keypoints if with_keypoints else None,
        track_ids=torch.tensor([10, 11, 12]),
    )
    semantic = torch.randint(0, 4, (H, W), generator=g)
    semantic[0, :5] = 255
    seg = torch.zeros(H, W, dtype=torch.int64)
    for i, seg_id in enumerate([1001, 2002, 3003]):
        seg[masks[i]] = seg_id
    panoptic = PanopticTargets(
        segment_map=seg,
        ids=torch.tensor([1001, 2002, 3003]),
        labels=torch.tensor([3, 1, 2]),
        isthing=torch.ones(3, dtype=torch.bool),
        iscrowd=torch.zeros(3, dtype=torch.bool),
    )
    return Sample(image, SampleMeta(7, "synthetic.png", (H, W)), inst, semantic, panoptic)


def _crop(x_max: int, y_max: int) -> AlbumentationsTransform:
    return AlbumentationsTransform([A.Crop(x_min=0, y_min=0, x_max=x_max, y_max=y_max)])


def test_boxes_from_masks_matches_pycocotools():
    from pycocotools import mask as mask_utils

    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 2:7, 3:9] = True
    masks[1, 5, 36] = True
    boxes = boxes_from_masks(masks)
    rle = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    xywh = torch.as_tensor(mask_utils.toBbox(rle), dtype=torch.float32)
    expected = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    assert torch.equal(boxes[:2], expected[:2])
    assert torch.equal(boxes[2], torch.zeros(4))


def test_crop_removes_an_instance_entirely():
    sample = _sample()
    out = _crop(15, 12)(sample)  # C (bottom-right) is gone, A whole, B partial
    inst = out.instances
    assert out.image.shape == (3, 12, 15)
    assert inst.image_size == (12, 15)
    assert inst.labels.tolist() == [3, 1]
    assert inst.track_ids.tolist() == [10, 11]
    assert inst.masks.shape == (2, 12, 15)
    assert inst.keypoints.shape == (2, 2, 3)
    assert inst.iscrowd.shape == (2,)
    assert torch.equal(inst.masks[0], sample.instances.masks[0, :12, :15])
    assert out.panoptic.ids.tolist() == [1001, 2002]
    assert out.panoptic.labels.tolist() == [3, 1]


def test_crop_without_masks_follows_boxes():
    out = _crop(15, 12)(_sample(with_masks=False))
    assert out.instances.masks is None
    assert out.instances.labels.tolist() == [3, 1]
    assert out.instances.boxes[1].tolist() == [11.0, 4.0, 15.0, 10.0]


def test_partial_crop_keeps_tight_box_and_hides_outside_keypoints():
    out = _crop(15, 12)(_sample())
    box_b = out.instances.boxes[1]
    assert box_b.tolist() == [11.0, 4.0, 15.0, 10.0]  # clipped at the crop edge and tight
    kp_b = out.instances.keypoints[1]
    assert kp_b[0].tolist() == [12.0, 5.0, 2.0]  # inside: unchanged
    assert kp_b[1].tolist() == [0.0, 0.0, 0.0]  # x=18 left the 15-wide crop: visibility 0


def test_rotation_box_is_tight_around_rotated_mask():
    t = AlbumentationsTransform([A.Rotate(limit=(30, 30), p=1.0)], seed=0)
    out = t(_sample())
    inst = out.instances
    assert torch.equal(inst.boxes, boxes_from_masks(inst.masks))
    assert bool(inst.masks.flatten(1).any(1).all())


def test_hflip_swaps_left_right_keypoints_and_mirrors_coordinates():
    sample = _sample()
    t = AlbumentationsTransform([A.HorizontalFlip(p=1.0)], flip_permutation=[1, 0])
    out = t(sample)
    kp_in, kp_out = sample.instances.keypoints, out.instances.keypoints
    # keypoint 0 of the output is the mirrored keypoint 1 of the input and vice versa
    assert torch.equal(kp_out[:, 0, 0], W - kp_in[:, 1, 0])
    assert torch.equal(kp_out[:, 1, 0], W - kp_in[:, 0, 0])
    assert torch.equal(kp_out[:, 0, 1:], kp_in[:, 1, 1:])
    assert torch.equal(out.image, sample.image.flip(2))
    assert torch.equal(out.instances.masks, sample.instances.masks.flip(2))
    boxes = sample.instances.boxes
    assert torch.equal(out.instances.boxes[:, 0], W - boxes[:, 2])
    assert torch.equal(out.semantic, sample.semantic.flip(1))
    assert torch.equal(out.panoptic.segment_map, sample.panoptic.segment_map.flip(1))


def test_no_flip_keeps_keypoint_order_and_two_flips_cancel():
    sample = _sample()
    out = AlbumentationsTransform([A.HorizontalFlip(p=0.0)], flip_permutation=[1, 0])(sample)
    assert torch.equal(out.instances.keypoints, sample.instances.keypoints)
    twice = AlbumentationsTransform(
        [A.HorizontalFlip(p=1.0), A.HorizontalFlip(p=1.0)], flip_permutation=[1, 0]
    )(sample)
    assert torch.equal(twice.instances.keypoints, sample.instances.keypoints)


def test_flip_permutation_comes_from_bound_dataset_info():
    info = DatasetInfo(class_names=["a", "b", "c", "d"], keypoint_names=["l", "r"],
                       keypoint_flip_map=[(0, 1)])
    sample = _sample()
    unbound = AlbumentationsTransform([A.HorizontalFlip(p=1.0)])
    with pytest.raises(ValueError, match="flip_permutation"):
        unbound(sample)
    out = unbound.bind(info)(sample)
    assert torch.equal(out.instances.keypoints[:, 0, 0], W - sample.instances.keypoints[:, 1, 0])


def test_reflections_are_detected():
    assert is_reflection("HorizontalFlip", {})
    assert is_reflection("D4", {"group_element": "t"})
    assert not is_reflection("D4", {"group_element": "r90"})
    assert not is_reflection("Rotate", {"angle": 30})


def test_semantic_map_follows_image_and_padding_is_ignored():
    sample = _sample()
    # encode the semantic map into the image so we can check alignment pixel by pixel
    image = sample.semantic.clamp(max=9).to(torch.uint8).mul(20).expand(3, H, W).contiguous()
    sample = Sample(image, sample.meta, sample.instances, sample.semantic, sample.panoptic)
    t = AlbumentationsTransform(
        [A.PadIfNeeded(min_height=40, min_width=40, p=1.0),
         A.RandomScale((-0.3, -0.3), interpolation=cv2.INTER_NEAREST, p=1.0),
         A.RandomCrop(25, 25, p=1.0)],
        ignore_index=255,
        seed=3,
    )
    out = t(sample)
    pad = out.semantic == 255
    labels_from_image = (out.image[0].long() // 20)
    assert torch.equal(labels_from_image[~pad], out.semantic[~pad])
    assert pad.any()
    assert set(out.semantic.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert set(out.panoptic.segment_map.unique().tolist()) <= {0, 1001, 2002, 3003}


def test_fill_mask_other_than_zero_is_refused():
    with pytest.raises(ValueError, match="fill_mask"):
        AlbumentationsTransform([A.PadIfNeeded(50, 50, fill_mask=255)])


def test_deterministic_with_a_seed():
    sample = _sample()
    a = train_transform(size=(17, 19), color_jitter=0.3, flip_permutation=[1, 0], seed=5)
    b = train_transform(size=(17, 19), color_jitter=0.3, flip_permutation=[1, 0], seed=5)
    outs_a = [a(sample) for _ in range(4)]
    outs_b = [b(sample) for _ in range(4)]
    for x, y in zip(outs_a, outs_b):
        assert torch.equal(x.image, y.image)
        assert torch.equal(x.semantic, y.semantic)
        assert torch.equal(x.instances.boxes, y.instances.boxes)
    assert not all(torch.equal(outs_a[0].image, o.image) for o in outs_a[1:])
    assert outs_a[0].image.shape == (3, 17, 19)


def test_empty_instances_and_fit_resize():
    sample = _sample()
    empty = Sample(sample.image, sample.meta, InstanceTargets.empty((H, W)))
    out = train_transform(size=(15, 15), crop=False, scale_range=(1.0, 1.0), seed=0)(empty)
    assert len(out.instances) == 0
    assert max(out.image.shape[1:]) == 15
    assert out.instances.masks.shape == (0, *out.image.shape[1:])
    ev = eval_transform(size=(16, 16))(sample)
    assert ev.image.shape == (3, 10, 16)  # 23 * 16 / 37 = 9.9
    assert ev.instances.image_size == (10, 16)


def test_clip_frames_get_the_same_parameters():
    sample = _sample()
    t = train_transform(size=(13, 13), flip_permutation=[1, 0], seed=2)
    frames = t.apply_clip([sample, sample, sample])
    assert all(torch.equal(frames[0].image, f.image) for f in frames[1:])


@pytest.mark.parametrize(
    "op",
    [
        A.HorizontalFlip(p=1.0),
        A.VerticalFlip(p=1.0),
        A.Transpose(p=1.0),
        A.Affine(rotate=(90, 90), p=1.0),
        A.PadIfNeeded(40, 48, p=1.0),
        A.Crop(x_min=2, y_min=1, x_max=30, y_max=20),
    ],
    ids=lambda op: type(op).__name__,
)
def test_keypoint_stays_at_its_mask_pixel_centre(op):
    """Keypoints use the continuous frame (pixel (i, j) centred at (j + .5, i + .5)), like boxes."""
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    points = [(5, 7), (14, 22)]
    for n, (r, c) in enumerate(points):
        masks[n, r, c] = True
    keypoints = torch.tensor([[[c + 0.5, r + 0.5, 2.0]] for r, c in points])
    inst = InstanceTargets(
        boxes=boxes_from_masks(masks), labels=torch.zeros(2, dtype=torch.int64),
        image_size=(H, W), masks=masks, keypoints=keypoints,
    )  # fmt: skip
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    out = AlbumentationsTransform([op], flip_permutation=[0])(Sample(image, SampleMeta(0, "k", (H, W)), inst))
    for n in range(len(out.instances)):
        r, c = torch.nonzero(out.instances.masks[n])[0].tolist()
        assert out.instances.keypoints[n, 0].tolist() == [c + 0.5, r + 0.5, 2.0]
        assert out.instances.boxes[n].tolist() == [c, r, c + 1, r + 1]


def test_panoptic_segments_with_unsorted_ids_survive_a_flip():
    sample = _sample()
    pan = sample.panoptic
    order = torch.tensor([2, 0, 1])
    shuffled = PanopticTargets(pan.segment_map, pan.ids[order], pan.labels[order], pan.isthing[order],
                               pan.iscrowd[order])
    sample = Sample(sample.image, sample.meta, panoptic=shuffled)
    out = AlbumentationsTransform([A.HorizontalFlip(p=1.0)])(sample)
    assert torch.equal(out.panoptic.segment_map, pan.segment_map.flip(1))
    assert out.panoptic.ids.tolist() == [3003, 1001, 2002]
    assert out.panoptic.labels.tolist() == [2, 3, 1]
