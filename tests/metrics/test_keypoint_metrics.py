"""PCK / PCKh / NME: golden tests against NumPy references, hand cases and real annotations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lightning_seg.data.io import DataError
from lightning_seg.metrics.keypoints import (
    NME,
    PCK,
    BoxMaxSideNorm,
    BoxSqrtAreaNorm,
    HeadSizeNorm,
    KeypointCentroidDistanceNorm,
    KeypointDistanceNorm,
    PCKh,
    load_keypoint_pairs,
)


def _random_case(rng, n=9, k=7):
    gt = rng.uniform(0, 100, size=(n, k, 3))
    gt[..., 2] = rng.integers(0, 3, size=(n, k))  # visibility 0/1/2
    pred = gt[..., :2] + rng.normal(0, 6, size=(n, k, 2))
    pred[gt[..., 2] == 0] = np.nan  # unlabelled keypoints: anything, even NaN, is ignored
    x1y1 = rng.uniform(0, 40, size=(n, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(10, 60, size=(n, 2))], 1)
    return pred, gt, boxes


def numpy_pck(pred, gt, norm, alpha):
    n, k = gt.shape[:2]
    correct = np.zeros(k)
    labelled = np.zeros(k)
    for i in range(n):
        if not norm[i] > 0:
            continue
        for j in range(k):
            if gt[i, j, 2] > 0:
                labelled[j] += 1
                d = math.dist(pred[i, j], gt[i, j, :2])
                correct[j] += d <= alpha * norm[i]
    with np.errstate(invalid="ignore"):
        per = correct / labelled
    return correct.sum() / labelled.sum(), per


def test_pck_box_normalised_equals_numpy():
    rng = np.random.default_rng(0)
    pred, gt, boxes = _random_case(rng)
    norm = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    m = PCK(num_keypoints=7, alpha=0.1, normalizer=BoxMaxSideNorm())
    m.update(torch.from_numpy(pred[:4]), torch.from_numpy(gt[:4]), torch.from_numpy(boxes[:4]))
    m.update(torch.from_numpy(pred[4:]), torch.from_numpy(gt[4:]), torch.from_numpy(boxes[4:]))
    r = m.compute()
    total, per = numpy_pck(pred, gt, norm, 0.1)
    assert abs(float(r["pck"]) - total) < 1e-12
    assert np.allclose(r["pck_per_keypoint"].numpy(), per, equal_nan=True)
    assert abs(float(r["pck_mean_over_keypoints"]) - np.nanmean(per)) < 1e-12
    assert 0.05 < total < 0.95  # the case is neither trivial nor hopeless


def test_pck_torso_skips_instances_without_torso():
    rng = np.random.default_rng(1)
    pred, gt, _ = _random_case(rng, n=12, k=6)
    gt[0, 2, 2] = 0  # instance 0 has no torso (keypoint 2 unlabelled)
    pred[0, 2] = np.nan
    torso = np.hypot(*(gt[:, 2, :2] - gt[:, 4, :2]).T)
    torso[(gt[:, 2, 2] == 0) | (gt[:, 4, 2] == 0)] = 0
    m = PCK(num_keypoints=6, alpha=0.2, normalizer=KeypointDistanceNorm(2, 4))
    m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    r = m.compute()
    total, _ = numpy_pck(pred, gt, torso, 0.2)
    assert abs(float(r["pck"]) - total) < 1e-12
    assert int(r["num_invalid_norm"]) == int((torso == 0).sum()) >= 1


def test_pckh_hand_case():
    # head box 30 x 40 -> diagonal 50 -> head size 0.6 * 50 = 30 -> threshold 0.5 * 30 = 15 px
    gt = torch.tensor([[[10.0, 10.0, 2.0], [50.0, 50.0, 1.0], [0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[10.0, 25.0], [50.0, 65.1], [99.0, 99.0]]])  # 15 px: hit, 15.1 px: miss
    head = torch.tensor([[0.0, 0.0, 30.0, 40.0]])
    m = PCKh(num_keypoints=3, keypoint_names=["head", "wrist", "ankle"])
    m.update(pred, gt, head)
    r = m.compute()
    assert float(r["pck"]) == 0.5
    per = m.per_keypoint(r)
    assert per["head"] == 1.0 and per["wrist"] == 0.0 and math.isnan(per["ankle"])
    assert abs(float(HeadSizeNorm()(gt, head)[0]) - 30.0) < 1e-12
    with pytest.raises(ValueError, match="needs boxes"):
        m.update(pred, gt)


def _auc_by_grid(nmes, thresh, step=1e-5):
    xs = np.arange(0, thresh + step, step)
    ys = np.array([(nmes <= x).mean() for x in xs])
    return np.trapezoid(ys, xs) / thresh


def test_nme_auc_failure_equal_numpy():
    rng = np.random.default_rng(2)
    n, k = 40, 10
    gt = rng.uniform(0, 200, size=(n, k, 3))
    gt[..., 2] = 1
    gt[3, 5:, 2] = 0  # partly labelled face
    scale = rng.uniform(0.5, 12, size=(n, 1, 1))
    pred = gt[..., :2] + rng.normal(0, 1, size=(n, k, 2)) * scale
    io = np.hypot(*(gt[:, 0, :2] - gt[:, 1, :2]).T)
    per_img = []
    for i in range(n):
        vis = gt[i, :, 2] > 0
        per_img.append(np.mean(np.linalg.norm(pred[i, vis] - gt[i, vis, :2], axis=1) / io[i]))
    per_img = np.array(per_img)
    m = NME(normalizer=KeypointDistanceNorm(0, 1), failure_thresh=0.08)
    m.update(torch.from_numpy(pred[:17]), torch.from_numpy(gt[:17]))
    m.update(torch.from_numpy(pred[17:]), torch.from_numpy(gt[17:]))
    r = m.compute()
    assert abs(float(r["nme"]) - per_img.mean()) < 1e-8
    assert abs(float(r["failure_rate"]) - (per_img > 0.08).mean()) < 1e-12
    assert abs(float(r["auc"]) - _auc_by_grid(per_img, 0.08)) < 1e-3
    assert 0 < float(r["failure_rate"]) < 1


def test_interpupil_and_box_normalisers():
    gt = torch.zeros(1, 4, 3)
    gt[0, :, 2] = 1
    gt[0, 0, :2] = torch.tensor([0.0, 0.0])
    gt[0, 1, :2] = torch.tensor([2.0, 0.0])  # left eye centre (1, 0)
    gt[0, 2, :2] = torch.tensor([10.0, 0.0])
    gt[0, 3, :2] = torch.tensor([12.0, 0.0])  # right eye centre (11, 0)
    assert float(KeypointCentroidDistanceNorm([0, 1], [2, 3])(gt, None)[0]) == 10.0
    boxes = torch.tensor([[0.0, 0.0, 4.0, 9.0]])
    assert float(BoxSqrtAreaNorm()(gt, boxes)[0]) == 6.0 and float(BoxMaxSideNorm()(gt, boxes)[0]) == 9.0


def test_nme_on_real_300w_faces(shared_data, tmp_path):
    gt_path = shared_data / "keypoints" / "mmpose_samples" / "300w" / "test_300w.json"
    gt = json.loads(gt_path.read_text())
    results = []
    for a in gt["annotations"]:
        k = np.array(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        k[:, 0] += 3.0
        k[:, 1] += 4.0  # every landmark 5 px off
        results.append({"image_id": a["image_id"], "keypoints": k.reshape(-1).tolist(), "score": 1.0})
    dt_path = tmp_path / "dt.json"
    dt_path.write_text(json.dumps(results[::-1]))  # order must not matter
    pairs = load_keypoint_pairs(gt_path, dt_path, require_all=True)
    m = NME(normalizer=KeypointDistanceNorm(36, 45), failure_thresh=0.08)
    m.update(pairs["preds"], pairs["target"], pairs["boxes"])
    r = m.compute()
    expected = []
    for a in gt["annotations"]:
        k = np.array(a["keypoints"]).reshape(-1, 3)
        expected.append(5.0 / np.hypot(*(k[36, :2] - k[45, :2])))
    assert abs(float(r["nme"]) - np.mean(expected)) < 1e-8
    assert int(r["num_instances"]) == len(gt["annotations"])
    with pytest.raises(DataError, match="no prediction"):
        dt_path.write_text(json.dumps(results[:1]))
        load_keypoint_pairs(gt_path, dt_path, require_all=True)


def test_coco_pairs_greedy_matching_and_missing(shared_data, tmp_path):
    gt_path = shared_data / "keypoints" / "mmpose_samples" / "coco" / "test_coco.json"
    gt = json.loads(gt_path.read_text())
    results = []
    for a in gt["annotations"]:
        if a["num_keypoints"] > 0:
            results.append({"image_id": a["image_id"], "keypoints": a["keypoints"], "score": 0.9})
    dropped = results.pop(0)
    dt_path = tmp_path / "dt.json"
    dt_path.write_text(json.dumps(results[::-1]))
    pairs = load_keypoint_pairs(gt_path, dt_path, require_all=False)
    assert pairs["num_missing"] == 1
    m = PCK(num_keypoints=17, alpha=0.05)
    m.update(pairs["preds"], pairs["target"], pairs["boxes"])
    r = m.compute()
    n_kpts_dropped = sum(v > 0 for v in dropped["keypoints"][2::3])
    total = int(r["num_keypoints"])
    assert abs(float(r["pck"]) - (total - n_kpts_dropped) / total) < 1e-12
    # annotation ids, and an unknown one
    results[0]["annotation_id"] = -5
    dt_path.write_text(json.dumps(results))
    with pytest.raises(DataError, match="annotation_id -5"):
        load_keypoint_pairs(gt_path, dt_path, require_all=False)
    dt_path.write_text("[{")
    with pytest.raises(DataError, match="malformed JSON"):
        load_keypoint_pairs(gt_path, dt_path, require_all=False)


def test_coco_pairs_are_read_into_the_continuous_frame(tmp_path):
    """As the COCO reader: ground truth + 0.5 where labelled ((0, 0, 0) stays), predictions
    + 0.5 everywhere; the metrics, which see only differences, do not change."""
    gt = {"annotations": [
        {"id": 1, "image_id": 1, "bbox": [2, 3, 10, 12], "keypoints": [4, 5, 2, 0, 0, 0, 9, 6, 1]},
    ]}  # fmt: skip
    dt = [{"image_id": 1, "keypoints": [5, 5, 0.9, 3, 3, 0.0, 9, 8, 0.5], "score": 1.0}]
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dt))
    pairs = load_keypoint_pairs(gt_path, dt_path, require_all=True)
    assert pairs["target"].tolist() == [[[4.5, 5.5, 2.0], [0.0, 0.0, 0.0], [9.5, 6.5, 1.0]]]
    assert pairs["preds"].tolist() == [[[5.5, 5.5], [3.5, 3.5], [9.5, 8.5]]]
    assert pairs["boxes"].tolist() == [[2.0, 3.0, 12.0, 15.0]]
    m = PCK(num_keypoints=3, alpha=0.1)  # 0.1 * 12 = 1.2 px: the first keypoint (1 px) only
    m.update(pairs["preds"], pairs["target"], pairs["boxes"])
    assert float(m.compute()["pck"]) == 0.5


def test_bad_shapes_and_nan():
    m = PCK(num_keypoints=3)
    with pytest.raises(ValueError, match="keypoints"):
        m.update(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), torch.tensor([[0.0, 0, 1, 1]]))
    gt = torch.ones(1, 3, 3)
    with pytest.raises(ValueError, match="NaN"):
        m.update(torch.full((1, 3, 2), math.nan), gt, torch.tensor([[0.0, 0, 10, 10]]))
