"""Repeat-factor sampling (LVIS) on a tiny LVIS-style file: factors, epochs, the DataModule option."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lightning_seg.data.datamodules.coco import LvisDataModule
from lightning_seg.data.samplers import (
    RepeatFactorSampler,
    item_categories,
    main,
    repeat_factors,
)


def _tiny_lvis(root, num_images: int = 10) -> None:
    """10 images: category 1 in 8 of them, category 3 in image 0 only, category 5 in images 1
    and 2, image 9 without annotations."""
    (root / "train2017").mkdir(parents=True)
    images, anns = [], []
    cats = {i: [] for i in range(num_images)}
    for i in range(8):
        cats[i].append(1)
    cats[0].append(3)
    cats[1].append(5)
    cats[2].append(5)
    for i in range(num_images):
        name = f"{i + 1:012d}.jpg"
        Image.new("RGB", (16, 12)).save(root / "train2017" / name)
        images.append({"id": i + 1, "height": 12, "width": 16, "neg_category_ids": [],
                       "not_exhaustive_category_ids": [],
                       "coco_url": f"http://images.cocodataset.org/train2017/{name}"})
        for c in cats[i]:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "area": 16.0,
                         "bbox": [2, 2, 4, 4], "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]})
    categories = [{"id": c, "name": f"cat{c}", "frequency": "r"} for c in (1, 3, 5)]
    doc = {"images": images, "annotations": anns, "categories": categories}
    for split in ("train", "val"):
        (root / f"lvis_v1_{split}.json").write_text(json.dumps(doc))


def expected_factors(thresh: float) -> np.ndarray:
    """By hand: f(cat1) = 0.8, f(cat3) = 0.1, f(cat5) = 0.2 over the 10 images."""
    r = {c: max(1.0, math.sqrt(thresh / f)) for c, f in ((1, 0.8), (3, 0.1), (5, 0.2))}
    per_image = [[1, 3], [1, 5], [1, 5], [1], [1], [1], [1], [1], [], []]
    return np.array([max((r[c] for c in cats), default=1.0) for cats in per_image])


def test_repeat_factors_by_hand():
    cats = [np.array([0, 1]), np.array([0, 2, 2]), np.array([0, 2]), *[np.array([0])] * 5,
            np.array([], dtype=np.int64), np.array([], dtype=np.int64)]
    # category 0 -> 1, 1 -> 3, 2 -> 5 of the file above
    np.testing.assert_allclose(repeat_factors(cats, 0.3), expected_factors(0.3))
    assert (repeat_factors(cats, 1e-3) == 1).all()  # nothing below 0.1%: no repeats
    with pytest.raises(ValueError, match="> 0"):
        repeat_factors(cats, 0.0)


def test_sampler_ceil_and_stochastic_rounding():
    factors = np.array([1.0, 1.7320508, 1.2247449, 1.0, 3.0])
    ceil = RepeatFactorSampler(factors, "ceil", seed=3)
    assert len(ceil) == 1 + 2 + 2 + 1 + 3
    assert Counter(list(ceil)) == {0: 1, 1: 2, 2: 2, 3: 1, 4: 3}
    first, second = ceil.indices(0), ceil.indices(1)
    assert sorted(first) == sorted(second) and first != second  # reshuffled each epoch
    assert list(ceil) == second and list(ceil) == ceil.indices(2)  # no set_epoch: next epoch
    ceil.set_epoch(0)
    assert list(ceil) == first
    assert RepeatFactorSampler(factors, "ceil", seed=3).indices(0) == first  # same on every rank
    stochastic = RepeatFactorSampler(factors, "stochastic", seed=0)
    totals = Counter()
    for epoch in range(400):
        stochastic.set_epoch(epoch)
        counts = Counter(iter(stochastic))
        assert len(stochastic) == sum(counts.values())
        assert all(math.floor(f) <= counts[i] <= math.ceil(f) for i, f in enumerate(factors))
        totals.update(counts)
    np.testing.assert_allclose([totals[i] / 400 for i in range(5)], factors, atol=0.06)


def test_lvis_datamodule_option_repeats_rare_images(tmp_path):
    _tiny_lvis(tmp_path)
    dm = LvisDataModule(tmp_path, batch_size=2, num_workers=0, persistent_workers=False,
                        pin_memory=False, drop_empty_train=False, repeat_factor_thresh=0.3)
    dm.setup("fit")
    assert [len(c) for c in item_categories(dm.train_dataset)] == [2, 2, 2, 1, 1, 1, 1, 1, 0, 0]
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    np.testing.assert_allclose(sampler.factors, expected_factors(0.3))
    assert Counter(iter(sampler)) == {0: 2, 1: 2, 2: 2, **{i: 1 for i in range(3, 10)}}
    batches = list(loader)
    assert sum(len(b) for b in batches) == 13
    plain = LvisDataModule(tmp_path, batch_size=2, num_workers=0, persistent_workers=False,
                           pin_memory=False)
    plain.setup("fit")
    assert plain.train_sampler() is None


def test_dataset_without_categories_is_a_clear_error():
    with pytest.raises(TypeError, match="item_categories"):
        item_categories([1, 2, 3])


def test_epoch_length_command(tmp_path, capsys):
    _tiny_lvis(tmp_path)
    main([str(tmp_path / "lvis_v1_train.json"), "--thresh", "0.3", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "10 items, 3 repeated" in out and "13 items per epoch" in out
    assert "steps per epoch at 4 images: 4" in out
