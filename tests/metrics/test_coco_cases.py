"""Random COCO-style cases and an independent pycocotools reference, for the COCO metric tests.

Holds no tests: imported by the other ``test_coco*.py`` files (named ``test_coco_*`` to stay
in the COCO metric's test files).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lightning_seg.structures import InstancePredictions, InstanceTargets


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight x1y1x2y2 boxes of ``Tensor[N, H, W]`` bool masks (zeros for empty masks)."""
    boxes = torch.zeros(masks.shape[0], 4)
    for j in range(masks.shape[0]):
        ys, xs = torch.nonzero(masks[j], as_tuple=True)
        if len(ys):
            boxes[j] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def make_case(
    seed: int = 0,
    num_images: int = 8,
    num_classes: int = 3,
    num_kpts: int = 0,
    max_inst: int = 6,
) -> tuple[list[InstancePredictions], list[InstanceTargets]]:
    """Images of odd unequal sizes with crowd regions, one image without ground truth (index 1)
    and one without predictions (index 2); float predicted masks, tied scores."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(num_images):
        h, w = int(rng.integers(21, 61)), int(rng.integers(21, 61))
        n = 0 if i == 1 else int(rng.integers(1, max_inst + 1))
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for j in range(n):
            y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
            y1, x1 = rng.integers(y0 + 5, h + 4), rng.integers(x0 + 5, w + 4)
            masks[j, y0:y1, x0:x1] = True
            if rng.random() < 0.5:  # a notch, so that masks are not boxes
                dy, dx = (y1 - y0) // 3, (x1 - x0) // 2
                masks[j, y0 + dy : y1 - dy, x0 : x0 + dx] = False
        boxes = mask_boxes(masks)
        labels = torch.from_numpy(rng.integers(0, num_classes, n))
        crowd = torch.from_numpy(rng.random(n) < 0.15)
        kpts = None
        if num_kpts:
            b = boxes.numpy()
            kx = rng.uniform(b[:, 0:1], b[:, 2:3], (n, num_kpts))
            ky = rng.uniform(b[:, 1:2], b[:, 3:4], (n, num_kpts))
            kv = rng.integers(0, 3, (n, num_kpts))
            if n:
                kv[0] = 0  # an instance without labelled keypoints (ignored by OKS AP)
            kpts = torch.from_numpy(np.stack([kx, ky, kv], -1)).float()
        targets.append(
            InstanceTargets(boxes, labels, (h, w), masks=masks, iscrowd=crowd, keypoints=kpts)
        )

        m = 0 if i == 2 else int(rng.integers(1, 2 * max_inst))
        prob = torch.zeros(m, h, w)
        src = rng.integers(0, max(n, 1), m)
        for j in range(m):
            if n and rng.random() < 0.75:  # a shifted copy of a ground-truth mask
                dy, dx = rng.integers(-1, 2, 2)
                shifted = torch.roll(masks[src[j]].float(), (int(dy), int(dx)), (0, 1))
                inside, outside = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, 0.49))
                prob[j] = shifted * inside + (1 - shifted) * outside
            else:
                y0, x0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
                prob[j, y0 : rng.integers(y0 + 2, h + 1), x0 : rng.integers(x0 + 2, w + 1)] = 0.9
        pboxes = mask_boxes(prob >= 0.5) + torch.from_numpy(rng.normal(0, 0.7, (m, 4))).float()
        same = labels.numpy()[src] if n else np.zeros(m, np.int64)
        other = rng.integers(0, num_classes, m)
        plabels = torch.from_numpy(np.where(rng.random(m) < 0.85, same, other))
        scores = torch.from_numpy(np.round(rng.random(m), 1)).float()  # rounded: ties on purpose
        pk = None
        if num_kpts:
            base = kpts[src] if n else torch.zeros(m, num_kpts, 3)
            pk = base.clone()
            pk[..., :2] += torch.from_numpy(rng.normal(0, 0.6, (m, num_kpts, 2))).float()
            pk[..., 2] = torch.from_numpy(rng.random((m, num_kpts))).float()
        preds.append(
            InstancePredictions(pboxes, scores, plabels.long(), (h, w), masks=prob, keypoints=pk)
        )
    return preds, targets


def reference_coco(
    preds: list[InstancePredictions],
    targets: list[InstanceTargets],
    image_ids: list[int],
    category_ids: list[int] | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """The case as a COCO ground-truth dict and results lists (per IoU type), written the
    plain way (standard-orientation RLE, no ``bbox`` in mask results; keypoints as COCO pixel
    indices: the continuous coordinates - 0.5, ground truth for labelled keypoints only)."""
    cat = (lambda i: category_ids[i]) if category_ids is not None else (lambda i: i + 1)
    images, anns = [], []
    results: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
    for p, t, image_id in zip(preds, targets, image_ids):
        h, w = t.image_size
        images.append({"id": image_id, "height": h, "width": w})
        for j in range(len(t)):
            m = np.asfortranarray(t.masks[j].numpy().astype(np.uint8))
            x1, y1, x2, y2 = t.boxes[j].tolist()
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat(int(t.labels[j]))}
            ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            ann["area"] = float(m.sum())
            ann["iscrowd"] = int(t.iscrowd[j])
            ann["segmentation"] = mask_utils.encode(m)
            if t.keypoints is not None:
                k = t.keypoints[j].clone()
                k[k[:, 2] > 0, :2] -= 0.5  # COCO pixel indices: labelled keypoints - 0.5
                ann["keypoints"] = k.flatten().tolist()
                ann["num_keypoints"] = int((k[:, 2] > 0).sum())
            anns.append(ann)
        for j in range(len(p)):
            x1, y1, x2, y2 = p.boxes[j].tolist()
            base = {"image_id": image_id, "category_id": cat(int(p.labels[j]))}
            base["score"] = float(p.scores[j])
            box = [x1, y1, x2 - x1, y2 - y1]
            results["bbox"].append(dict(base, bbox=box))
            if p.masks is not None:
                m = np.asfortranarray((p.masks[j] >= 0.5).numpy().astype(np.uint8))
                rle = mask_utils.encode(m)
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                results["segm"].append(dict(base, segmentation=segmentation))
            if p.keypoints is not None:
                kpts = (p.keypoints[j] - torch.tensor([0.5, 0.5, 0.0])).flatten().tolist()
                results["keypoints"].append(dict(base, bbox=box, keypoints=kpts))
    used = {a["category_id"] for a in anns} | {r["category_id"] for r in results["bbox"]}
    cats = category_ids if category_ids is not None else sorted(used)
    categories = [{"id": c, "name": str(c)} for c in cats]
    gt = {"images": images, "annotations": anns, "categories": categories}
    return gt, results


def pycocotools_stats(
    gt: dict, results: list[dict], iou_type: str, kpt_sigmas=None, max_dets=None
) -> np.ndarray:
    """``COCOeval.stats`` of plain pycocotools."""
    import copy

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if kpt_sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(kpt_sigmas)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)
