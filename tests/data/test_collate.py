"""Collate: padding of images and label maps, unpadded instance targets."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.data.collate import Collate
from lightning_seg.structures import Batch, InstanceTargets, PanopticTargets, Sample, SampleMeta


def _sample(h: int, w: int, num_instances: int, index: int) -> Sample:
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    masks = torch.zeros(num_instances, h, w, dtype=torch.bool)
    for i in range(num_instances):
        masks[i, i : i + 3, i : i + 4] = True
    boxes = torch.tensor([[i, i, i + 4, i + 3] for i in range(num_instances)], dtype=torch.float32)
    inst = InstanceTargets(
        boxes=boxes.reshape(-1, 4),
        labels=torch.arange(num_instances),
        image_size=(h, w),
        masks=masks,
    )
    semantic = torch.randint(0, 5, (h, w))
    seg = torch.full((h, w), 7, dtype=torch.int64)
    panoptic = PanopticTargets(
        segment_map=seg,
        ids=torch.tensor([7]),
        labels=torch.tensor([1]),
        isthing=torch.tensor([False]),
        iscrowd=torch.tensor([False]),
    )
    return Sample(image, SampleMeta(index, f"img{index}.png", (h, w)), inst, semantic, panoptic)


def test_collate_pads_unequal_odd_sizes():
    samples = [_sample(21, 37, 2, 0), _sample(45, 13, 0, 1), _sample(9, 9, 1, 2)]
    batch = Collate(size_divisibility=32, ignore_index=255)(samples)
    assert isinstance(batch, Batch)
    assert batch.images.shape == (3, 3, 64, 64)
    assert batch.images.dtype == torch.float32
    assert batch.image_sizes == [(21, 37), (45, 13), (9, 9)]
    assert [m.image_id for m in batch.meta] == [0, 1, 2]
    # image content and zero padding
    assert torch.allclose(batch.images[0, :, :21, :37], samples[0].image.float() / 255)
    assert batch.images[0, :, 21:].abs().sum() == 0 and batch.images[0, :, :, 37:].abs().sum() == 0
    assert float(batch.images.max()) <= 1.0
    # semantic padded with ignore_index
    assert batch.semantic.shape == (3, 64, 64)
    assert torch.equal(batch.semantic[1, :45, :13], samples[1].semantic)
    assert bool((batch.semantic[1, 45:] == 255).all()) and bool((batch.semantic[1, :, 13:] == 255).all())
    # panoptic padded with void
    seg = batch.panoptic[2].segment_map
    assert seg.shape == (64, 64)
    assert bool((seg[:9, :9] == 7).all()) and int(seg[9:].max()) == 0 and int(seg[:, 9:].max()) == 0
    # instances unpadded; the empty image keeps an empty target
    assert [len(t) for t in batch.instances] == [2, 0, 1]
    assert batch.instances[0].masks.shape == (2, 21, 37)
    assert batch.instances[1].masks.shape == (0, 45, 13)
    assert batch.instances[2].image_size == (9, 9)


def test_size_divisibility_one_is_tight_and_other_ignore_index():
    samples = [_sample(21, 37, 1, 0), _sample(23, 11, 0, 1)]
    batch = Collate(size_divisibility=1, ignore_index=-1)(samples)
    assert batch.images.shape == (2, 3, 23, 37)
    assert int(batch.semantic[0, 21:].max()) == -1


def test_mixed_targets_are_refused():
    a = _sample(9, 9, 1, 0)
    b = Sample(a.image, a.meta)
    with pytest.raises(ValueError, match="semantic"):
        Collate()([a, b])


def test_batch_moves_to_device():
    batch = Collate()([_sample(9, 11, 1, 0)])
    moved = batch.to("cpu")
    assert moved.images.shape == batch.images.shape


def test_clip_collate_flattens_clip_major():
    from lightning_seg.data.collate import ClipCollate

    clips = [[_sample(9, 11, 1, 0), _sample(9, 11, 1, 1)], [_sample(13, 7, 0, 2), _sample(13, 7, 2, 3)]]
    batch = ClipCollate(size_divisibility=8)(clips)
    assert batch.images.shape == (4, 3, 16, 16)
    assert [m.image_id for m in batch.meta] == [0, 1, 2, 3]
    assert batch.clip_length == 2
    with pytest.raises(ValueError, match="same length"):
        ClipCollate()([clips[0], clips[1][:1]])
