"""Temporal stability (flicker): hand cases, a NumPy loop reference and the real DAVIS sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.metrics.temporal import TemporalStability, masks_by_iou, masks_by_track_id
from lightning_seg.structures import InstancePredictions


def numpy_reference(pred: np.ndarray, gt: np.ndarray, thresh: float = 0.1):
    """Loop over tracks and frame pairs, exactly as the definition reads."""

    def iou(a, b):
        u = np.logical_or(a, b).sum()
        return 1.0 if u == 0 else np.logical_and(a, b).sum() / u

    flick, pc, gc = [], [], []
    t_len, n = gt.shape[:2]
    for k in range(n):
        for t in range(t_len - 1):
            if gt[t, k].any() and gt[t + 1, k].any():
                g, p = iou(gt[t, k], gt[t + 1, k]), iou(pred[t, k], pred[t + 1, k])
                flick.append(abs(p - g))
                pc.append(p)
                gc.append(g)
    flick = np.array(flick)
    return {
        "flicker": flick.mean(),
        "flicker_rate": (flick > thresh).mean(),
        "pred_consecutive_iou": np.mean(pc),
        "gt_consecutive_iou": np.mean(gc),
        "num_pairs": len(flick),
    }


def _square(h, w, y, x, s):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y : y + s, x : x + s] = True
    return m


def test_hand_case_missed_frame():
    # one track, a 4x4 square moving 2 px per frame: gt consecutive IoU = 8 / 24 = 1/3
    gt = torch.stack([_square(9, 15, 2, 2 * t, 4) for t in range(3)])[:, None]  # [T=3, N=1, H, W]
    m = TemporalStability()
    m.update(gt.clone(), gt)
    r = m.compute()
    assert float(r["flicker"]) < 1e-9 and abs(float(r["gt_consecutive_iou"]) - 1 / 3) < 1e-9
    missed = gt.clone()
    missed[1] = False  # frame 1 missed: pred IoU 0 and 0 -> flicker 1/3 twice
    m = TemporalStability()
    m.update(missed, gt)
    r = m.compute()
    assert abs(float(r["flicker"]) - 1 / 3) < 1e-9 and int(r["num_pairs"]) == 2
    assert float(r["flicker_rate"]) == 1.0 and abs(float(r["stability"]) - 2 / 3) < 1e-9


def test_random_masks_equal_loop_reference():
    rng = np.random.default_rng(0)
    m = TemporalStability(flicker_thresh=0.2)
    preds, gts = [], []
    for t_len, n, h, w in ((5, 3, 11, 13), (4, 2, 7, 9)):
        gt = rng.random((t_len, n, h, w)) < 0.4
        gt[1, 0] = False  # track 0 absent in frame 1: pairs (0,1) and (1,2) are skipped
        pred = gt ^ (rng.random(gt.shape) < 0.15)
        pred[2, 1] = False  # an empty prediction
        m.update(torch.from_numpy(pred), torch.from_numpy(gt))
        preds.append(pred)
        gts.append(gt)
    r = m.compute()
    # reference over both videos: pool the pairs of the two calls
    refs = [numpy_reference(p, g, 0.2) for p, g in zip(preds, gts)]
    total = sum(x["num_pairs"] for x in refs)
    assert int(r["num_pairs"]) == total
    for key in ("flicker", "flicker_rate", "pred_consecutive_iou", "gt_consecutive_iou"):
        pooled = sum(x[key] * x["num_pairs"] for x in refs) / total
        assert abs(float(r[key]) - pooled) < 1e-8, key


def test_alignment_helpers():
    h, w = 10, 12
    gt = torch.stack([torch.stack([_square(h, w, 1, t, 3), _square(h, w, 6, 8 - t, 3)]) for t in range(3)])
    frames = []
    for t in range(3):
        masks = torch.stack([gt[t, 1], gt[t, 0], _square(h, w, 0, 0, 1)]).float() * 0.9  # shuffled + junk
        frames.append(
            InstancePredictions(
                boxes=torch.zeros(3, 4), scores=torch.ones(3), labels=torch.zeros(3, dtype=torch.long),
                image_size=(h, w), masks=masks, track_ids=torch.tensor([8, 5, 99]),
            )
        )
    assert torch.equal(masks_by_iou(frames, gt), gt)
    assert torch.equal(masks_by_track_id(frames, torch.tensor([5, 8])), gt)
    far = masks_by_iou(frames, torch.roll(gt, shifts=5, dims=-1), iou_thresh=0.9)
    assert not far.any()  # nothing overlaps enough: every track missed


def test_davis_sequence(shared_data):
    folder = shared_data / "video" / "davis2016_car_shadow" / "Annotations" / "480p" / "car-shadow"
    files = sorted(folder.glob("*.png"))[:12]
    gt = np.stack([np.array(Image.open(f)) > 0 for f in files])[:, None, ::4, ::4]  # [T, 1, H/4, W/4]
    m = TemporalStability()
    m.update(torch.from_numpy(gt), torch.from_numpy(gt))
    assert float(m.compute()["flicker"]) < 1e-9
    # a flickering prediction: every third frame is eroded by a shifted copy
    pred = gt.copy()
    pred[::3] &= np.roll(gt[::3], 6, axis=-1)
    m = TemporalStability()
    m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    r = m.compute()
    ref = numpy_reference(pred, gt)
    assert abs(float(r["flicker"]) - ref["flicker"]) < 1e-8 and ref["flicker"] > 0.01
    assert 0.5 < float(r["gt_consecutive_iou"]) <= 1.0


def test_shapes_must_match_and_empty_is_nan():
    m = TemporalStability()
    with pytest.raises(ValueError, match="Tensor\\[T, N, H, W\\]"):
        m.update(torch.zeros(2, 1, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 3, dtype=torch.bool))
    m.update(torch.zeros(1, 1, 3, 3, dtype=torch.bool), torch.ones(1, 1, 3, 3, dtype=torch.bool))
    assert math.isnan(float(m.compute()["flicker"]))
