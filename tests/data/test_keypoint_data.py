"""Top-down keypoint data (issue #15): MPII / COCO / face / detection readers on the real
samples, their coordinate conventions and normalisers, bad input (counted skips and errors
naming the record), the DataModules' facts and crops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_seg.constants import FACE_FLIP_PAIRS, MPII_KEYPOINT_NAMES
from lightning_seg.data.datamodules import (
    CocoKeypointDataModule,
    FaceLandmarkDataModule,
    MPIIDataModule,
    SyntheticKeypointDataModule,
)
from lightning_seg.data.formats.keypoints import (
    TopDownKeypointDataset,
    coco_topdown_records,
    detection_records,
    face_info,
    mpii_info,
    mpii_records,
    read_head_sizes,
)
from lightning_seg.data.io import DataError


@pytest.fixture(scope="module")
def samples(shared_data) -> Path:
    return shared_data / "keypoints" / "mmpose_samples"


# ------------------------------------------------------------------------------ MPII
def test_mpii_reader_conventions(samples):
    raw = json.loads((samples / "mpii" / "test_mpii.json").read_text())
    records = mpii_records(samples / "mpii" / "test_mpii.json")
    assert len(records) == 5 and records.num_keypoints == 16
    r0 = raw[0]
    # 1-based Matlab pixel indices -> continuous frame: - 0.5
    np.testing.assert_allclose(records.keypoints[0, :, :2], np.asarray(r0["joints"]) - 0.5, atol=1e-4)
    assert (records.keypoints[0, :, 2] == 2).all()
    # the official crop: centre 15 x scale lower, 200 x scale x 1.25 box
    s = r0["scale"]
    cx, cy = r0["center"][0] - 0.5, r0["center"][1] - 0.5 + 15 * s
    side = 200 * s * 1.25
    np.testing.assert_allclose(records.boxes[0], [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2],
                               rtol=1e-6)
    assert np.isnan(records.norm_size).all()  # no head boxes given
    assert records.image_ids[0] == int(Path(r0["image"]).stem)


def test_mpii_head_sizes_and_bad_files(samples, tmp_path):
    boxes = [[[10.0, 20.0], [40.0, 60.0]]] * 5
    (tmp_path / "heads.json").write_text(json.dumps(boxes))
    records = mpii_records(samples / "mpii" / "test_mpii.json", tmp_path / "heads.json")
    np.testing.assert_allclose(records.norm_size, [0.6 * 50.0] * 5)  # SC_BIAS x diagonal
    (tmp_path / "four.json").write_text(json.dumps(boxes[:4]))
    with pytest.raises(DataError, match="4 head boxes for 5 annotations"):
        read_head_sizes(tmp_path / "four.json", 5)
    raw = json.loads((samples / "mpii" / "test_mpii.json").read_text())
    raw[2]["joints"] = raw[2]["joints"][:15]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"record \[2\].*15 joints.*MPII has 16"):
        mpii_records(tmp_path / "bad.json")
    (tmp_path / "coco.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="expected MPII's JSON"):
        mpii_records(tmp_path / "coco.json")


def test_mpii_counts_invisible_persons_and_outside_keypoints(samples, tmp_path):
    raw = json.loads((samples / "mpii" / "test_mpii.json").read_text())
    raw[1]["joints_vis"] = [0] * 16  # nobody labelled
    raw[0]["joints"][3] = [5000.0, 10.0]  # outside the 1280-wide image: found at item time
    raw[4]["scale"] = 0.0  # zero-size box
    (tmp_path / "m.json").write_text(json.dumps(raw))
    records = mpii_records(tmp_path / "m.json")
    assert len(records) == 3
    assert records.skips.skipped == {"instance with fewer than 1 labelled keypoint(s)": 1,
                                     "zero-size box (scale <= 0)": 1}
    ds = TopDownKeypointDataset(samples / "mpii", records, mpii_info())
    sample = ds[0]
    assert sample.keypoints.keypoints[0, 3].tolist() == [0.0, 0.0, 0.0]
    assert sum(ds.skips.fixed.values()) == 1


# ------------------------------------------------------------------------------ COCO
def test_coco_topdown_records(samples):
    records, index = coco_topdown_records(samples / "coco" / "test_coco.json")
    raw = json.loads((samples / "coco" / "test_coco.json").read_text())
    with_kpts = [a for a in raw["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    assert len(records) == len(with_kpts) == 12
    assert records.skips.skipped["instance with fewer than 1 labelled keypoint(s)"] == 2
    a = next(a for a in with_kpts if a["id"] == int(records.ids[0]))
    k = np.asarray(a["keypoints"], dtype=np.float32).reshape(-1, 3)
    lab = k[:, 2] > 0
    np.testing.assert_allclose(records.keypoints[0][lab, :2], k[lab, :2] + 0.5)
    assert records.areas[0] == pytest.approx(a["area"], rel=1e-5)
    x, y, w, h = a["bbox"]
    np.testing.assert_allclose(records.boxes[0], [x, y, x + w, y + h], rtol=1e-5)
    ds = TopDownKeypointDataset(samples / "coco", records, __import__(
        "lightning_seg.data.formats.keypoints", fromlist=["coco_keypoint_info"]).coco_keypoint_info(index))
    s = ds[0]
    assert s.keypoints.ids.tolist() == [a["id"]] and s.keypoints.scores is None
    assert ds.info.keypoint_flip_map[0] == (1, 2) and len(ds.info.keypoint_sigmas) == 17


def test_coco_outside_keypoints_and_wrong_counts(samples, tmp_path):
    raw = json.loads((samples / "coco" / "test_coco.json").read_text())
    ann = next(a for a in raw["annotations"] if a["num_keypoints"] > 0)
    ann["keypoints"][0:3] = [9999.0, 5.0, 2]
    (tmp_path / "c.json").write_text(json.dumps(raw))
    records, _ = coco_topdown_records(tmp_path / "c.json")
    assert records.skips.fixed["labelled keypoint outside the image set to unlabelled"] == 1
    row = int(np.flatnonzero(records.ids == ann["id"])[0])
    assert records.keypoints[row, 0].tolist() == [0.0, 0.0, 0.0]
    ann["keypoints"] = ann["keypoints"][:-3]
    (tmp_path / "d.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=f"annotation id={ann['id']}.*48 keypoint values, expected 3 x 17"):
        coco_topdown_records(tmp_path / "d.json")


def test_detection_records(samples, tmp_path):
    _, index = coco_topdown_records(samples / "coco" / "test_coco.json")
    dets = json.loads((samples / "coco" / "test_coco_det_AP_H_56.json").read_text())
    records = detection_records(samples / "coco" / "test_coco_det_AP_H_56.json", index, 0.5)
    kept = [d for d in dets if d["score"] >= 0.5]
    assert len(records) == len(kept) and records.skips.num_skipped == len(dets) - len(kept)
    np.testing.assert_allclose(records.scores, [d["score"] for d in kept], rtol=1e-6)
    assert (records.keypoints == 0).all() and (records.ids == -1).all()
    bad = [dict(kept[0], image_id=123456789), {"image_id": 785, "bbox": [1, 2, 0, 5], "score": 1.0},
           {"image_id": 785, "bbox": "x", "score": 1.0}]
    (tmp_path / "det.json").write_text(json.dumps(bad[:2]))
    records = detection_records(tmp_path / "det.json", index)
    assert len(records) == 0 and records.skips.num_skipped == 2
    (tmp_path / "det2.json").write_text(json.dumps(bad[2:]))
    with pytest.raises(DataError, match=r"detection \[0\].*numbers expected"):
        detection_records(tmp_path / "det2.json", index)


# ------------------------------------------------------------------------------ faces
@pytest.mark.parametrize("name,k", [("300w", 68), ("wflw", 98), ("cofw", 29), ("aflw", 19)])
def test_face_sets_and_their_normalisers(samples, name, k):
    dm = FaceLandmarkDataModule(samples / name, dataset=name, train_ann=f"test_{name}.json",
                                val_ann=f"test_{name}.json", images=".", batch_size=2, num_workers=0)
    assert dm.info.num_keypoints == k and dm.info.keypoint_flip_map == FACE_FLIP_PAIRS[name]
    perm = dm.info.flip_permutation()
    assert sorted(perm) == list(range(k)) and all(perm[perm[i]] == i for i in range(k))
    dm.setup("validate")
    raw = json.loads((samples / name / f"test_{name}.json").read_text())
    ann = raw["annotations"][0]
    sample = dm.val_dataset.dataset[0]
    kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    if name == "aflw":
        expected = ann["box_size"]
    else:
        a, b = {"300w": (36, 45), "wflw": (60, 72), "cofw": (8, 9)}[name]
        expected = math.dist(kp[a, :2], kp[b, :2])
    assert sample.keypoints.norm_size.item() == pytest.approx(expected, rel=1e-5)
    batch = next(iter(dm.val_dataloader()))
    assert batch.images.shape[-2:] == (256, 256) and batch.keypoints[0].keypoints.shape == (1, k, 3)


def test_face_box_from_center_and_scale(samples):
    records, _ = coco_topdown_records(samples / "300w" / "test_300w.json", center_scale=True,
                                      num_keypoints=68)
    raw = json.loads((samples / "300w" / "test_300w.json").read_text())["annotations"][0]
    side = 200 * raw["scale"]
    cx, cy = raw["center"][0] + 0.5, raw["center"][1] + 0.5
    np.testing.assert_allclose(records.boxes[0], [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    assert face_info("300w").keypoint_names[0] == "landmark_0"


# ------------------------------------------------------------------------------ DataModules
def test_mpii_datamodule_crops_and_swaps(samples):
    dm = MPIIDataModule(samples / "mpii", train_ann="test_mpii.json", val_ann="test_mpii.json",
                        images=".", headbox_file=None, batch_size=5, num_workers=0,
                        flip_prob=1.0, rotation_prob=0.0, scale_sigma=0.0, augment_seed=0)
    assert dm.info.keypoint_names == MPII_KEYPOINT_NAMES and dm.num_keypoints == 16
    pairs = {tuple(sorted(p)) for p in dm.keypoint_flip_map}
    assert pairs == {(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)}
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train.images.shape == (5, 3, 256, 256) and val.meta[0].crop is not None
    # flipped training crop = mirrored validation crop with left/right swapped
    perm = dm.info.flip_permutation()
    t, v = dm.train_dataset[0].keypoints.keypoints[0], dm.val_dataset[0].keypoints.keypoints[0]
    torch.testing.assert_close(t[:, 0], 256 - v[perm, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(t[:, 1], v[perm, 1], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="crops every instance itself"):
        MPIIDataModule(samples / "mpii", train_transform=object())


def test_coco_keypoint_datamodule_with_detections(samples):
    dm = CocoKeypointDataModule(samples / "coco", train_ann="test_coco.json", val_ann="test_coco.json",
                                train_images=".", val_images=".", val_detections="test_coco_det_AP_H_56.json",
                                det_score_thresh=0.9, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 12
    batch = next(iter(dm.val_dataloader()))
    assert batch.images.shape[-2:] == (256, 192)
    assert all(k.scores is not None and k.scores.item() >= 0.9 for k in batch.keypoints)
    assert all(not bool((k.keypoints[..., 2] > 0).any()) for k in batch.keypoints)


def test_missing_data_names_the_layout(tmp_path):
    dm = MPIIDataModule(tmp_path, num_workers=0)
    with pytest.raises(DataError, match="mpii_train.json"):
        dm.setup("fit")


def test_synthetic_keypoint_world(tmp_path):
    dm = SyntheticKeypointDataModule(root=tmp_path / "w", num_train=6, num_val=2, batch_size=4,
                                     num_workers=0, augment_seed=0)
    assert dm.info.keypoint_names == ["center", "top", "bottom", "left_side", "right_side"]
    assert dm.info.keypoint_flip_map == [(3, 4)] and dm.info.keypoint_sigmas
    dm.setup("fit")
    assert len(dm.train_dataset) > 6  # one sample per shape
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (4, 3, 64, 64)
    k = batch.keypoints[0].keypoints[0]
    assert (k[:, 2] > 0).sum() >= 3
