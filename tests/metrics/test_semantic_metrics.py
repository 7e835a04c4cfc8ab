"""mIoU / pixel accuracy / fwIoU: golden tests against a NumPy confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data.io import DataError
from lightning_seg.metrics.semantic import SegmentationMetrics, evaluate_semantic_folders


def numpy_reference(preds: list[np.ndarray], targets: list[np.ndarray], k: int, ignore: int):
    """Textbook confusion matrix with np.add.at and the metrics written out per class."""
    cm = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(preds, targets):
        keep = t != ignore
        np.add.at(cm, (t[keep], p[keep]), 1)
    ious, accs = [], []
    for c in range(k):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else np.nan)
        accs.append(tp / (tp + fn) if tp + fn > 0 else np.nan)
    ious, accs = np.array(ious), np.array(accs)
    freq = cm.sum(1) / cm.sum()
    fw = sum(freq[c] * ious[c] for c in range(k) if freq[c] > 0)
    return {
        "mIoU": np.nanmean(ious),
        "IoU": ious,
        "pixel_acc": np.trace(cm) / cm.sum(),
        "mAcc": np.nanmean(accs),
        "fwIoU": fw,
    }


def _close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert np.allclose(a, b, equal_nan=True, rtol=0, atol=1e-12), (a, b)


def test_random_batches_equal_numpy():
    rng = np.random.default_rng(0)
    k, ignore = 6, 255
    metric = SegmentationMetrics(num_classes=k, ignore_index=ignore)
    preds, targets = [], []
    for h, w in ((13, 17), (9, 21), (31, 7)):
        t = rng.integers(0, k - 1, size=(2, h, w))  # class k-1 never in ground truth
        t[rng.random(t.shape) < 0.1] = ignore
        p = np.where(rng.random(t.shape) < 0.6, np.where(t == ignore, 0, t), rng.integers(0, k - 2, size=t.shape))
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
        preds += list(p)
        targets += list(t)
    res = metric.compute()
    ref = numpy_reference(preds, targets, k, ignore)
    for key in ("mIoU", "IoU", "pixel_acc", "mAcc", "fwIoU"):
        _close(res[key], ref[key])
    assert math.isnan(float(res["IoU"][k - 1]))  # absent from gt and pred -> NaN, not 0
    assert not math.isnan(float(res["mIoU"]))


def test_logits_equal_argmax():
    logits = torch.randn(2, 4, 11, 13)
    target = torch.randint(0, 4, (2, 11, 13))
    a, b = SegmentationMetrics(4), SegmentationMetrics(4)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.confmat, b.confmat)


def test_perfect_and_all_ignored():
    m = SegmentationMetrics(3, ignore_index=9, class_names=["a", "b", "c"])
    t = torch.tensor([[[0, 1, 9], [1, 0, 9]]])
    m.update(t.clamp(max=2), t)
    r = m.compute()
    assert float(r["mIoU"]) == 1.0 and float(r["pixel_acc"]) == 1.0 and float(r["fwIoU"]) == 1.0
    assert math.isnan(m.per_class(r)["c"])
    empty = SegmentationMetrics(3, ignore_index=9)
    empty.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 9))
    assert math.isnan(float(empty.compute()["mIoU"]))


def test_bad_labels_raise():
    m = SegmentationMetrics(3, ignore_index=255)
    with pytest.raises(ValueError, match="target labels \\[7\\]"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 2]]]))
    with pytest.raises(ValueError, match="prediction labels"):
        m.update(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        m.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_camvid_folders(shared_data, tmp_path):
    root = shared_data / "semantic" / "camvid_smoke"
    gt_dir = root / "testannot"
    rng = np.random.default_rng(1)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    preds, targets = [], []
    for p in sorted(gt_dir.glob("*.png")):
        t = np.array(Image.open(p)).astype(np.int64)
        noisy = np.where(rng.random(t.shape) < 0.3, rng.integers(0, 11, t.shape), np.minimum(t, 10))
        Image.fromarray(noisy.astype(np.uint8), mode="L").save(pred_dir / (p.stem + ".png"))
        preds.append(noisy)
        targets.append(t)
    out = evaluate_semantic_folders(gt_dir, pred_dir, num_classes=11, ignore_index=11)
    ref = numpy_reference(preds, targets, 11, 11)
    for key in ("mIoU", "IoU", "pixel_acc", "fwIoU"):
        _close(out[key], ref[key])
    assert out["num_images"] == len(targets) and 0.3 < out["mIoU"] < 0.95

    # errors name the file: wrong size, out-of-range label, missing prediction
    first = sorted(pred_dir.glob("*.png"))[0]
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(first)
    with pytest.raises(DataError, match=first.name):
        evaluate_semantic_folders(gt_dir, pred_dir, num_classes=11, ignore_index=11)
    Image.fromarray(np.full(targets[0].shape, 40, np.uint8), mode="L").save(first)
    with pytest.raises(DataError, match="outside 0..10"):
        evaluate_semantic_folders(gt_dir, pred_dir, num_classes=11, ignore_index=11)
    first.unlink()
    with pytest.raises(DataError, match="no prediction"):
        evaluate_semantic_folders(gt_dir, pred_dir, num_classes=11, ignore_index=11)
