"""Top-down keypoint metrics (issue #15): OKS AP equal to pycocotools on the real COCO sample,
PCK / PCKh / NME with the dataset's normalisers, repeated samples counted once."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from lightning_seg.data.formats.keypoints import coco_topdown_records
from lightning_seg.metrics.coco_records import keypoints_to_coco
from lightning_seg.metrics.topdown import KeypointOKS, TopDownKeypointMetrics
from lightning_seg.structures import KeypointPredictions, KeypointTargets


def _coco_case(shared_data, noise: float, seed: int = 0):
    path = shared_data / "keypoints" / "mmpose_samples" / "coco" / "test_coco.json"
    records, index = coco_topdown_records(path)
    rng = np.random.default_rng(seed)
    preds, targets, ids = [], [], []
    sizes = {int(i): (int(h), int(w)) for i, h, w in zip(index.image_ids, index.heights, index.widths)}
    for j in range(len(records)):
        size = sizes[int(records.image_ids[j])]
        gt = torch.from_numpy(records.keypoints[j : j + 1].copy())
        xy = gt[..., :2] + torch.from_numpy(rng.normal(0, noise, (1, gt.shape[1], 2))).float()
        score = torch.from_numpy(rng.uniform(0.3, 1.0, (1, gt.shape[1], 1))).float()
        preds.append(KeypointPredictions(torch.cat([xy, score], -1), torch.tensor([float(rng.uniform())]),
                                         size, boxes=torch.from_numpy(records.boxes[j : j + 1].copy())))
        targets.append(KeypointTargets(gt, size, boxes=torch.from_numpy(records.boxes[j : j + 1].copy()),
                                       areas=torch.tensor([float(records.areas[j])]),
                                       ids=torch.tensor([int(records.ids[j])])))
        ids.append(int(records.image_ids[j]))
    return path, preds, targets, ids


@pytest.mark.parametrize("noise", [2.0, 8.0])
def test_oks_ap_equals_pycocotools_on_the_coco_sample(shared_data, tmp_path, noise):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, preds, targets, ids = _coco_case(shared_data, noise)
    metric = KeypointOKS(sigmas=[0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
                                 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089])
    metric.update(preds[:7], targets[:7], ids[:7])
    metric.update(preds[5:], targets[5:], ids[5:])  # two samples repeated: counted once
    ours = metric.compute()
    results = [{"image_id": i, "category_id": 1, "score": float(p.scores[0]),
                "keypoints": keypoints_to_coco(p.keypoints, labelled_only=False).reshape(-1).tolist()}
               for p, i in zip(preds, ids)]
    (tmp_path / "res.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dt = gt.loadRes(str(tmp_path / "res.json"))
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    for name, ref in zip(names, ev.stats):
        assert ours[name] == pytest.approx(ref, abs=1e-6), name
    assert 0 < ours["AP"] < 1


def test_pck_pckh_nme_with_the_dataset_normalisers():
    k = 4
    gt = torch.tensor([[[10.0, 10.0, 2.0], [20.0, 10.0, 2.0], [30.0, 10.0, 1.0], [0.0, 0.0, 0.0]]])
    off = torch.tensor([[[1.0, 0.0], [0.0, 6.0], [3.0, 4.0], [50.0, 50.0]]])
    pred = KeypointPredictions(torch.cat([gt[..., :2] + off, torch.ones(1, k, 1)], -1), torch.ones(1), (100, 100))
    tgt = KeypointTargets(gt, (100, 100), boxes=torch.tensor([[0.0, 0.0, 40.0, 20.0]]),
                          norm_size=torch.tensor([10.0]))
    m = TopDownKeypointMetrics(("pckh", "pck", "nme"), k, pck_alpha=0.2, pckh_alpha=0.5)
    m.update([pred], [tgt], [1])
    r = m.compute()
    # distances 1, 6, 5 over 3 labelled keypoints; PCKh: <= 0.5 x 10 -> 2 of 3
    assert r["pckh"] == pytest.approx(2 / 3)
    # PCK@0.2 of the box's larger side (40): <= 8 -> all 3
    assert r["pck"] == pytest.approx(1.0)
    assert r["nme"] == pytest.approx((1 + 6 + 5) / 3 / 10)
    m.reset()
    with pytest.raises(ValueError, match="PCKH needs KeypointTargets.norm_size.*headbox_file"):
        m.update([pred], [KeypointTargets(gt, (100, 100), boxes=tgt.boxes)], [1])


def test_detection_samples_add_predictions_only(shared_data):
    _, preds, targets, ids = _coco_case(shared_data, 1.0)
    m = TopDownKeypointMetrics(("oks", "pck"), 17, kpt_sigmas=[0.05] * 17)
    empty = [KeypointTargets(torch.zeros(1, 17, 3), t.image_size, boxes=t.boxes) for t in targets]
    m.update(preds, empty, ids)
    r = m.compute()
    assert r["oks/AP"] == -1.0 and np.isnan(r["pck"])
    with pytest.raises(ValueError, match="17 OKS sigmas"):
        TopDownKeypointMetrics(("oks",), 17, kpt_sigmas=None)
