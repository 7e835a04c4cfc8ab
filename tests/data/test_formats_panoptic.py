"""COCO panoptic reader on the real panopticapi sample."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from lightning_seg.data.formats import CocoPanopticDataset


def _sample(shared_data):
    root = shared_data / "panoptic" / "coco_panoptic_sample"
    ann_file = root / "panoptic_examples.json"
    ds = CocoPanopticDataset(root / "input_images", ann_file, root / "panoptic_examples")
    return ds, root, json.loads(ann_file.read_text())


def test_panoptic_segments_match_png(shared_data):
    ds, root, doc = _sample(shared_data)
    assert len(ds) == 2 and ds.info.num_classes == 133
    assert sum(ds.info.isthing) == 80 and ds.info.palette[0] == (220, 20, 60)
    cats = {c["id"]: c for c in doc["categories"]}
    total = 0
    for i, ann in enumerate(doc["annotations"]):
        s = ds[i]
        assert s.meta.image_id == ann["image_id"]
        rgb = np.asarray(Image.open(root / "panoptic_examples" / ann["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        assert np.array_equal(s.panoptic.segment_map.numpy(), ids)
        segs = ann["segments_info"]
        assert s.panoptic.ids.tolist() == [g["id"] for g in segs]
        names = [ds.info.class_names[k] for k in s.panoptic.labels.tolist()]
        assert names == [cats[g["category_id"]]["name"] for g in segs]
        isthing = [bool(cats[g["category_id"]]["isthing"]) for g in segs]
        assert s.panoptic.isthing.tolist() == isthing
        for g, label in zip(segs, s.panoptic.labels.tolist()):
            region = ids == g["id"]
            assert region.sum() == g["area"]
            assert (s.semantic.numpy()[region] == label).all()
        assert (s.semantic.numpy()[ids == 0] == 255).all()
        things = [g for g in segs if cats[g["category_id"]]["isthing"]]
        boxes = np.array([g["bbox"] for g in things], dtype=np.float32)
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_array_equal(s.instances.boxes.numpy(), boxes)
        assert s.instances.masks.sum(dim=(1, 2)).tolist() == [g["area"] for g in things]
        total += len(segs)
    assert total == 50 and ds.skips.num_skipped == 0 and ds.skips.num_fixed == 0
