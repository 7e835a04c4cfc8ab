"""COCO ground-truth and results files: loading, checking and evaluating them.

Both files are checked before anything is evaluated: a bad record raises ``DataError`` naming
the file, the record and the fix (never a silently wrong number). ``evaluate_coco_files`` is
what ``lseg-eval coco`` runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pycocotools.mask as mask_utils

from lightning_seg.data.io import DataError
from lightning_seg.metrics.coco_eval import (
    COCO_PERSON_SIGMAS,
    IOU_TYPES,
    MASK_IOU_TYPES,
    accumulate,
    gc_paused,
)
from lightning_seg.metrics.rle import rle_areas, validate_rles


def _load_json(path: str, what: str):
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: {what} file not found.")
    try:
        return orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DataError(
            f"{path}: {what} file is not valid JSON ({exc}). Re-export the file."
        ) from exc


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_box(box) -> bool:
    """A COCO ``[x, y, w, h]`` of finite numbers with ``w, h >= 0``."""
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return False
    return box[2] >= 0 and box[3] >= 0


def _is_keypoints(kpts, num_kpts: int) -> bool:
    return isinstance(kpts, list) and len(kpts) == 3 * num_kpts and all(map(_is_number, kpts))


def _raise_collected(path: str, what: str, errors: list[str], fix: str) -> None:
    if errors:
        shown = "\n  ".join(errors[:5])
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise DataError(f"{path}: {len(errors)} bad {what}:\n  {shown}{more}\n{fix}")


def _check_segmentation(seg, h: int, w: int) -> str | None:
    """Reason why a COCO segmentation (polygons or RLE) is unusable, None when fine."""
    if isinstance(seg, list):
        if not seg:
            return "'segmentation' is an empty polygon list"
        for poly in seg:
            valid = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            if not valid or not all(map(_is_number, poly)):
                return "each polygon must be a flat list of >= 3 finite (x, y) pairs"
        return None
    if isinstance(seg, dict):
        if list(seg.get("size", [])) != [h, w]:
            return f"RLE 'size' {seg.get('size')} differs from the image's [height, width] {[h, w]}"
        return None  # the runs are checked in one batch by validate_rles
    return f"'segmentation' must be polygons or an RLE dict, got {type(seg).__name__}"


def _rle_errors(items: list[tuple[int, dict]], label: str) -> list[str]:
    bad = validate_rles([rle for _, rle in items])
    return [f"{label} {items[i][0]}: {reason}" for i, reason in bad]


def _load_gt(gt_json: str, iou_type: str, num_kpts: int) -> dict:
    """Load and check a COCO ground-truth file; annotation ids are renumbered 1..N."""
    gt = _load_json(gt_json, "ground-truth")
    keys = ("images", "annotations", "categories")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in keys):
        raise DataError(
            f"{gt_json}: a COCO ground-truth file is an object with 'images', 'annotations' and "
            f"'categories' lists."
        )
    errors: list[str] = []
    sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            errors.append(f"image record {i}: needs an integer 'id'")
        elif not all(_is_int(img.get(k)) and img[k] > 0 for k in ("height", "width")):
            errors.append(f"image record {i} (id {img['id']}): needs positive integer height/width")
        else:
            sizes[img["id"]] = (img["height"], img["width"])
    cats = {c.get("id") for c in gt["categories"] if isinstance(c, dict)}
    rles: list[tuple[int, dict]] = []
    anns = []
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict):
            errors.append(f"annotation record {i}: not an object")
            continue
        where = f"annotation record {i} (id {ann.get('id')}, image_id {ann.get('image_id')})"
        if ann.get("image_id") not in sizes:
            errors.append(f"{where}: image_id is not in 'images'")
            continue
        if ann.get("category_id") not in cats:
            errors.append(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
            continue
        bbox = ann.get("bbox")
        if not _is_box(bbox):
            errors.append(f"{where}: 'bbox' must be [x, y, w, h] finite numbers with w, h >= 0")
            continue
        if not _is_number(ann.get("area")):
            errors.append(f"{where}: needs a finite 'area'")
            continue
        ann = dict(ann, id=len(anns) + 1, iscrowd=int(bool(ann.get("iscrowd", 0))))
        if iou_type in MASK_IOU_TYPES:
            h, w = sizes[ann["image_id"]]
            reason = _check_segmentation(ann.get("segmentation"), h, w)
            if reason:
                errors.append(f"{where}: {reason}")
                continue
            if isinstance(ann["segmentation"], dict):
                rles.append((i, ann["segmentation"]))
        if iou_type == "keypoints":
            kpts = ann.get("keypoints")
            if not _is_keypoints(kpts, num_kpts):
                errors.append(f"{where}: 'keypoints' must be {3 * num_kpts} numbers (x, y, v each)")
                continue
            ann["num_keypoints"] = sum(1 for v in kpts[2::3] if v > 0)
        anns.append(ann)
    errors += _rle_errors(rles, "annotation record")
    fix = "Fix or remove these records in the ground-truth file."
    _raise_collected(gt_json, "ground-truth records", errors, fix)
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}


def _keypoint_extent(kpts: Sequence[float]) -> tuple[float, list[float]]:
    """Area and bbox of a keypoint result without a box (pycocotools ``loadRes``)."""
    x, y = np.asarray(kpts[0::3]), np.asarray(kpts[1::3])
    x0, x1, y0, y1 = np.min(x), np.max(x), np.min(y), np.max(y)
    return (x1 - x0) * (y1 - y0), [x0, y0, x1 - x0, y1 - y0]


def _load_results(dt_json: str, gt: dict, iou_type: str, num_kpts: int) -> list[dict]:
    """Load and check a COCO results file; returns detection dicts as ``loadRes`` builds them."""
    records = _load_json(dt_json, "results")
    if not isinstance(records, list):
        raise DataError(
            f"{dt_json}: a COCO results file is a JSON list of detections "
            f"({{'image_id', 'category_id', 'score', 'bbox' | 'segmentation' | 'keypoints'}}), "
            f"got {type(records).__name__}."
        )
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    errors: list[str] = []
    dts: list[dict] = []
    rles: list[tuple[int, dict]] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            errors.append(f"record {i}: not an object")
            continue
        image_id, cat, score = rec.get("image_id"), rec.get("category_id"), rec.get("score")
        where = f"record {i} (image_id {image_id!r}, category_id {cat!r})"
        if image_id not in sizes:
            errors.append(f"{where}: image_id is not in the ground truth")
            continue
        if cat not in cats:
            errors.append(f"{where}: category_id is not in the ground truth's categories")
            continue
        if not _is_number(score):
            errors.append(f"{where}: 'score' must be a finite number, got {score!r}")
            continue
        dt = {"id": len(dts) + 1, "image_id": image_id, "category_id": cat, "score": score}
        dt["iscrowd"] = 0
        bbox = rec.get("bbox")
        has_box = isinstance(bbox, list) and bbox != []
        if has_box and not _is_box(bbox):
            errors.append(f"{where}: 'bbox' must be [x, y, w, h] finite numbers with w, h >= 0")
            continue
        seg = rec.get("segmentation")
        if iou_type in MASK_IOU_TYPES or (iou_type == "bbox" and not has_box):
            if seg is None:
                errors.append(f"{where}: needs 'segmentation' (RLE) for {iou_type} evaluation")
                continue
            h, w = sizes[image_id]
            reason = _check_segmentation(seg, h, w)
            if reason:
                errors.append(f"{where}: {reason}")
                continue
            if isinstance(seg, list):  # polygons: rasterise as COCO.annToRLE does
                seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            else:
                rles.append((i, seg))
            dt["segmentation"] = seg
        if iou_type == "bbox":
            dt["bbox"] = bbox if has_box else None  # filled from the mask below
        elif iou_type == "keypoints":
            kpts = rec.get("keypoints")
            if not _is_keypoints(kpts, num_kpts):
                n3 = 3 * num_kpts
                errors.append(f"{where}: 'keypoints' must be {n3} numbers (x, y, score each)")
                continue
            dt["keypoints"] = kpts
            if has_box:
                dt["bbox"], dt["area"] = bbox, bbox[2] * bbox[3]
            else:
                dt["area"], dt["bbox"] = _keypoint_extent(kpts)
        dts.append(dt)
    errors += _rle_errors(rles, "record")
    fix = "Fix or remove these records in the results file."
    _raise_collected(dt_json, "results records", errors, fix)
    if iou_type in MASK_IOU_TYPES or iou_type == "bbox":
        with_mask = [d for d in dts if "segmentation" in d]
        for d in with_mask:
            seg = d["segmentation"]
            if isinstance(seg["counts"], list):  # uncompressed RLE: compress (COCO.annToRLE)
                d["segmentation"] = mask_utils.frPyObjects(seg, *seg["size"])
        if with_mask:
            segs = [d["segmentation"] for d in with_mask]
            areas = rle_areas(segs)
            boxes = mask_utils.toBbox(segs)
            for d, a, b in zip(with_mask, areas.tolist(), boxes.tolist()):
                if iou_type == "bbox":
                    del d["segmentation"]
                    d["area"] = a
                    d["bbox"] = b
                else:
                    d["area"] = a
    if iou_type == "bbox":
        for d in dts:
            if "area" not in d:
                d["area"] = d["bbox"][2] * d["bbox"][3]
    return dts


def evaluate_coco_files(
    gt_json: str,
    dt_json: str,
    iou_type: str,
    kpt_sigmas: list[float] | None = None,
    backend: str = "faster_coco_eval",
    max_dets=(1, 10, 100),
) -> dict[str, float]:
    """Evaluate a COCO results file against a COCO ground-truth file.

    Both files are checked first: a results record whose image or category is not in the
    ground truth, a malformed RLE / box / keypoint list, or invalid JSON raises ``DataError``
    naming the file and the records (never a silently wrong number). Keypoints of both files
    are in COCO's pixel-index convention (what ``predictions_to_coco_results`` writes), so
    they are compared as they are.

    Args:
        gt_json: COCO dataset JSON (``images``, ``annotations``, ``categories``).
        dt_json: COCO results JSON (a list of detections).
        iou_type: "bbox", "segm", "boundary" or "keypoints".
        kpt_sigmas: OKS sigma per keypoint (COCO's 17 person sigmas when None).
        backend: "faster_coco_eval" or "pycocotools".
        max_dets: detections per image for box/mask AR.

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (keypoints:
        ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl``), as ``COCOeval.stats``
        (-1 where undefined). Mask results are evaluated with their mask area (see module doc).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    num_kpts = len(kpt_sigmas) if kpt_sigmas is not None else len(COCO_PERSON_SIGMAS)
    with gc_paused():
        gt = _load_gt(gt_json, iou_type, num_kpts)
        dts = _load_results(dt_json, gt, iou_type, num_kpts)
        result = accumulate(
            gt, dts, iou_type, backend=backend, max_dets=max_dets, kpt_sigmas=kpt_sigmas
        )
    return result.stats(iou_type)
