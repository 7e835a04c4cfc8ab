"""VPQ: golden tests against a literal port of VPSNet's eval_vpq.py on generated videos."""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data.io import DataError
from lightning_seg.metrics.vpq import VideoPanopticQualityMetric, evaluate_vpq_files
from lightning_seg.structures import PanopticTargets

# --------------------------------------------------------------------------------------------
# Reference: mcahny/vps tools/eval_vpq.py (vpq_compute_single_core, PQStat.pq_average), written
# step by step with dicts and NumPy on in-memory id maps (eval_vpq reads the same PNGs).
# --------------------------------------------------------------------------------------------
OFFSET = 256 * 256 * 256
VOID = 0


def _ref_window_stats(frames, stats):
    """frames: list of (gt_json, pred_json, gt_map, pred_map) for one window."""
    vid_gt, vid_pred, gt_segms_list, pred_segms_list = [], [], [], []
    for gt_json, pred_json, pan_gt, pan_pred in frames:
        gt_segms = {el["id"]: dict(el) for el in gt_json["segments_info"]}
        pred_segms = {el["id"]: dict(el) for el in pred_json["segments_info"]}
        labels, cnt = np.unique(pan_pred, return_counts=True)
        for label, c in zip(labels, cnt):
            if label == VOID:
                continue
            pred_segms[label]["area"] = c
        vid_gt.append(pan_gt)
        vid_pred.append(pan_pred)
        gt_segms_list.append(gt_segms)
        pred_segms_list.append(pred_segms)
    vid_gt, vid_pred = np.stack(vid_gt), np.stack(vid_pred)
    vid_gt_segms, vid_pred_segms = {}, {}
    for gt_segms, pred_segms in zip(gt_segms_list, pred_segms_list):
        for k, v in gt_segms.items():
            if k not in vid_gt_segms:
                vid_gt_segms[k] = dict(v)
            else:
                vid_gt_segms[k]["area"] += v["area"]
        for k, v in pred_segms.items():
            if k not in vid_pred_segms:
                vid_pred_segms[k] = dict(v)
            else:
                vid_pred_segms[k]["area"] += v["area"]
    gt_pred_map = {}
    labels, cnt = np.unique(vid_gt.astype(np.uint64) * OFFSET + vid_pred.astype(np.uint64), return_counts=True)
    for label, inter in zip(labels, cnt):
        gt_pred_map[(label // OFFSET, label % OFFSET)] = inter
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), inter in gt_pred_map.items():
        if gt_label not in vid_gt_segms or pred_label not in vid_pred_segms:
            continue
        if vid_gt_segms[gt_label]["iscrowd"] == 1:
            continue
        if vid_gt_segms[gt_label]["category_id"] != vid_pred_segms[pred_label]["category_id"]:
            continue
        union = (
            vid_pred_segms[pred_label]["area"] + vid_gt_segms[gt_label]["area"] - inter
            - gt_pred_map.get((VOID, pred_label), 0)
        )
        iou = inter / union
        if iou > 0.5:
            st = stats[vid_gt_segms[gt_label]["category_id"]]
            st["tp"] += 1
            st["iou"] += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)
    crowd = {}
    for gt_label, info in vid_gt_segms.items():
        if gt_label in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd[info["category_id"]] = gt_label
            continue
        stats[info["category_id"]]["fn"] += 1
    for pred_label, info in vid_pred_segms.items():
        if pred_label in pred_matched:
            continue
        inter = gt_pred_map.get((VOID, pred_label), 0)
        if info["category_id"] in crowd:
            inter += gt_pred_map.get((crowd[info["category_id"]], pred_label), 0)
        if inter / info["area"] > 0.5:
            continue
        stats[info["category_id"]]["fp"] += 1


def _ref_pq_average(stats, categories, isthing):
    pq, sq, rq, n = 0.0, 0.0, 0.0, 0
    for label, info in categories.items():
        if isthing is not None and isthing != (info["isthing"] == 1):
            continue
        st = stats[label]
        if st["tp"] + st["fp"] + st["fn"] == 0:
            continue
        n += 1
        d = st["tp"] + 0.5 * st["fp"] + 0.5 * st["fn"]
        pq += st["iou"] / d
        sq += st["iou"] / st["tp"] if st["tp"] else 0
        rq += st["tp"] / d
    if not n:
        return {"pq": math.nan, "sq": math.nan, "rq": math.nan, "n": 0}
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}


def reference_vpq(videos, categories, nframes_list=(1, 2, 3, 4)):
    """videos: list of lists of (gt_json, pred_json, gt_map, pred_map) per annotated frame."""
    out = {}
    for nframes in nframes_list:
        stats = defaultdict(lambda: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0})
        for frames in copy.deepcopy(videos):
            for idx in range(0, len(frames) - nframes + 1):
                _ref_window_stats(frames[idx : idx + nframes], stats)
        out[(nframes - 1) * 5] = {
            name: _ref_pq_average(stats, categories, isthing)
            for name, isthing in (("All", None), ("Things", True), ("Stuff", False))
        }
    return out


# --------------------------------------------------------------------------------------------
# Generated videos
# --------------------------------------------------------------------------------------------
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 11, "name": "road", "isthing": 0},
    {"id": 12, "name": "sky", "isthing": 0},
]
THINGS, STUFF = [1, 2], [11, 12]


def _id2rgb(ids):
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for c in range(3):
        rgb[..., c] = ids % 256
        ids = ids // 256
    return rgb


def make_videos(rng, num_videos=3, num_frames=6, switch_prob=0.4):
    """Moving boxes with persistent ids; predictions with noise, label flips and id switches."""
    videos = []
    for _ in range(num_videos):
        h, w = int(rng.integers(15, 30)), int(rng.integers(20, 40))
        objs = []
        for j in range(int(rng.integers(3, 7))):
            cat = int(rng.choice(THINGS + STUFF))
            objs.append({
                "id": 1000 + 37 * j + int(rng.integers(0, 30)),
                "cat": cat,
                "crowd": int(cat in THINGS and rng.random() < 0.25),
                "pos": rng.uniform(0, [h, w]),
                "vel": rng.normal(0, 2, 2),
                "size": rng.integers(4, [h // 2 + 4, w // 2 + 4]),
                "pred_id": 50000 + 91 * j,
                "switch_at": int(rng.integers(1, num_frames)) if rng.random() < switch_prob else None,
                "pred_cat": cat if rng.random() < 0.8 else int(rng.choice(THINGS + STUFF)),
            })
        frames = []
        for t in range(num_frames):
            gt = np.zeros((h, w), np.int64)
            pred = np.zeros((h, w), np.int64)
            gt_infos, pred_infos = {}, {}
            for o in objs:
                y, x = (o["pos"] + t * o["vel"]).astype(int)
                sl = (slice(max(y, 0), max(y + o["size"][0], 0)), slice(max(x, 0), max(x + o["size"][1], 0)))
                gt[sl] = o["id"]
                py, px = y + int(rng.integers(-1, 2)), x + int(rng.integers(-1, 2))
                pid = o["pred_id"] + (7 if o["switch_at"] is not None and t >= o["switch_at"] else 0)
                pred[max(py, 0) : max(py + o["size"][0], 0), max(px, 0) : max(px + o["size"][1], 0)] = pid
                gt_infos[o["id"]] = {"id": o["id"], "category_id": o["cat"], "iscrowd": o["crowd"]}
                pred_infos[pid] = {"id": pid, "category_id": o["pred_cat"]}
            if rng.random() < 0.5:  # a spurious prediction
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                pred[y0 : y0 + 4, x0 : x0 + 4] = 77
                pred_infos[77] = {"id": 77, "category_id": int(rng.choice(THINGS))}
            gt[rng.random(gt.shape) < 0.05] = 0
            pred[rng.random(pred.shape) < 0.03] = 0
            gp, pp = set(np.unique(gt).tolist()), set(np.unique(pred).tolist())
            gt_json = {"segments_info": [dict(v, area=int((gt == k).sum())) for k, v in gt_infos.items() if k in gp]}
            pred_json = {"segments_info": [dict(v) for k, v in pred_infos.items() if k in pp]}
            frames.append((gt_json, pred_json, gt, pred))
        videos.append(frames)
    return videos


def _targets(frames, which):
    id_to_index = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    out = []
    for gt_json, pred_json, gt, pred in frames:
        info = gt_json if which == "gt" else pred_json
        seg_map = gt if which == "gt" else pred
        segs = info["segments_info"]
        out.append(PanopticTargets(
            segment_map=torch.from_numpy(seg_map),
            ids=torch.tensor([s["id"] for s in segs], dtype=torch.int64),
            labels=torch.tensor([id_to_index[s["category_id"]] for s in segs], dtype=torch.int64),
            isthing=torch.tensor([s["category_id"] in THINGS for s in segs], dtype=torch.bool),
            iscrowd=torch.tensor([bool(s.get("iscrowd", 0)) for s in segs], dtype=torch.bool),
        ))
    return out


def _metric_for(videos):
    m = VideoPanopticQualityMetric(things=[0, 1], stuff=[2, 3])
    for frames in videos:
        m.update(_targets(frames, "pred"), _targets(frames, "gt"))
    return m


@pytest.mark.parametrize("seed", range(4))
def test_equals_eval_vpq_reference(seed):
    rng = np.random.default_rng(seed)
    videos = make_videos(rng)
    res = _metric_for(videos).compute()
    ref = reference_vpq(videos, {c["id"]: c for c in CATEGORIES})
    for k, groups in ref.items():
        for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            assert int(res[f"n{suffix}_k{k}"]) == groups[name]["n"]
            for m in ("pq", "sq", "rq"):
                a, b = float(res[f"{m}{suffix}_k{k}"]), groups[name][m]
                assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-9, (k, name, m, a, b)
    vpq = np.mean([ref[k]["All"]["pq"] for k in ref])
    assert abs(float(res["vpq"]) - vpq) < 1e-9


def test_id_switch_only_hurts_longer_windows():
    rng = np.random.default_rng(7)
    videos = make_videos(rng, switch_prob=0.0)
    # perfect predictions: ground truth with renamed ids
    perfect = []
    for frames in videos:
        new = []
        for gt_json, _, gt, _ in frames:
            pred = np.where(gt > 0, gt + 5, 0)
            segs = [{"id": s["id"] + 5, "category_id": s["category_id"]} for s in gt_json["segments_info"]]
            new.append((gt_json, {"segments_info": segs}, gt, pred))
        perfect.append(new)
    res = _metric_for(perfect).compute()
    assert all(float(res[f"pq_k{k}"]) == 1.0 for k in (0, 5, 10, 15))
    # switch every thing id from frame 3 on: k = 0 unaffected, longer windows lose matches
    switched = copy.deepcopy(perfect)
    for frames in switched:
        for t in range(3, len(frames)):
            gt_json, pred_json, gt, pred = frames[t]
            things = [s["id"] for s in pred_json["segments_info"] if s["category_id"] in THINGS]
            for sid in things:
                pred[pred == sid] = sid + 100000
            for s in pred_json["segments_info"]:
                if s["id"] in things:
                    s["id"] += 100000
    res2 = _metric_for(switched).compute()
    assert float(res2["pq_k0"]) == 1.0
    assert float(res2["pq_th_k15"]) < float(res2["pq_th_k5"]) < 1.0
    assert float(res2["pq_st_k15"]) == 1.0


def _write_files(root, videos, shuffle_rng=None):
    (root / "gt").mkdir(parents=True)
    (root / "pred").mkdir()
    gt = {"categories": CATEGORIES, "images": [], "annotations": []}
    pred = {"annotations": []}
    image_id = 0
    for v, frames in enumerate(videos):
        for t, (gt_json, pred_json, g, p) in enumerate(frames):
            name = f"v{v}_f{t * 5:04d}.png"
            Image.fromarray(_id2rgb(g)).save(root / "gt" / name)
            Image.fromarray(_id2rgb(p)).save(root / "pred" / name)
            gt["images"].append({"id": image_id, "file_name": name, "video_id": f"video{v}", "frame_id": t * 5})
            gt["annotations"].append(
                {"image_id": image_id, "file_name": name, "segments_info": gt_json["segments_info"]})
            pred["annotations"].append(
                {"image_id": image_id, "file_name": name, "segments_info": pred_json["segments_info"]})
            image_id += 1
    if shuffle_rng is not None:  # frame order must come from frame_id, not from the file order
        shuffle_rng.shuffle(gt["images"])
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "pred.json").write_text(json.dumps(pred))
    return root / "gt.json", root / "gt", root / "pred.json", root / "pred"


def test_files_equal_reference(tmp_path):
    rng = np.random.default_rng(3)
    videos = make_videos(rng, num_videos=2, num_frames=5)
    files = _write_files(tmp_path, videos, shuffle_rng=rng)
    out = evaluate_vpq_files(*files)
    ref = reference_vpq(videos, {c["id"]: c for c in CATEGORIES})
    for k in (0, 5, 10, 15):
        assert abs(out["per_k"][k]["All"]["pq"] - ref[k]["All"]["pq"]) < 1e-9
    assert out["num_videos"] == 2 and out["num_frames"] == 10
    assert abs(out["vpq"]["All"] - np.mean([ref[k]["All"]["pq"] for k in ref])) < 1e-9

    gt = json.loads(files[0].read_text())
    del gt["images"][0]["video_id"]
    files[0].write_text(json.dumps(gt))
    with pytest.raises(DataError, match="video_id"):
        evaluate_vpq_files(*files)


def test_bad_frames_raise():
    m = VideoPanopticQualityMetric(things=[0], stuff=[1])
    seg = torch.tensor([[1, 1], [2, 2]])
    t = PanopticTargets(seg, torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([True, False]),
                        torch.zeros(2, dtype=torch.bool))
    p = PanopticTargets(seg, torch.tensor([1]), torch.tensor([0]), torch.tensor([True]),
                        torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame 0"):
        m.update([p], [t])
    bad = PanopticTargets(seg, torch.tensor([1, 2]), torch.tensor([0, 4]), torch.tensor([True, False]),
                          torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside things/stuff"):
        m.update([bad], [t])


def test_last_crowd_segment_in_window_order_counts():
    """Two crowd tubes of one class: like eval_vpq, only the last one in first-appearance order
    (frame order, then segments_info order) absorbs an unmatched prediction."""
    gt0 = np.array([[500, 500, 500, 0]])  # crowd A (id 500) in frame 0
    gt1 = np.array([[0, 300, 0, 0]])  # crowd B (id 300) first appears in frame 1
    pr0 = np.array([[9, 9, 9, 0]])
    pr1 = np.array([[0, 9, 0, 0]])
    crowd = lambda i: {"id": i, "category_id": 1, "iscrowd": 1}  # noqa: E731
    frames = [
        ({"segments_info": [dict(crowd(500), area=3)]}, {"segments_info": [{"id": 9, "category_id": 1}]}, gt0, pr0),
        ({"segments_info": [dict(crowd(300), area=1)]}, {"segments_info": [{"id": 9, "category_id": 1}]}, gt1, pr1),
    ]
    ref = reference_vpq([frames], {c["id"]: c for c in CATEGORIES}, nframes_list=(2,))
    res = _metric_for_windows([frames], (2,)).compute()
    assert int(res["n_k5"]) == ref[5]["All"]["n"] == 1  # the prediction is a false positive
    assert float(res["pq_k5"]) == ref[5]["All"]["pq"] == 0.0


def _metric_for_windows(videos, window_frames):
    m = VideoPanopticQualityMetric(things=[0, 1], stuff=[2, 3], window_frames=window_frames)
    for frames in videos:
        m.update(_targets(frames, "pred"), _targets(frames, "gt"))
    return m
