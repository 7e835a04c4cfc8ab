"""COCO AP (boxes, masks, keypoints): golden tests against pycocotools, files, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_seg.data.io import DataError
from lightning_seg.metrics.coco import (
    BACKENDS,
    IOU_TYPES,
    KEYPOINT_STAT_NAMES,
    COCOEvaluator,
    detection_stat_names,
    evaluate_coco_files,
    format_coco_table,
    predictions_to_coco_results,
)
from lightning_seg.structures import InstancePredictions, InstanceTargets

sys.path.insert(0, str(Path(__file__).parent))
from test_coco_cases import make_case, pycocotools_stats, reference_coco  # noqa: E402

DET = detection_stat_names()


def _ours(out: dict, iou_type: str, names=DET) -> list[float]:
    return [out[f"{iou_type}/{n}"] for n in names]


def _write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


# ------------------------------------------------------------------ streaming vs pycocotools


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_bbox_segm_stats_equal_pycocotools(backend, seed):
    preds, targets = make_case(seed, num_images=9)
    ids = [5 * k + 11 for k in range(9)]  # non-contiguous dataset ids
    metric = COCOEvaluator(("bbox", "segm"), backend=backend)
    metric.update(preds[:4], targets[:4], ids[:4])
    metric.update(preds[4:], targets[4:], ids[4:])
    out = metric.compute()
    gt, results = reference_coco(preds, targets, ids)
    for iou_type in ("bbox", "segm"):
        ref = pycocotools_stats(gt, results[iou_type], iou_type)
        np.testing.assert_allclose(_ours(out, iou_type), ref, atol=1e-6, rtol=0)
    assert out["bbox/AP50"] > 0.1 and out["segm/AP50"] > 0.1  # not a degenerate case


def test_category_ids_and_per_class():
    preds, targets = make_case(2, num_images=7)
    ids = list(range(100, 107))
    cats, names = [3, 17, 90], ["cat", "dog", "zebra"]
    metric = COCOEvaluator(("segm",), category_ids=cats, per_class=True, class_names=names)
    metric.update(preds, targets, ids)
    out = metric.compute()
    gt, results = reference_coco(preds, targets, ids, category_ids=cats)
    ref = pycocotools_stats(gt, results["segm"], "segm")
    np.testing.assert_allclose(_ours(out, "segm"), ref, atol=1e-6)
    per_class = [out[f"segm/AP/{n}"] for n in names]
    defined = [v for v in per_class if v > -1]
    assert defined and out["segm/AP"] == pytest.approx(np.mean(defined), abs=1e-12)
    # per-class AP equals COCO AP restricted to that category
    for cat, name in zip(cats, names):
        gt_c = dict(gt, categories=[c for c in gt["categories"] if c["id"] == cat])
        only = [r for r in results["segm"] if r["category_id"] == cat]
        ref = pycocotools_stats(gt_c, only, "segm")
        assert out[f"segm/AP/{name}"] == pytest.approx(ref[0], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigmas", [None, [0.03, 0.05, 0.07, 0.09, 0.11]], ids=["coco", "custom"])
def test_keypoint_stats_equal_pycocotools(backend, sigmas):
    num_kpts = 17 if sigmas is None else len(sigmas)
    preds, targets = make_case(3, num_images=8, num_kpts=num_kpts)
    ids = list(range(1, 9))
    metric = COCOEvaluator(("keypoints",), backend=backend, kpt_sigmas=sigmas)
    metric.update(preds, targets, ids)
    out = metric.compute()
    gt, results = reference_coco(preds, targets, ids)
    ref = pycocotools_stats(gt, results["keypoints"], "keypoints", kpt_sigmas=sigmas)
    np.testing.assert_allclose(_ours(out, "keypoints", KEYPOINT_STAT_NAMES), ref, atol=1e-6, rtol=0)
    assert out["keypoints/AP50"] > 0.1


def test_custom_max_dets_use_the_largest_for_ap():
    preds, targets = make_case(4, num_images=6)
    ids = list(range(6))
    metric = COCOEvaluator(("bbox",), max_dets=(1, 3, 5))
    metric.update(preds, targets, ids)
    out = metric.compute()
    assert {"bbox/AR1", "bbox/AR3", "bbox/AR5"} <= set(out)
    gt, results = reference_coco(preds, targets, ids)
    ref = pycocotools_stats(gt, results["bbox"], "bbox", max_dets=(1, 3, 5))
    # pycocotools computes AR@m right but prints AP as -1 (it looks for maxDets == 100).
    ar = [out["bbox/AR1"], out["bbox/AR3"], out["bbox/AR5"]]
    np.testing.assert_allclose(ar, ref[6:9], atol=1e-6)
    groups: dict[tuple[int, int], list[dict]] = {}  # COCOeval keeps maxDets per image and class
    for r in results["bbox"]:
        groups.setdefault((r["image_id"], r["category_id"]), []).append(r)
    kept = [r for g in groups.values() for r in sorted(g, key=lambda r: -r["score"])[:5]]
    assert out["bbox/AP"] == pytest.approx(pycocotools_stats(gt, kept, "bbox")[0], abs=1e-6)


def test_category_groups_give_identical_numbers():
    """compute() evaluates groups of categories separately to bound memory: same numbers."""
    preds, targets = make_case(12, num_images=10, num_kpts=17)
    outs = []
    for max_anns in (50_000, 1, 9):
        metric = COCOEvaluator(IOU_TYPES, per_class=True, max_anns_per_pass=max_anns)
        metric.update(preds, targets, list(range(10)))
        outs.append(metric.compute())
    assert outs[0] == outs[1] == outs[2]


def test_repeated_image_counts_once_and_conflicts_raise():
    preds, targets = make_case(5, num_images=5)
    once = COCOEvaluator(("bbox", "segm"))
    once.update(preds, targets, list(range(5)))
    twice = COCOEvaluator(("bbox", "segm"))
    twice.update(preds, targets, list(range(5)))
    twice.update(preds[:2], targets[:2], [0, 1])  # DistributedSampler padding repeats samples
    assert twice.compute() == once.compute()
    clash = COCOEvaluator(("bbox",))
    clash.update(preds[:2], targets[:2], [0, 1])
    clash.update(preds[3:4], targets[3:4], [1])
    with pytest.raises(DataError, match="image id 1 was added twice"):
        clash.compute()


def test_default_image_ids_and_reset():
    preds, targets = make_case(6, num_images=4)
    metric = COCOEvaluator(("bbox",))
    metric.update(preds[:2], targets[:2])
    metric.update(preds[2:], targets[2:])
    with_ids = COCOEvaluator(("bbox",))
    with_ids.update(preds, targets, [10, 20, 30, 40])
    assert metric.compute() == with_ids.compute()
    metric.reset()
    metric.update(preds[:1], targets[:1])
    assert metric.img_ids[0].tolist() == [4]  # ids keep running after reset: never reused


def test_no_predictions_and_compute_before_update(caplog):
    _, targets = make_case(7, num_images=3)
    no_label = torch.zeros(0, dtype=torch.long)
    empty = [
        InstancePredictions(
            torch.zeros(0, 4), torch.zeros(0), no_label, t.image_size, masks=torch.zeros(0, *t.image_size)
        )
        for t in targets
    ]
    metric = COCOEvaluator(("bbox", "segm"))
    metric.update(empty, targets, [1, 2, 3])
    out = metric.compute()
    assert out["bbox/AP"] == 0.0 and out["segm/AR100"] == 0.0
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="before the ``update``"):
        out = COCOEvaluator(("segm", "keypoints")).compute()
    assert out["segm/AP"] == -1.0 and out["keypoints/ARl"] == -1.0
    assert "before any update" in caplog.text


def test_states_hold_rle_not_bitmaps():
    h, w, n = 301, 397, 6
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for j in range(n):
        masks[j, 20 * j : 20 * j + 150, 30 * j : 30 * j + 200] = True
    boxes = torch.tensor([[30.0 * j, 20.0 * j, 30.0 * j + 200, 20.0 * j + 150] for j in range(n)])
    labels = torch.zeros(n, dtype=torch.long)
    target = InstanceTargets(boxes=boxes, labels=labels, image_size=(h, w), masks=masks)
    pred = InstancePredictions(boxes, torch.rand(n), labels, (h, w), masks=masks.float() * 0.8)
    metric = COCOEvaluator(("segm",))
    for i in range(3):
        metric.update([pred], [target], [i])
    states = [t for name in metric._defaults for t in getattr(metric, name)]
    state_bytes = sum(t.numel() * t.element_size() for t in states)
    assert state_bytes < 0.01 * 3 * 2 * n * h * w
    assert metric.compute()["segm/AP"] == 1.0


def test_bad_update_inputs():
    preds, targets = make_case(8, num_images=3, num_kpts=4)
    metric = COCOEvaluator(("bbox", "segm"))
    other = InstancePredictions(preds[0].boxes, preds[0].scores, preds[0].labels, (5, 5))
    with pytest.raises(ValueError, match="frame"):
        metric.update([other], targets[:1], [0])
    with pytest.raises(ValueError, match="category_ids"):
        COCOEvaluator(("bbox",), category_ids=[1, 2]).update(preds, targets, [0, 1, 2])
    p = preds[0]
    nan = InstancePredictions(p.boxes, p.scores * float("nan"), p.labels, p.image_size)
    with pytest.raises(ValueError, match="NaN"):
        metric.update([nan], targets[:1], [0])
    no_masks = InstancePredictions(p.boxes, p.scores, p.labels, p.image_size)
    with pytest.raises(ValueError, match="predictions.masks"):
        metric.update([no_masks], targets[:1], [0])
    with pytest.raises(ValueError, match="kpt_sigmas"):
        COCOEvaluator(("keypoints",)).update(preds, targets, [0, 1, 2])
    with pytest.raises(ValueError, match="iou_types"):
        COCOEvaluator(("mask",))
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(backend="detectron2")


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_file_api_equals_pycocotools(tmp_path, iou_type, backend):
    num_kpts = 17 if iou_type == "keypoints" else 0
    preds, targets = make_case(9, num_images=7, num_kpts=num_kpts)
    ids = [3, 1, 4, 15, 9, 26, 5]
    gt, results = reference_coco(preds, targets, ids)
    gt_path = _write(tmp_path / "gt.json", _json_ready(gt))
    dt_path = _write(tmp_path / "dt.json", results[iou_type])
    stats = evaluate_coco_files(gt_path, dt_path, iou_type, backend=backend)
    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else DET
    assert list(stats) == list(names)
    ref = pycocotools_stats(gt, results[iou_type], iou_type)
    np.testing.assert_allclose(list(stats.values()), ref, atol=1e-6)


def test_results_writer_round_trip_equals_streaming(tmp_path):
    """predictions_to_coco_results -> file -> evaluate_coco_files == COCOEvaluator, every IoU type
    (the metric's internal transposed RLEs give the numbers of standard RLEs)."""
    preds, targets = make_case(10, num_images=8, num_kpts=17)
    ids = [int(i) for i in np.arange(8) * 7 + 2]
    metric = COCOEvaluator(("bbox", "segm", "boundary", "keypoints"))
    metric.update(preds, targets, ids)
    out = metric.compute()
    records = predictions_to_coco_results(preds, ids)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in records)
    gt, _ = reference_coco(preds, targets, ids)
    gt_path = _write(tmp_path / "gt.json", _json_ready(gt))
    dt_path = _write(tmp_path / "dt.json", records)  # records have bbox AND segmentation
    for iou_type in ("bbox", "segm", "boundary", "keypoints"):
        stats = evaluate_coco_files(gt_path, dt_path, iou_type)
        ours = _ours(out, iou_type, list(stats))
        assert ours == pytest.approx(list(stats.values()), abs=1e-9), iou_type


def test_results_writer_exports_keypoints_as_coco_pixel_indices():
    """Predicted keypoints are continuous; the results file holds x - 0.5, y - 0.5 (every
    keypoint, the score untouched), as detectron2's ``instances_to_coco_json``."""
    kpts = torch.tensor(
        [[[4.5, 7.5, 0.9], [10.0, 0.25, 0.0]], [[36.5, 18.5, 0.3], [0.5, 0.5, 1.0]]]
    )  # [N, K, 3] (x, y, score)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 9.0], [20.0, 10.0, 37.0, 19.0]])
    scores, labels = torch.tensor([0.8, 0.6]), torch.tensor([0, 0])
    pred = InstancePredictions(boxes, scores, labels, (19, 37), keypoints=kpts)
    records = predictions_to_coco_results([pred], [5])
    assert [r["keypoints"] for r in records] == [
        [4.0, 7.0, pytest.approx(0.9), 9.5, -0.25, 0.0],
        [36.0, 18.0, pytest.approx(0.3), 0.0, 0.0, 1.0],
    ]
    assert records[0]["bbox"] == [1.0, 2.0, 10.0, 7.0]  # boxes are not shifted
    assert pred.keypoints[0, 0, 0] == 4.5  # the predictions are left as they were


def _keypoint_gt_files(tmp_path: Path) -> tuple[Path, Path]:
    """Small people (OKS is sensitive to a 0.5 px shift there) as COCO pixel indices on two
    images; some keypoints unlabelled, one person without any labelled keypoint."""
    from PIL import Image

    sizes = {1: (31, 45), 2: (27, 20)}  # image id -> (H, W)
    (tmp_path / "img").mkdir()
    images = []
    for image_id, (h, w) in sizes.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
    people = [  # image id, bbox, keypoints (x, y, v) * 4
        (1, [2, 3, 10, 12], [4, 5, 2, 9, 6, 2, 6, 12, 1, 0, 0, 0]),
        (1, [20, 14, 9, 11], [22, 16, 2, 27, 16, 2, 24, 20, 2, 25, 24, 2]),
        (1, [35, 2, 9, 8], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),  # no labelled keypoint
        (2, [3, 4, 12, 14], [5, 6, 2, 13, 6, 1, 0, 0, 0, 9, 16, 2]),
        (2, [0, 17, 19, 9], [1, 18, 2, 18, 18, 2, 10, 25, 2, 14, 22, 1]),
    ]
    anns = [
        {"id": k + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
         "bbox": box, "area": float(box[2] * box[3]), "keypoints": kpts,
         "num_keypoints": sum(v > 0 for v in kpts[2::3])}
        for k, (image_id, box, kpts) in enumerate(people)
    ]  # fmt: skip
    names = ["left_eye", "right_eye", "left_hand", "right_hand"]
    categories = [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}]
    gt = {"images": images, "annotations": anns, "categories": categories}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    return tmp_path / "img", gt_path


@pytest.mark.parametrize("backend", BACKENDS)
def test_keypoint_ap_of_ground_truth_fed_back_is_one_and_equals_pycocotools(tmp_path, backend):
    """The ground truth fed back as predictions, in the continuous frame (the pixel centres,
    which is what the COCO reader returns): COCOEvaluator keypoint AP is 1.0 against the
    reader's targets, and pycocotools on the GT JSON + the exported results file agrees."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from lightning_seg.data.formats.coco import CocoInstanceDataset

    sigmas = [0.025, 0.025, 0.035, 0.035]
    image_dir, gt_path = _keypoint_gt_files(tmp_path)
    gt = json.loads(gt_path.read_text())
    ds = CocoInstanceDataset(image_dir, gt_path, with_masks=False, with_keypoints=True)
    preds, targets, ids = [], [], []
    for i in range(len(ds)):
        target = ds[i].instances
        anns = [a for a in gt["annotations"] if a["image_id"] == ds[i].meta.image_id]
        # the ground truth as a model in the continuous frame predicts it: the pixel centres
        centres = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).view(-1, 4, 3)
        centres[..., :2] += 0.5
        labelled = target.keypoints[..., 2] > 0
        assert torch.equal(target.keypoints[labelled], centres[labelled])  # = the reader's
        keep = labelled.any(1)  # a person without labelled keypoints gets no prediction
        n = int(keep.sum())
        kpts = centres[keep].clone()
        kpts[..., 2] = 1.0  # keypoint scores
        preds.append(
            InstancePredictions(target.boxes[keep], torch.ones(n), target.labels[keep],
                                target.image_size, keypoints=kpts)
        )  # fmt: skip
        targets.append(target)
        ids.append(ds[i].meta.image_id)
    metric = COCOEvaluator(("keypoints",), category_ids=ds.info.category_ids, kpt_sigmas=sigmas,
                           backend=backend)  # fmt: skip
    metric.update(preds, targets, ids)
    ours = _ours(metric.compute(), "keypoints", KEYPOINT_STAT_NAMES)
    assert ours[0] == pytest.approx(1.0)  # AP
    records = predictions_to_coco_results(preds, ids, ds.info.category_ids)
    dt_path = _write(tmp_path / "dt.json", records)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(dt_path), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose(ours, ev.stats, atol=1e-6, rtol=0)
    stats = evaluate_coco_files(str(gt_path), dt_path, "keypoints", sigmas, backend=backend)
    np.testing.assert_allclose(list(stats.values()), ev.stats, atol=1e-6, rtol=0)


def test_bad_results_files_name_the_record(tmp_path):
    preds, targets = make_case(11, num_images=3)
    gt, results = reference_coco(preds, targets, [1, 2, 3])
    gt_path = _write(tmp_path / "gt.json", _json_ready(gt))
    segm = results["segm"]

    def check(records, match, iou_type="segm"):
        with pytest.raises(DataError, match=match):
            evaluate_coco_files(gt_path, _write(tmp_path / "dt.json", records), iou_type)

    unknown_image = r"record 2 \(image_id 999.*not in the ground truth"
    check([*segm[:2], dict(segm[2], image_id=999)], unknown_image)
    check([dict(segm[0], category_id=77)], r"record 0 .*category_id .*not in the ground truth")
    check([dict(segm[0], score=None)], r"record 0 .*score")
    bad_chars = dict(segm[1], segmentation=dict(segm[1]["segmentation"], counts="\x01\x02"))
    check([segm[0], bad_chars], r"record 1: compressed RLE string is malformed")
    short = dict(segm[0], segmentation={"size": segm[0]["segmentation"]["size"], "counts": "52"})
    check([short], r"record 0: RLE runs sum to")
    wrong_size = dict(segm[0], segmentation={"size": [1, 1], "counts": "01"})
    check([wrong_size], r"record 0 .*RLE 'size'")
    check([dict(results["bbox"][0], bbox=[1, 2, -3, 4])], r"record 0 .*'bbox'", "bbox")
    check({"annotations": segm}, "JSON list")
    (tmp_path / "broken.json").write_text('[{"image_id": 1,')
    with pytest.raises(DataError, match="not valid JSON"):
        evaluate_coco_files(gt_path, str(tmp_path / "broken.json"), "segm")
    good_gt = _json_ready(gt)
    bad_gt = dict(good_gt, annotations=[dict(good_gt["annotations"][0], image_id=42)])
    with pytest.raises(DataError, match="annotation record 0 .*image_id is not in 'images'"):
        bad_gt_path = _write(tmp_path / "bad_gt.json", bad_gt)
        evaluate_coco_files(bad_gt_path, _write(tmp_path / "dt.json", segm), "segm")


def test_coco_mini_ground_truth_as_detections(shared_data, tmp_path):
    root = shared_data / "instance" / "coco_mini" / "annotations"
    gt = json.loads((root / "instances.json").read_text())
    records = [
        {k: ann[k] for k in ("image_id", "category_id", "bbox", "segmentation")} | {"score": 1.0}
        for ann in gt["annotations"]
        if not ann.get("iscrowd")
    ]
    dt_path = _write(tmp_path / "dt.json", records)
    for iou_type in ("bbox", "segm", "boundary"):
        stats = evaluate_coco_files(str(root / "instances.json"), dt_path, iou_type)
        assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0), iou_type
    kp = json.loads((root / "person_keypoints.json").read_text())
    kp_records = [
        {k: a[k] for k in ("image_id", "category_id", "keypoints")} | {"score": 1.0}
        for a in kp["annotations"]
        if a.get("num_keypoints", 0) > 0
    ]
    kp_path = _write(tmp_path / "kp.json", kp_records)
    stats = evaluate_coco_files(str(root / "person_keypoints.json"), kp_path, "keypoints")
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_format_coco_table():
    stats = {n: 0.5 for n in DET}
    table = format_coco_table(stats)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500" in table
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ] = 0.500" in table
    kp_stats = {f"keypoints/{n}": 0.25 for n in KEYPOINT_STAT_NAMES}
    kp = format_coco_table(kp_stats | {"keypoints/AP/person": 0.3})
    assert "[keypoints]" in kp and "maxDets= 20 ] = 0.250" in kp and "AP/person" in kp
    assert len(table.splitlines()) == 12


def _json_ready(gt: dict) -> dict:
    """Ground truth with RLE counts as str (bytes are not JSON)."""
    anns = []
    for a in gt["annotations"]:
        seg = a["segmentation"]
        if isinstance(seg, dict) and isinstance(seg["counts"], bytes):
            a = dict(a, segmentation={"size": seg["size"], "counts": seg["counts"].decode()})
        anns.append(a)
    return dict(gt, annotations=anns)
