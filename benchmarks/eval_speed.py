"""Evaluation speed and memory: our COCO box/mask AP (and PQ) against the reference libraries.

Generates a deterministic synthetic set (default 5000 images of 256..640 px, 20 classes,
~10 ground-truth and ~30 predicted instances per image: two jittered copies of each object
plus ~10 false positives, ellipse masks) and times, each side in its own subprocess so that
peak RSS (``ru_maxrss``) is its own:

* ours: ``COCOEvaluator.update`` per image (masks -> RLE at once) + ``compute``;
* pycocotools: the plain pipeline from the same tensors: ``mask.encode`` of Fortran uint8
  copies, GT dicts + results list, ``COCO.loadRes``, ``COCOeval.evaluate/accumulate/summarize``.

Image generation is not timed. Both sides must give the same 12 stats (``max_stat_diff``).
Both worker processes import the same modules before measuring, so that the fixed import
footprint (about 1 GB, mostly torch) is equal and the RSS difference is the evaluation's.

The PQ part times ``PanopticQualityMetric`` (engineer B) against torchmetrics'
``PanopticQuality`` on generated panoptic images (default 200; 33 classes, stuff bands, thing
ellipses, a void region; no crowd, which torchmetrics does not model), update per image +
compute, each in its own subprocess; the two PQ values are reported side by side.

Usage::

    python benchmarks/eval_speed.py                  # full size (several minutes)
    python benchmarks/eval_speed.py --num-images 200 --pq-images 20  # quick

The last line printed is one JSON object with ``bbox_time_ratio``, ``segm_time_ratio``,
``segm_peak_rss_ratio`` (ours / pycocotools) and ``pq_time_ratio`` (ours / torchmetrics), plus
the seconds, CPU-time ratios and peak RSS behind them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

# ----------------------------------------------------------------------------- data


def _ellipse(h: int, w: int) -> np.ndarray:
    """Bool ellipse inscribed in an h x w box."""
    yy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 2)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


def _random_box(rng: np.random.Generator, h: int, w: int) -> list[int]:
    bh = int(np.clip(np.exp(rng.uniform(np.log(6), np.log(0.6 * h))), 4, h))
    bw = int(np.clip(bh * np.exp(rng.normal(0, 0.4)), 4, w))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    return [x0, y0, x0 + bw, y0 + bh]


def _jitter(rng: np.random.Generator, box: list[int], h: int, w: int, scale: float) -> list[int]:
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    d = rng.normal(0, scale, 4) * np.array([bw, bh, bw, bh])
    nx0, ny0 = int(np.clip(x0 + d[0], 0, w - 2)), int(np.clip(y0 + d[1], 0, h - 2))
    nx1, ny1 = int(np.clip(x1 + d[2], nx0 + 2, w)), int(np.clip(y1 + d[3], ny0 + 2, h))
    return [nx0, ny0, nx1, ny1]


def _masks(boxes: list[list[int]], h: int, w: int) -> torch.Tensor:
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        masks[j, y0:y1, x0:x1] = _ellipse(y1 - y0, x1 - x0)
    return torch.from_numpy(masks)


def make_image(seed: int, index: int, num_classes: int, with_masks: bool):
    """One image's ground truth and predictions (InstanceTargets, InstancePredictions)."""
    from lightning_seg.structures.targets import InstancePredictions, InstanceTargets

    rng = np.random.default_rng([seed, index])
    h, w = (int(v) for v in rng.integers(256, 641, 2))
    gt_boxes = [_random_box(rng, h, w) for _ in range(int(np.clip(rng.poisson(10), 1, 25)))]
    gt_labels = rng.integers(0, num_classes, len(gt_boxes))
    crowd = rng.random(len(gt_boxes)) < 0.01
    dt_boxes, dt_labels = [], []
    for box, label in zip(gt_boxes, gt_labels):
        for scale in (0.05, 0.15):
            dt_boxes.append(_jitter(rng, box, h, w, scale))
            dt_labels.append(label if rng.random() < 0.9 else rng.integers(0, num_classes))
    for _ in range(int(rng.poisson(10))):
        dt_boxes.append(_random_box(rng, h, w))
        dt_labels.append(rng.integers(0, num_classes))
    scores = rng.random(len(dt_boxes)).astype(np.float32)
    target = InstanceTargets(
        boxes=torch.tensor(gt_boxes, dtype=torch.float32),
        labels=torch.tensor(gt_labels, dtype=torch.int64),
        image_size=(h, w),
        masks=_masks(gt_boxes, h, w) if with_masks else None,
        iscrowd=torch.from_numpy(crowd),
    )
    pred = InstancePredictions(
        boxes=torch.tensor(dt_boxes, dtype=torch.float32),
        scores=torch.from_numpy(scores),
        labels=torch.tensor(np.array(dt_labels), dtype=torch.int64),
        image_size=(h, w),
        masks=_masks(dt_boxes, h, w) if with_masks else None,
    )
    return pred, target


# ----------------------------------------------------------------------------- workers


class _Clock:
    """Accumulates wall time (``perf_counter``) and process CPU time of the timed sections."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu

    def result(self, stats: list[float]) -> dict:
        return {"time_s": self.wall, "cpu_s": self.cpu, "stats": stats}


def run_ours(args, iou_type: str) -> dict:
    from lightning_seg.metrics.coco import COCOEvaluator, detection_stat_names

    metric = COCOEvaluator((iou_type,), category_ids=list(range(1, args.num_classes + 1)))
    clock = _Clock()
    for i in range(args.num_images):
        pred, target = make_image(args.seed, i, args.num_classes, iou_type == "segm")
        with clock:
            metric.update([pred], [target], [i + 1])
    with clock:
        out = metric.compute()
    return clock.result([out[f"{iou_type}/{n}"] for n in detection_stat_names()])


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()  # [N, 4]


def _fortran_uint8(masks: torch.Tensor) -> np.ndarray:
    """``Tensor[N, H, W]`` bool -> uint8[H, W, N] in Fortran order (pycocotools.mask.encode)."""
    return np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))


def run_pycocotools(args, iou_type: str) -> dict:
    import pycocotools.mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    clock = _Clock()
    for i in range(args.num_images):
        pred, target = make_image(args.seed, i, args.num_classes, iou_type == "segm")
        clock.__enter__()
        h, w = target.image_size
        image_id = i + 1
        images.append({"id": image_id, "height": h, "width": w})
        gt_xywh, dt_xywh = _xywh(target.boxes), _xywh(pred.boxes)
        if iou_type == "segm":
            gt_rles = mask_utils.encode(_fortran_uint8(target.masks))
            gt_areas = mask_utils.area(gt_rles).tolist()
            dt_rles = mask_utils.encode(_fortran_uint8(pred.masks))
        else:
            gt_areas = [bw * bh for _, _, bw, bh in gt_xywh]
        for j, (label, crowd) in enumerate(zip(target.labels.tolist(), target.iscrowd.tolist())):
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1}
            ann.update(bbox=gt_xywh[j], area=gt_areas[j], iscrowd=int(crowd))
            if iou_type == "segm":
                ann["segmentation"] = gt_rles[j]
            anns.append(ann)
        for j, (label, score) in enumerate(zip(pred.labels.tolist(), pred.scores.tolist())):
            rec = {"image_id": image_id, "category_id": label + 1, "score": score}
            if iou_type == "segm":
                rec["segmentation"] = dt_rles[j]
            else:
                rec["bbox"] = dt_xywh[j]
            results.append(rec)
        clock.__exit__()
    with clock, contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images, "annotations": anns,
            "categories": [{"id": c} for c in range(1, args.num_classes + 1)],
        }  # fmt: skip
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return clock.result([float(v) for v in ev.stats])


# ----------------------------------------------------------------------------- panoptic

NUM_THINGS, NUM_STUFF = 20, 13  # contiguous class indices: things 0..19, stuff 20..32


def make_panoptic_image(seed: int, index: int) -> dict[str, np.ndarray]:
    """Ground-truth and predicted segment maps of one image (ids, 0 = void) and their labels.

    Stuff: 2-4 bands with distinct stuff classes; things: 4-15 ellipses painted over them; a
    void rectangle in the ground truth. Predictions: bands moved by a few pixels, things
    jittered, 10% relabelled, 10% missed, plus a few false positives.
    """
    rng = np.random.default_rng([seed, 1_000_003 + index])
    h, w = (int(v) for v in rng.integers(256, 641, 2))
    maps = {"gt": np.zeros((h, w), np.int64), "pred": np.zeros((h, w), np.int64)}
    labels: dict[str, list[int]] = {"gt": [], "pred": []}
    num_bands = int(rng.integers(2, 5))
    stuff = rng.choice(np.arange(NUM_THINGS, NUM_THINGS + NUM_STUFF), num_bands, replace=False)
    cuts = np.sort(rng.integers(1, h, num_bands - 1))
    shift = rng.integers(-8, 9, num_bands - 1)
    for side, edges in (("gt", cuts), ("pred", np.clip(cuts + shift, 1, h - 1))):
        bounds = [0, *edges.tolist(), h]
        for k in range(num_bands):
            labels[side].append(int(stuff[k]))
            maps[side][bounds[k] : bounds[k + 1]] = len(labels[side])
    for _ in range(int(rng.integers(4, 16))):
        box = _random_box(rng, h, w)
        label = int(rng.integers(0, NUM_THINGS))
        x0, y0, x1, y1 = box
        labels["gt"].append(label)
        maps["gt"][y0:y1, x0:x1][_ellipse(y1 - y0, x1 - x0)] = len(labels["gt"])
        if rng.random() < 0.1:
            continue  # missed
        x0, y0, x1, y1 = _jitter(rng, box, h, w, 0.08)
        labels["pred"].append(label if rng.random() < 0.9 else int(rng.integers(0, NUM_THINGS)))
        maps["pred"][y0:y1, x0:x1][_ellipse(y1 - y0, x1 - x0)] = len(labels["pred"])
    for _ in range(int(rng.integers(0, 4))):  # false positives
        x0, y0, x1, y1 = _random_box(rng, h, w)
        labels["pred"].append(int(rng.integers(0, NUM_THINGS)))
        maps["pred"][y0:y1, x0:x1][_ellipse(y1 - y0, x1 - x0)] = len(labels["pred"])
    vy, vx = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
    maps["gt"][vy : vy + 20, vx : vx + int(rng.integers(20, 80))] = 0  # void
    out = {}
    for side in ("gt", "pred"):
        present = np.unique(maps[side])
        present = present[present > 0]
        out[f"{side}_map"] = maps[side]
        out[f"{side}_ids"] = present
        out[f"{side}_labels"] = np.asarray(labels[side], np.int64)[present - 1]
    return out


def run_pq_ours(args) -> dict:
    from lightning_seg.metrics.panoptic import PanopticQualityMetric
    from lightning_seg.structures.targets import PanopticTargets

    metric = PanopticQualityMetric(
        things=list(range(NUM_THINGS)), stuff=list(range(NUM_THINGS, NUM_THINGS + NUM_STUFF))
    )
    clock = _Clock()
    for i in range(args.pq_images):
        img = make_panoptic_image(args.seed, i)
        segs = {}
        for side in ("gt", "pred"):
            labels = torch.from_numpy(img[f"{side}_labels"])
            segs[side] = PanopticTargets(
                segment_map=torch.from_numpy(img[f"{side}_map"]),
                ids=torch.from_numpy(img[f"{side}_ids"]),
                labels=labels,
                isthing=labels < NUM_THINGS,
                iscrowd=torch.zeros_like(labels, dtype=torch.bool),
            )
        with clock:
            metric.update([segs["pred"]], [segs["gt"]])
    with clock:
        out = metric.compute()
    return clock.result([float(out["pq"])])


def run_pq_torchmetrics(args) -> dict:
    from torchmetrics.detection import PanopticQuality

    void = NUM_THINGS + NUM_STUFF  # not a known category: void for torchmetrics
    metric = PanopticQuality(
        things=set(range(NUM_THINGS)), stuffs=set(range(NUM_THINGS, NUM_THINGS + NUM_STUFF))
    )
    clock = _Clock()
    for i in range(args.pq_images):
        img = make_panoptic_image(args.seed, i)
        pair = {}
        for side in ("gt", "pred"):
            lut = np.full(img[f"{side}_map"].max() + 1, void, np.int64)
            lut[img[f"{side}_ids"]] = img[f"{side}_labels"]
            seg = img[f"{side}_map"]
            pair[side] = torch.from_numpy(np.stack([lut[seg], seg], axis=-1))[None]  # [1, H, W, 2]
        with clock:
            metric.update(pair["pred"], pair["gt"])
    with clock:
        pq = metric.compute()
    return clock.result([float(pq)])


WORKERS = {
    "ours": run_ours,
    "pycocotools": run_pycocotools,
    "pq_ours": lambda args, _: run_pq_ours(args),
    "pq_torchmetrics": lambda args, _: run_pq_torchmetrics(args),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _worker_main(args) -> None:
    # Both sides load the same modules first, so that the fixed import footprint (~1 GB, mostly
    # torch and torchmetrics) is the same and the peak RSS difference is the evaluation's.
    import faster_coco_eval  # noqa: F401
    import pycocotools.cocoeval  # noqa: F401

    import lightning_seg.metrics.coco  # noqa: F401
    import lightning_seg.structures.targets  # noqa: F401

    torch.manual_seed(0)
    base = _peak_rss_mb()
    result = WORKERS[args.worker](args, args.iou_type)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["import_rss_mb"] = base
    print(json.dumps(result))


def _spawn(args, side: str, iou_type: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--iou-type", iou_type]
    cmd += ["--num-images", str(args.num_images), "--num-classes", str(args.num_classes)]
    cmd += ["--seed", str(args.seed), "--pq-images", str(args.pq_images)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {side}/{iou_type} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{side:>12} {iou_type:<5} {result['time_s']:8.2f} s wall {result['cpu_s']:8.2f} s cpu "
        f"peak RSS {result['peak_rss_mb']:8.1f} MiB",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pq-images", type=int, default=200)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--iou-type", choices=["bbox", "segm", "pq"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args)
        return
    summary: dict = {"num_images": args.num_images, "num_classes": args.num_classes}
    for iou_type in ("bbox", "segm"):
        ours = _spawn(args, "ours", iou_type)
        ref = _spawn(args, "pycocotools", iou_type)
        summary[f"{iou_type}_time_s"] = round(ours["time_s"], 3)
        summary[f"{iou_type}_pycocotools_time_s"] = round(ref["time_s"], 3)
        summary[f"{iou_type}_time_ratio"] = round(ours["time_s"] / ref["time_s"], 4)
        summary[f"{iou_type}_cpu_time_ratio"] = round(ours["cpu_s"] / ref["cpu_s"], 4)
        summary[f"{iou_type}_peak_rss_mb"] = round(ours["peak_rss_mb"], 1)
        summary[f"{iou_type}_pycocotools_peak_rss_mb"] = round(ref["peak_rss_mb"], 1)
        summary[f"{iou_type}_peak_rss_ratio"] = round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 4)
        growth = [r["peak_rss_mb"] - r["import_rss_mb"] for r in (ours, ref)]
        summary[f"{iou_type}_peak_rss_growth_mb"] = round(growth[0], 1)
        summary[f"{iou_type}_pycocotools_peak_rss_growth_mb"] = round(growth[1], 1)
        summary[f"{iou_type}_AP"] = ours["stats"][0]
        diff = np.abs(np.subtract(ours["stats"], ref["stats"]))
        summary[f"{iou_type}_max_stat_diff"] = float(diff.max())
    ours = _spawn(args, "pq_ours", "pq")
    ref = _spawn(args, "pq_torchmetrics", "pq")
    summary["pq_images"] = args.pq_images
    summary["pq_time_s"] = round(ours["time_s"], 3)
    summary["pq_torchmetrics_time_s"] = round(ref["time_s"], 3)
    summary["pq_time_ratio"] = round(ours["time_s"] / ref["time_s"], 4)
    summary["pq_cpu_time_ratio"] = round(ours["cpu_s"] / ref["cpu_s"], 4)
    summary["pq"] = ours["stats"][0]
    summary["pq_torchmetrics"] = ref["stats"][0]
    summary["pq_abs_diff"] = abs(ours["stats"][0] - ref["stats"][0])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
