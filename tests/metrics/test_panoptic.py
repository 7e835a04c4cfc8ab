"""PQ / SQ / RQ: golden tests against a literal panopticapi reference and torchmetrics."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data.io import DataError
from lightning_seg.metrics.panoptic import (
    PanopticQualityMetric,
    evaluate_panoptic_files,
    panoptic_counts,
)
from lightning_seg.structures import PanopticTargets

# --------------------------------------------------------------------------------------------
# Reference: panopticapi's pq_compute (cocodataset/panopticapi, panopticapi/evaluation.py,
# pq_compute_single_core + PQStat.pq_average), re-written step by step with plain dicts and
# NumPy, single core, so that the fast implementation can be checked against it.
# --------------------------------------------------------------------------------------------
OFFSET = 256 * 256 * 256
VOID = 0


def _ref_rgb2id(color: np.ndarray) -> np.ndarray:
    color = color.astype(np.int32)
    return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def _ref_single_image(gt_ann, pred_ann, gt_folder, pred_folder, categories, stats):
    pan_gt = _ref_rgb2id(np.array(Image.open(os.path.join(gt_folder, gt_ann["file_name"])), dtype=np.uint32))
    pan_pred = _ref_rgb2id(np.array(Image.open(os.path.join(pred_folder, pred_ann["file_name"])), dtype=np.uint32))
    gt_segms = {el["id"]: dict(el) for el in gt_ann["segments_info"]}
    pred_segms = {el["id"]: dict(el) for el in pred_ann["segments_info"]}

    pred_labels_set = set(el["id"] for el in pred_ann["segments_info"])
    labels, labels_cnt = np.unique(pan_pred, return_counts=True)
    for label, label_cnt in zip(labels, labels_cnt):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"segment {label} in PNG but not in JSON")
        pred_segms[label]["area"] = label_cnt
        pred_labels_set.remove(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError("unknown category")
    if pred_labels_set:
        raise KeyError("segments in JSON but not in PNG")

    pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
    gt_pred_map = {}
    labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
    for label, intersection in zip(labels, labels_cnt):
        gt_pred_map[(label // OFFSET, label % OFFSET)] = intersection

    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        if gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
            continue
        union = (
            pred_segms[pred_label]["area"]
            + gt_segms[gt_label]["area"]
            - intersection
            - gt_pred_map.get((VOID, pred_label), 0)
        )
        iou = intersection / union
        if iou > 0.5:
            st = stats[gt_segms[gt_label]["category_id"]]
            st["tp"] += 1
            st["iou"] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_labels_dict = {}
    for gt_label, gt_info in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_info["iscrowd"] == 1:
            crowd_labels_dict[gt_info["category_id"]] = gt_label
            continue
        stats[gt_info["category_id"]]["fn"] += 1

    for pred_label, pred_info in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        if pred_info["category_id"] in crowd_labels_dict:
            intersection += gt_pred_map.get((crowd_labels_dict[pred_info["category_id"]], pred_label), 0)
        if intersection / pred_info["area"] > 0.5:
            continue
        stats[pred_info["category_id"]]["fp"] += 1


def _ref_pq_average(stats, categories, isthing):
    pq, sq, rq, n = 0, 0, 0, 0
    per_class = {}
    for label, info in categories.items():
        if isthing is not None and isthing != (info["isthing"] == 1):
            continue
        st = stats[label]
        iou, tp, fp, fn = st["iou"], st["tp"], st["fp"], st["fn"]
        if tp + fp + fn == 0:
            per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq_c = iou / tp if tp != 0 else 0
        rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[label] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
        pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
    if n == 0:
        return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def reference_pq_compute(gt_json, pred_json, gt_folder, pred_folder):
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        pred = json.load(f)
    categories = {el["id"]: el for el in gt["categories"]}
    pred_anns = {el["image_id"]: el for el in pred["annotations"]}
    stats = defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})
    for gt_ann in gt["annotations"]:
        _ref_single_image(gt_ann, pred_anns[gt_ann["image_id"]], gt_folder, pred_folder, categories, stats)
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = _ref_pq_average(stats, categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


# --------------------------------------------------------------------------------------------
# Generated COCO-panoptic cases
# --------------------------------------------------------------------------------------------
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 7, "name": "dog", "isthing": 1},
    {"id": 20, "name": "sky", "isthing": 0},
    {"id": 21, "name": "road", "isthing": 0},
    {"id": 40, "name": "grass", "isthing": 0},
]
THING_IDS = [1, 3, 7]
STUFF_IDS = [20, 21, 40]


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for c in range(3):
        rgb[..., c] = ids % 256
        ids = ids // 256
    return rgb


def _paint(rng, h, w, num_strokes, segs, seg_map, new_prob, crowd_prob=0.0, void_strokes=0):
    """Paint random rectangles; each stroke reuses a segment or creates one."""
    for _ in range(num_strokes):
        if not segs or rng.random() < new_prob:
            sid = int(rng.integers(1, 256**3))
            while sid in segs:
                sid = int(rng.integers(1, 256**3))
            cat = int(rng.choice(THING_IDS + STUFF_IDS))
            crowd = int(cat in THING_IDS and rng.random() < crowd_prob)
            segs[sid] = {"id": sid, "category_id": cat, "iscrowd": crowd}
        else:
            sid = int(rng.choice(list(segs)))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = y0 + int(rng.integers(2, h // 2 + 3)), x0 + int(rng.integers(2, w // 2 + 3))
        seg_map[y0:y1, x0:x1] = sid
    for _ in range(void_strokes):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        seg_map[y0 : y0 + int(rng.integers(1, 8)), x0 : x0 + int(rng.integers(1, 8))] = 0


def _finish(seg_map, segs, file_name, image_id, drop_iscrowd=False):
    present = set(np.unique(seg_map).tolist()) - {0}
    infos = []
    for sid, s in segs.items():
        if sid in present:
            info = dict(s)
            info["area"] = int((seg_map == sid).sum())
            if drop_iscrowd:
                info.pop("iscrowd")
            infos.append(info)
    return {"image_id": image_id, "file_name": file_name, "segments_info": infos}


def make_case(root, seed, num_images=4, crowd_prob=0.3, pred_void=True):
    """Write a random GT and a perturbed prediction in COCO panoptic format under ``root``."""
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_json = {"categories": CATEGORIES, "images": [], "annotations": []}
    pred_json = {"annotations": []}
    for i in range(num_images):
        h, w = int(rng.integers(17, 40)), int(rng.integers(17, 45))
        gt_map = np.zeros((h, w), dtype=np.int64)
        gt_segs: dict = {}
        if i == num_images - 1:
            pass  # last image: no ground-truth segment at all (all void)
        else:
            _paint(rng, h, w, int(rng.integers(4, 14)), gt_segs, gt_map, 0.6, crowd_prob, void_strokes=3)
        # prediction: a noisy copy of the ground truth, with label flips and new segments
        pred_map = gt_map.copy()
        remap = {}
        pred_segs = {}
        for sid, s in gt_segs.items():
            new_id = int(rng.integers(1, 256**3))
            cat = s["category_id"]
            if rng.random() < 0.2:
                cat = int(rng.choice(THING_IDS + STUFF_IDS))
            remap[sid] = new_id
            pred_segs[new_id] = {"id": new_id, "category_id": cat}
        for sid, new_id in remap.items():
            pred_map[gt_map == sid] = new_id
        _paint(rng, h, w, int(rng.integers(1, 8)), pred_segs, pred_map, 0.5, 0.0, void_strokes=3 if pred_void else 0)
        if not pred_void:
            holes = pred_map == 0
            if holes.any():
                fill = int(rng.integers(1, 256**3))
                pred_segs[fill] = {"id": fill, "category_id": STUFF_IDS[0]}
                pred_map[holes] = fill
        name = f"{i:03d}.png"
        Image.fromarray(_id2rgb(gt_map)).save(gt_dir / name)
        Image.fromarray(_id2rgb(pred_map)).save(pred_dir / name)
        gt_json["images"].append({"id": i, "file_name": name, "height": h, "width": w})
        gt_json["annotations"].append(_finish(gt_map, gt_segs, name, i))
        pred_json["annotations"].append(_finish(pred_map, pred_segs, name, i))
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))
    return root / "gt.json", gt_dir, root / "pred.json", pred_dir


def _assert_same(ours: dict, ref: dict, tol: float = 1e-9) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for k in ("pq", "sq", "rq"):
            a, b = ours[group][k], ref[group][k]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < tol, (group, k, a, b)
    for cat_id, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat_id][k] - r[k]) < tol, (cat_id, k)


def _load_targets(gt_json, gt_dir, pred_json, pred_dir):
    """The generated files as lists of PanopticTargets (things/stuff as contiguous indices)."""
    from lightning_seg.metrics.panoptic import PanopticCategories, load_panoptic_segments, read_json

    gt, pred = read_json(gt_json), read_json(pred_json)
    cats = PanopticCategories.from_json(gt, gt_json)
    preds = {a["image_id"]: a for a in pred["annotations"]}
    targets, predictions = [], []
    for ann in gt["annotations"]:
        targets.append(load_panoptic_segments(gt_dir, ann, cats, gt_json, False))
        predictions.append(load_panoptic_segments(pred_dir, preds[ann["image_id"]], cats, pred_json, True))
    return cats, predictions, targets


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_generated_cases_equal_panopticapi_reference(tmp_path, seed):
    files = make_case(tmp_path, seed, num_images=5)
    ref = reference_pq_compute(files[0], files[2], files[1], files[3])
    ours = evaluate_panoptic_files(*files)
    _assert_same(ours, ref)
    # the cases must exercise every rule, else the test proves little
    tps = sum(v["tp"] for v in ours["per_class"].values())
    fps = sum(v["fp"] for v in ours["per_class"].values())
    fns = sum(v["fn"] for v in ours["per_class"].values())
    assert tps > 0 and fps > 0 and fns > 0


def test_crowd_and_void_rules_are_exercised(tmp_path):
    """Across seeds, some predictions are ignored thanks to crowd/void (FP count differs)."""
    ignored_any = False
    for seed in range(6):
        files = make_case(tmp_path / str(seed), seed, num_images=5, crowd_prob=0.6)
        gt = json.loads(files[0].read_text())
        ours = evaluate_panoptic_files(*files)
        for ann in gt["annotations"]:
            for s in ann["segments_info"]:
                s["iscrowd"] = 0
        files[0].write_text(json.dumps(gt))
        no_crowd = evaluate_panoptic_files(*files)
        if sum(v["fp"] for v in ours["per_class"].values()) != sum(v["fp"] for v in no_crowd["per_class"].values()):
            ignored_any = True
    assert ignored_any


def test_real_coco_sample_self_and_perturbed(shared_data, tmp_path):
    root = shared_data / "panoptic" / "coco_panoptic_sample"
    gt_json, gt_dir = root / "panoptic_examples.json", root / "panoptic_examples"
    ours = evaluate_panoptic_files(gt_json, gt_dir, gt_json, gt_dir)
    assert ours["All"]["pq"] == 1.0 and ours["All"]["n"] > 0
    _assert_same(ours, reference_pq_compute(gt_json, gt_json, gt_dir, gt_dir))

    # perturbed prediction: shift every segment, drop some to void, flip one label
    gt = json.loads(gt_json.read_text())
    rng = np.random.default_rng(0)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    pred = {"annotations": []}
    cat_ids = [c["id"] for c in gt["categories"]]
    for ann in gt["annotations"]:
        ids = _ref_rgb2id(np.array(Image.open(gt_dir / ann["file_name"]), dtype=np.uint32)).astype(np.int64)
        shifted = np.roll(ids, shift=(int(rng.integers(-9, 9)), int(rng.integers(-25, 25))), axis=(0, 1))
        shifted[rng.random(shifted.shape) < 0.02] = 0
        segs = []
        present = set(np.unique(shifted).tolist())
        for k, s in enumerate(ann["segments_info"]):
            if s["id"] not in present:
                continue
            cat = s["category_id"] if k % 7 else int(rng.choice(cat_ids))
            segs.append({"id": s["id"], "category_id": cat})
        Image.fromarray(_id2rgb(shifted)).save(pred_dir / ann["file_name"])
        pred["annotations"].append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segs})
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(pred))
    ours = evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)
    ref = reference_pq_compute(gt_json, pred_json, gt_dir, pred_dir)
    _assert_same(ours, ref)
    assert 0.0 < ours["All"]["pq"] < 1.0


def test_metric_on_targets_equals_file_evaluation(tmp_path):
    files = make_case(tmp_path, 11, num_images=6)
    cats, preds, targets = _load_targets(*files)
    metric = PanopticQualityMetric(things=cats.things, stuff=cats.stuff, class_names=cats.names)
    metric.update(preds[:2], targets[:2])
    metric.update(preds[2:], targets[2:])
    res = metric.compute()
    ref = reference_pq_compute(files[0], files[2], files[1], files[3])
    for suffix, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        assert abs(float(res[f"pq{suffix}"]) - ref[group]["pq"]) < 1e-9
        assert abs(float(res[f"sq{suffix}"]) - ref[group]["sq"]) < 1e-9
        assert abs(float(res[f"rq{suffix}"]) - ref[group]["rq"]) < 1e-9
        assert int(res[f"n{suffix}"]) == ref[group]["n"]
    assert int(res["num_images"]) == 6
    table = metric.per_class(res)
    assert set(table) <= set(cats.names) and table

    # the same segments with small ids (lookup-table path instead of binary search)
    def small_ids(p: PanopticTargets) -> PanopticTargets:
        new_ids = torch.arange(1, len(p) + 1) * 3
        seg = torch.zeros_like(p.segment_map)
        for old, new in zip(p.ids.tolist(), new_ids.tolist()):
            seg[p.segment_map == old] = new
        return PanopticTargets(seg, new_ids, p.labels, p.isthing, p.iscrowd)

    small = PanopticQualityMetric(things=cats.things, stuff=cats.stuff)
    small.update([small_ids(p) for p in preds], [small_ids(t) for t in targets])
    for key in ("iou_fixed", "tp", "fp", "fn"):
        assert torch.equal(getattr(small, key), getattr(metric, key))
    assert torch.equal(small.compute()["pq"], res["pq"])


def _to_torchmetrics_format(p: PanopticTargets, category_of_index: list[int], void_category: int) -> torch.Tensor:
    """(category_id, instance_id) per pixel, as torchmetrics.PanopticQuality wants it."""
    h, w = p.image_size
    out = torch.zeros(h, w, 2, dtype=torch.int64)
    out[..., 0] = void_category
    for k in range(len(p)):
        m = p.segment_map == p.ids[k]
        out[m, 0] = category_of_index[int(p.labels[k])]
        out[m, 1] = k + 1
    return out


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchmetrics_where_definitions_agree(tmp_path, seed):
    """torchmetrics differs on crowd and on void pixels of the prediction; without them the
    definitions are the same (one segment per stuff class is ensured by merging)."""
    from torchmetrics.detection import PanopticQuality

    files = make_case(tmp_path, 100 + seed, num_images=4, crowd_prob=0.0, pred_void=False)
    cats, preds, targets = _load_targets(*files)

    def merge_stuff(p: PanopticTargets) -> PanopticTargets:
        seg = p.segment_map.clone()
        ids, labels = [], []
        for k in range(len(p)):
            lab = int(p.labels[k])
            if not cats.isthing[lab] and lab in labels:
                seg[seg == p.ids[k]] = ids[labels.index(lab)]
                continue
            ids.append(int(p.ids[k]))
            labels.append(lab)
        n = len(ids)
        return PanopticTargets(
            seg, torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64),
            torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool),
        )

    preds = [merge_stuff(p) for p in preds]
    targets = [merge_stuff(t) for t in targets]
    ours = PanopticQualityMetric(things=cats.things, stuff=cats.stuff)
    tm = PanopticQuality(things=set(cats.things), stuffs=set(cats.stuff), return_per_class=True, return_sq_and_rq=True)
    tm_avg = PanopticQuality(things=set(cats.things), stuffs=set(cats.stuff), return_sq_and_rq=True)
    ident = list(range(len(cats.category_ids)))
    for p, t in zip(preds, targets):
        ours.update([p], [t])
        a = _to_torchmetrics_format(p, ident, 99)[None]
        b = _to_torchmetrics_format(t, ident, 99)[None]
        tm.update(a, b)
        tm_avg.update(a, b)
    res = ours.compute()
    pq, sq, rq = tm_avg.compute().tolist()
    # torchmetrics divides int tensors (float32 IoU), hence the looser tolerance
    assert abs(float(res["pq"]) - pq) < 1e-6
    assert abs(float(res["sq"]) - sq) < 1e-6
    assert abs(float(res["rq"]) - rq) < 1e-6
    per = tm.compute().reshape(-1, 3)  # torchmetrics order: things sorted, then stuff sorted
    order = sorted(cats.things) + sorted(cats.stuff)
    for row, c in zip(per.tolist(), order):
        if not math.isnan(float(res["pq_per_class"][c])):
            assert abs(row[0] - float(res["pq_per_class"][c])) < 1e-6


def _simple(seg: list[list[int]], ids, labels, crowd=None) -> PanopticTargets:
    n = len(ids)
    return PanopticTargets(
        torch.tensor(seg, dtype=torch.int64),
        torch.tensor(ids, dtype=torch.int64),
        torch.tensor(labels, dtype=torch.int64),
        torch.zeros(n, dtype=torch.bool),
        torch.tensor(crowd if crowd is not None else [False] * n, dtype=torch.bool),
    )


def test_hand_computed_case():
    # gt: segment 5 (class 0) = 4 px, segment 6 (class 1, stuff) = 4 px; one void pixel column
    gt = _simple([[5, 5, 6, 6, 0], [5, 5, 6, 6, 0]], [5, 6], [0, 1])
    # pred: segment 9 (class 0) covers 3 of 5's pixels + 1 void px -> IoU = 3 / (4 + 4 - 3 - 1) = 0.75
    # pred 8 (class 1) covers 6's 4 px + 5's 1 px + 1 void px -> IoU = 4 / (4 + 6 - 4 - 1) = 0.8
    pred = _simple([[9, 9, 8, 8, 9], [9, 8, 8, 8, 8]], [9, 8], [0, 1])
    c = panoptic_counts(pred, gt, 2)
    assert c.tp.tolist() == [1, 1] and c.fp.tolist() == [0, 0] and c.fn.tolist() == [0, 0]
    m = PanopticQualityMetric(things=[0], stuff=[1])
    m.update([pred], [gt])
    r = m.compute()
    assert abs(float(r["pq_th"]) - 0.75) < 1e-9 and abs(float(r["pq_st"]) - 0.8) < 1e-9
    assert abs(float(r["pq"]) - 0.775) < 1e-9 and float(r["rq"]) == 1.0


def test_image_without_segments_and_empty_prediction():
    m = PanopticQualityMetric(things=[0, 1], stuff=[2])
    void = _simple([[0, 0, 0], [0, 0, 0]], [], [])
    pred = _simple([[4, 4, 0], [4, 4, 0]], [4], [0])  # all on gt void: ignored, no FP
    m.update([pred, void], [void, void])
    r = m.compute()
    assert int(r["n"]) == 0 and math.isnan(float(r["pq"]))
    gt = _simple([[1, 1, 2], [1, 1, 2]], [1, 2], [0, 2])
    m.update([void], [gt])
    r = m.compute()
    assert float(r["pq"]) == 0.0 and int(r["fn"].sum()) == 2 and math.isnan(float(r["pq_per_class"][1]))


def test_bad_inputs_raise():
    m = PanopticQualityMetric(things=[0], stuff=[1])
    gt = _simple([[1, 1], [2, 2]], [1, 2], [0, 1])
    with pytest.raises(ValueError, match="not in ids"):
        m.update([_simple([[3, 3], [7, 7]], [3], [0])], [gt])
    with pytest.raises(ValueError, match="neither in `things`"):
        m.update([_simple([[3, 3], [3, 3]], [3], [5])], [gt])
    with pytest.raises(ValueError, match="ground-truth size"):
        m.update([_simple([[3, 3, 3]], [3], [0])], [gt])
    with pytest.raises(ValueError, match="disjoint"):
        PanopticQualityMetric(things=[0, 1], stuff=[1])


def test_file_errors(tmp_path):
    gt_json, gt_dir, pred_json, pred_dir = make_case(tmp_path, 3, num_images=3)
    pred = json.loads(pred_json.read_text())
    # segment missing from the JSON
    bad = json.loads(json.dumps(pred))
    bad["annotations"][0]["segments_info"] = bad["annotations"][0]["segments_info"][1:]
    p = tmp_path / "bad1.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="in the PNG but not in segments_info"):
        evaluate_panoptic_files(gt_json, gt_dir, p, pred_dir)
    # unknown category id
    bad = json.loads(json.dumps(pred))
    bad["annotations"][1]["segments_info"][0]["category_id"] = 555
    p.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="unknown category_id 555"):
        evaluate_panoptic_files(gt_json, gt_dir, p, pred_dir)
    # malformed JSON
    p.write_text("{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        evaluate_panoptic_files(gt_json, gt_dir, p, pred_dir)
    # wrong PNG size
    name = pred["annotations"][0]["file_name"]
    img = np.array(Image.open(pred_dir / name))
    Image.fromarray(np.concatenate([img, np.zeros_like(img[:1])])).save(pred_dir / name)  # one void row more
    with pytest.raises(DataError, match="original image size"):
        evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)
    # missing prediction for an image
    bad = json.loads(json.dumps(pred))
    bad["annotations"] = bad["annotations"][1:]
    p.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="no prediction for image_id"):
        evaluate_panoptic_files(gt_json, gt_dir, p, pred_dir)
