"""COCO records from predictions and targets: results files and the evaluator's datasets.

``predictions_to_coco_results`` writes the JSON list of a COCO results file;
``annotation_arrays`` and ``state_records`` build the ground-truth annotations and detections
``COCOEvaluator`` evaluates from its gathered states. Keypoints are written in COCO's
pixel-index convention (``keypoints_to_coco``; see ``metrics/coco.py`` for the conventions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_seg.constants import COCO_KEYPOINT_OFFSET
from lightning_seg.metrics.coco_eval import MASK_IOU_TYPES
from lightning_seg.metrics.rle import encode_masks
from lightning_seg.structures import InstancePredictions


def xywh(boxes: Tensor) -> list[list[float]]:
    """``Tensor[N, 4]`` x1y1x2y2 -> N ``[x, y, w, h]`` lists (float32 arithmetic, as stored)."""
    boxes = boxes.detach().to("cpu", torch.float32)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()  # [N, 4]


def keypoints_to_coco(keypoints: np.ndarray | Tensor, labelled_only: bool) -> np.ndarray:
    """Continuous-frame keypoints -> COCO's pixel-index convention (``x - 0.5, y - 0.5``).

    The inverse of what the COCO reader does at load (detectron2 adds 0.5 when reading COCO
    and subtracts it in ``instances_to_coco_json``). Float32 arithmetic, as the values are
    stored.

    Args:
        keypoints: ``[N, K, 3]`` ``(x, y, visibility)`` or ``(x, y, score)``.
        labelled_only: shift only keypoints with visibility > 0 (ground truth: unlabelled ones
            stay ``(0, 0, 0)`` as COCO writes them); False shifts every keypoint (predictions).

    Returns:
        ``float32[N, K, 3]``, a copy.
    """
    if isinstance(keypoints, Tensor):
        keypoints = keypoints.detach().to("cpu", torch.float32).numpy()
    out = np.array(keypoints, dtype=np.float32)  # [N, K, 3], a copy
    if labelled_only:
        out[..., :2][out[..., 2] > 0] -= COCO_KEYPOINT_OFFSET
    else:
        out[..., :2] -= COCO_KEYPOINT_OFFSET
    return out


def category_map(category_ids: Sequence[int] | None, num: int) -> list[int]:
    return list(category_ids) if category_ids is not None else list(range(1, num + 1))


def predictions_to_coco_results(
    preds: Sequence[InstancePredictions],
    image_ids: Sequence[int],
    category_ids: Sequence[int] | None = None,
    mask_thresh: float = 0.5,
) -> list[dict]:
    """COCO results records (the JSON list a results file holds) for a list of images.

    Args:
        preds: predictions per image, in the pixel frame of the dataset's images.
        image_ids: the dataset's image id of each prediction.
        category_ids: dataset category id of each contiguous class index (default index + 1).
        mask_thresh: threshold for float masks.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``,
        plus ``segmentation`` (RLE, ``counts`` as str) with masks and ``keypoints``
        (flat x, y, score) with keypoints. Boxes are written as given; keypoints in COCO's
        pixel-index convention, ``x - 0.5, y - 0.5`` (``keypoints_to_coco``), so that the file
        matches COCO ground truth.
    """
    if len(preds) != len(image_ids):
        raise ValueError(f"got {len(preds)} predictions for {len(image_ids)} image ids")
    records: list[dict] = []
    for pred, image_id in zip(preds, image_ids):
        n = len(pred)
        if n == 0:
            continue
        labels = pred.labels.tolist()
        limit = len(category_ids) if category_ids is not None else math.inf
        if min(labels) < 0 or max(labels) >= limit:
            raise ValueError(
                f"image {image_id}: labels must be contiguous class indices in [0, {limit}), "
                f"got {min(labels)}..{max(labels)}"
            )
        cat_map = category_map(category_ids, max(labels) + 1)
        cats = [cat_map[i] for i in labels]
        boxes = xywh(pred.boxes)
        scores = pred.scores.tolist()
        rles = encode_masks(pred.masks, mask_thresh) if pred.masks is not None else None
        kpts = None
        if pred.keypoints is not None:
            kpts = keypoints_to_coco(pred.keypoints, labelled_only=False).reshape(n, -1).tolist()
        for i in range(n):
            rec = {"image_id": int(image_id), "category_id": int(cats[i]), "bbox": boxes[i]}
            rec["score"] = scores[i]
            if rles is not None:
                rle = rles[i]
                rec["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            if kpts is not None:
                rec["keypoints"] = kpts[i]
            records.append(rec)
    return records


def annotation_arrays(
    data: dict[str, np.ndarray], category_ids: Sequence[int] | None
) -> dict[str, np.ndarray]:
    """Per-annotation arrays derived from the evaluator's states: image id, category id, RLE
    spans (added to ``data``, which is returned).

    Args:
        data: every state as one numpy array (``coco_state.unique_images``).
        category_ids: dataset category id of each contiguous class index (default index + 1).
    """
    max_label = max(data["gt_labels"].max(initial=-1), data["dt_labels"].max(initial=-1))
    cat_map = np.asarray(category_map(category_ids, int(max_label) + 1), dtype=np.int64)
    for prefix in ("gt", "dt"):
        counts = data[f"{prefix}_counts"]
        data[f"{prefix}_image"] = np.repeat(data["img_ids"], counts)
        data[f"{prefix}_category"] = cat_map[data[f"{prefix}_labels"]]
        sizes = np.repeat(data["img_sizes"][:, ::-1], counts, axis=0)  # [N, 2] (W, H)
        data[f"{prefix}_rle_size"] = sizes
        data[f"{prefix}_rle_offset"] = np.cumsum(np.r_[0, data[f"{prefix}_rle_len"]])
    return data


def state_records(
    data: dict[str, np.ndarray], prefix: str, sel: np.ndarray, iou_type: str
) -> list[dict]:
    """COCO ground-truth annotations (``prefix="gt"``) or detections (``"dt"``) of the
    annotations ``sel`` (indices), for one IoU type.

    Detections get ``area`` as ``COCO.loadRes`` sets it: the mask area for mask types,
    the box area otherwise. Ids are index + 1 (0 would read as "unmatched" in COCOeval).
    """
    is_gt = prefix == "gt"
    boxes = xywh(torch.from_numpy(data[f"{prefix}_boxes"][sel]))
    columns = [
        (sel + 1).tolist(),
        data[f"{prefix}_image"][sel].tolist(),
        data[f"{prefix}_category"][sel].tolist(),
    ]
    records = [
        {"id": i, "image_id": image_id, "category_id": cat} for i, image_id, cat in zip(*columns)
    ]
    if is_gt:
        areas, crowd = data["gt_area"][sel].tolist(), data["gt_crowd"][sel].tolist()
        for rec, box, area, is_crowd in zip(records, boxes, areas, crowd):
            rec.update(bbox=box, area=area, iscrowd=int(is_crowd))
    else:
        for rec, score in zip(records, data["dt_scores"][sel].tolist()):
            rec.update(score=score, iscrowd=0)
    if iou_type in MASK_IOU_TYPES:
        buf = data[f"{prefix}_rle"].tobytes()
        starts = data[f"{prefix}_rle_offset"][sel].tolist()
        stops = data[f"{prefix}_rle_offset"][sel + 1].tolist()
        sizes = data[f"{prefix}_rle_size"][sel].tolist()
        for rec, a, b, size in zip(records, starts, stops, sizes):
            rec["segmentation"] = {"size": size, "counts": buf[a:b]}
        if not is_gt:
            for rec, area in zip(records, data["dt_area"][sel].tolist()):
                rec["area"] = area
    elif not is_gt:
        for rec, box in zip(records, boxes):
            rec.update(bbox=box, area=box[2] * box[3])
    if iou_type == "keypoints":
        # Targets and predictions are both in the continuous frame. OKS only sees
        # differences of keypoints, except where a ground truth has no labelled keypoint:
        # then COCOeval measures the detection's keypoints against the ground-truth box,
        # and COCO files pair pixel-index keypoints with continuous boxes. So both sides
        # are written as COCO holds them (ground truth labelled keypoints and every
        # predicted keypoint - 0.5, boxes unchanged): the numbers are those of pycocotools
        # on the dataset's JSON and the results file of ``predictions_to_coco_results``.
        flat = data[f"{prefix}_kpts"][sel]  # [n, K*3]
        coco = keypoints_to_coco(flat.reshape(len(sel), flat.shape[1] // 3, 3), is_gt)
        for rec, kpts in zip(records, coco.reshape(len(sel), -1).tolist()):
            rec["keypoints"] = kpts
            if is_gt:
                rec["num_keypoints"] = sum(1 for v in kpts[2::3] if v > 0)
    return records
