"""Top-down keypoint data: one record per instance (person or face), read from MPII's JSON as
mmpose distributes it, COCO-style keypoint JSON (COCO persons, the face-alignment sets, the
synthetic shapes world) and person-detection results files.

``TopDownKeypointDataset[i]`` returns the whole image with one instance as
``Sample.keypoints`` (``KeypointTargets`` with N = 1: keypoints, the box to crop around, the
metric's normaliser, the area, the record id, the detector's score); the crop is a data
transform (``lightning_seg.data.topdown.TopDownAffine``), as in mmpose.

Coordinates are in the continuous pixel frame (pixel ``(i, j)`` centred at ``(j + 0.5,
i + 0.5)``): COCO-style files hold 0-based pixel indices (+ 0.5 at load, as
``formats/coco.py``), MPII's JSON 1-based Matlab pixel indices (- 0.5 at load, joints and
centres alike).

Bad input, decided per case (``DataError`` messages name the file, the record and the fix;
skips and repairs are counted in ``dataset.skips`` and logged):

==============================================  ==============================================
case                                            handling
==============================================  ==============================================
file missing / malformed / not the format       index time: ``DataError``
record with the wrong number of keypoints       index time: ``DataError`` (the whole file must
(or joints / joints_vis of different lengths)   agree with the dataset's keypoint count)
keypoint coordinates that are not numbers       index time: ``DataError``
crowd annotation                                index time: skipped, counted
instance without a labelled keypoint            index time: skipped, counted (training and
                                                ground-truth-box evaluation have nothing to
                                                learn or score)
zero-size or missing box (MPII: scale <= 0)     index time: skipped, counted
labelled keypoint outside the image             index time (item time for MPII, whose JSON has
                                                no image sizes): visibility set to 0, counted
                                                as repaired
detection below ``score_thresh`` or of another  index time: skipped, counted
category; detection for an image not in the
annotation file
head-box file with another record count         index time: ``DataError``
image file missing / corrupt / of another size  item time: ``DataError``
==============================================  ==============================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.constants import (
    MPII_KEYPOINT_NAMES,
    MPII_KEYPOINT_SIGMAS,
    MPII_SKELETON,
)
from lightning_seg.data.formats.coco import CocoIndex, coco_dataset_info, count_records
from lightning_seg.data.formats.common import image_tensor, load_rgb, note_item
from lightning_seg.data.formats.jsonio import load_json_chunked
from lightning_seg.data.io import DataError, check_paths_under_root
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import DatasetInfo, KeypointTargets, Sample, SampleMeta

#: MPII boxes: a person's ``scale`` is its height / 200 px (``pixel_std``).
PIXEL_STD = 200.0
OUTSIDE_IMAGE = "labelled keypoint outside the image set to unlabelled"


@dataclass
class TopDownRecords:
    """One row per instance (compact NumPy columns, nothing per record in Python).

    Attributes:
        source: the annotation file.
        image_ids: ``int64[N]`` the dataset's image id of each instance.
        file_names: ``str[N]`` image paths relative to the image folder.
        heights / widths: ``int64[N]`` image sizes from the file, -1 when it has none (MPII).
        keypoints: ``float32[N, K, 3]`` ``(x, y, v)``, continuous frame, ``(0, 0, 0)``
            unlabelled.
        boxes: ``float32[N, 4]`` x1y1x2y2 box to crop around (ground truth or detection).
        norm_size: ``float32[N]`` the metric's normaliser in pixels, NaN when none.
        areas: ``float32[N]`` object area (COCO ``area``; box area when absent).
        ids: ``int64[N]`` instance ids (COCO annotation ids; -1 for detections).
        scores: ``float32[N]`` detector scores, NaN for ground-truth boxes.
        skips: what was skipped or repaired.
    """

    source: Path
    image_ids: np.ndarray
    file_names: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    keypoints: np.ndarray
    boxes: np.ndarray
    norm_size: np.ndarray
    areas: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    skips: SkipReport

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_keypoints(self) -> int:
        return self.keypoints.shape[1]

    def select(self, keep: np.ndarray) -> TopDownRecords:
        """The records where ``keep`` (a bool mask or indices)."""
        cols = {k: v[keep] for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        return TopDownRecords(source=self.source, skips=self.skips, **cols)


def read_json_file(path: Path, what: str) -> object:
    """A whole JSON document of any top-level type; errors name the file and the position."""
    import orjson

    if not path.is_file():
        raise DataError(f"{path}: {what} not found.")
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}. The "
            f"file is truncated or not valid JSON; re-download or re-export it."
        ) from None


def _record_describer(path: Path, ids: np.ndarray, image_ids: np.ndarray):
    def describe(j: int) -> str:
        return f"annotation id={ids[j]} (image_id={image_ids[j]})"

    return describe


def outside_image(keypoints: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``bool[N, K]`` labelled keypoints outside their image ``[0, W) x [0, H)`` (sizes -1:
    unknown, never outside)."""
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    h = heights[:, None].astype(np.float64)
    w = widths[:, None].astype(np.float64)
    known = (h > 0) & (w > 0)
    out = (x < 0) | (y < 0) | (x >= w) | (y >= h)
    return (v > 0) & known & out


def _clear_outside(keypoints: np.ndarray, heights, widths, skips: SkipReport, describe) -> None:
    """Set labelled keypoints outside the image to ``(0, 0, 0)``, counted per instance."""
    bad = outside_image(keypoints, heights, widths)
    keypoints[bad] = 0.0
    count_records(skips, OUTSIDE_IMAGE, np.flatnonzero(bad.any(axis=1)), describe, fixed=True)


def _extra_fields(ann_file: Path, names: Sequence[str], chunk_bytes: int) -> dict[int, dict]:
    """``{annotation id: {name: value}}`` of extra annotation fields (``center``, ``scale``,
    ``box_size`` of mmpose's face files) that the COCO index does not keep."""
    found: dict[int, dict] = {}

    def consume(records: list) -> None:
        for rec in records:
            if isinstance(rec, dict) and type(rec.get("id")) is int:
                extra = {n: rec[n] for n in names if n in rec}
                if extra:
                    found[rec["id"]] = extra

    load_json_chunked(ann_file, "annotations", consume, chunk_bytes)
    return found


def _number_list(value, length: int) -> list[float] | None:
    if isinstance(value, (int, float)) and length == 1:
        return [float(value)]
    if isinstance(value, list) and len(value) == length and all(
        type(v) in (int, float) and math.isfinite(v) for v in value
    ):
        return [float(v) for v in value]
    return None


def coco_topdown_records(
    ann_file: str | os.PathLike,
    center_scale: bool = False,
    norm_keypoints: tuple[int, int] | None = None,
    norm_field: str | None = None,
    min_keypoints: int = 1,
    num_keypoints: int | None = None,
    chunk_bytes: int = 4 << 20,
) -> tuple[TopDownRecords, CocoIndex]:
    """Instances of a COCO-style keypoint file (COCO persons, mmpose's face files, the shapes
    world), one record each.

    Args:
        ann_file: the JSON file (``images``, ``annotations`` with ``keypoints`` and ``bbox``,
            ``categories`` naming the keypoints).
        center_scale: crop around mmpose's ``center`` and ``scale`` fields (a square of
            ``200 * scale`` pixels; 300-W, WFLW and AFLW files) instead of ``bbox``; a
            record without them falls back to its ``bbox``.
        norm_keypoints: the metric's normaliser is the distance of these two ground-truth
            keypoints (face inter-ocular distance); NaN when one is unlabelled.
        norm_field: the normaliser is this annotation field (AFLW's ``box_size``).
        min_keypoints: fewer labelled keypoints skip the instance (counted).
        num_keypoints: keypoints per instance when the categories do not name them (mmpose's
            face files); None: from the categories.
        chunk_bytes: JSON slice size while indexing.

    Returns:
        the records and the ``CocoIndex`` (images, categories) they come from.
    """
    path = Path(ann_file)
    index = CocoIndex.build(path, with_masks=False, with_keypoints=True, chunk_bytes=chunk_bytes,
                            num_keypoints=num_keypoints)
    skips = index.skips
    if index.ann_keypoints is None or index.ann_keypoints.shape[1] == 0:
        raise DataError(
            f"{path}: no category names keypoints ('categories': [{{'keypoints': [...]}}]); a "
            f"keypoint dataset needs them (mmpose's face files list placeholders such as "
            f"'kpt-0', or use the face DataModule, which knows the landmark count)."
        )
    n_img = index.num_images
    rows = np.repeat(np.arange(n_img), np.diff(index.image_ann_offsets))  # image row per ann
    ids = index.ann_ids.copy()
    image_ids = index.image_ids[rows]
    describe = _record_describer(path, ids, image_ids)
    keypoints = index.ann_keypoints.copy()
    heights = index.heights[rows].astype(np.int64)
    widths = index.widths[rows].astype(np.int64)
    keep = np.ones(len(ids), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        new = mask & keep
        count_records(skips, reason, np.flatnonzero(new), describe)
        keep[new] = False

    drop(index.ann_iscrowd, "crowd annotation (no single instance to crop)")
    _clear_outside(keypoints, heights, widths, skips, describe)
    labelled = (keypoints[..., 2] > 0).sum(axis=1)
    drop(labelled < min_keypoints, f"instance with fewer than {min_keypoints} labelled keypoint(s)")

    boxes = index.ann_boxes.astype(np.float32).copy()
    norm = np.full(len(ids), np.nan, dtype=np.float32)
    extra_names = (["center", "scale"] if center_scale else []) + ([norm_field] if norm_field else [])
    extras = _extra_fields(path, extra_names, chunk_bytes) if extra_names else {}
    if center_scale:
        for j in np.flatnonzero(keep):
            e = extras.get(int(ids[j]), {})
            center, scale = _number_list(e.get("center"), 2), _number_list(e.get("scale"), 1)
            if center is None or scale is None:
                continue
            side = PIXEL_STD * scale[0]
            # the files' centres are pixel indices like their keypoints: + 0.5
            cx, cy = center[0] + 0.5, center[1] + 0.5
            boxes[j] = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        drop((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]), "zero-size box (scale <= 0)")
    if norm_keypoints is not None:
        a, b = norm_keypoints
        k = keypoints.shape[1]
        if not (0 <= a < k and 0 <= b < k):
            raise DataError(f"{path}: normaliser keypoints {norm_keypoints} out of range for {k} keypoints")
        pa, pb = keypoints[:, a], keypoints[:, b]
        dist = np.hypot(pa[:, 0] - pb[:, 0], pa[:, 1] - pb[:, 1])
        norm = np.where((pa[:, 2] > 0) & (pb[:, 2] > 0), dist, np.nan).astype(np.float32)
    elif norm_field is not None:
        for j in np.flatnonzero(keep):
            value = _number_list(extras.get(int(ids[j]), {}).get(norm_field), 1)
            if value is None:
                raise DataError(
                    f"{path}: {describe(int(j))} has no number '{norm_field}', which this "
                    f"dataset's metric divides by; add it or use a normaliser from keypoints."
                )
            norm[j] = value[0]
    areas = index.ann_areas.astype(np.float32).copy()
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas = np.where(np.isfinite(areas), areas, box_area).astype(np.float32)
    records = TopDownRecords(
        source=path,
        image_ids=image_ids,
        file_names=index.file_names[rows],
        heights=heights,
        widths=widths,
        keypoints=keypoints.astype(np.float32),
        boxes=boxes,
        norm_size=norm,
        areas=areas,
        ids=ids,
        scores=np.full(len(ids), np.nan, dtype=np.float32),
        skips=skips,
    ).select(keep)
    skips.log_once()
    return records, index


def detection_records(
    det_file: str | os.PathLike,
    index: CocoIndex,
    score_thresh: float = 0.0,
    category_id: int | None = None,
) -> TopDownRecords:
    """Boxes of a person-detector results file, one record each (keypoints unlabelled).

    The standard COCO top-down protocol: predict keypoints in every detected box and score
    them with the detector's confidence (``lseg predict`` writes the results; ``lseg-eval coco
    --iou-type keypoints`` scores them against the annotation file).

    Args:
        det_file: COCO results JSON, a list of ``{"image_id", "bbox": [x, y, w, h], "score",
            "category_id"}`` (``{"annotations": [...]}`` is accepted too).
        index: the annotation file's index (images and their sizes).
        score_thresh: detections below it are skipped (counted).
        category_id: keep this category only; None: the category that names keypoints.
    """
    path = Path(det_file)
    skips = SkipReport(str(path))
    data = read_json_file(path, "detections file")
    dets = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(dets, list):
        raise DataError(f"{path}: expected a list of detections [{{image_id, bbox, score, category_id}}, ...].")
    if category_id is None:
        kp_cats = [c["id"] for c in index.categories if c.get("keypoints")]
        category_id = kp_cats[0] if kp_cats else None
    row_of = {int(i): r for r, i in enumerate(index.image_ids.tolist())}
    k = 0 if index.ann_keypoints is None else index.ann_keypoints.shape[1]
    rows, boxes, scores = [], [], []
    for j, d in enumerate(dets):
        where = f"detection [{j}]"
        if not isinstance(d, dict) or "image_id" not in d or "bbox" not in d or "score" not in d:
            raise DataError(f"{path}: {where} needs 'image_id', 'bbox' [x, y, w, h] and 'score'.")
        box = _number_list(d["bbox"], 4)
        score = _number_list(d["score"], 1)
        if box is None or score is None:
            raise DataError(f"{path}: {where} has bbox {d['bbox']!r:.60} / score {d['score']!r:.20}; numbers expected.")
        if category_id is not None and d.get("category_id", category_id) != category_id:
            skips.skip("detection of another category", where)
            continue
        if score[0] < score_thresh:
            skips.skip(f"detection below score_thresh={score_thresh}", where)
            continue
        if d["image_id"] not in row_of:
            skips.skip("detection for an image not in the annotation file", where)
            continue
        if box[2] <= 0 or box[3] <= 0:
            skips.skip("zero-size box", where)
            continue
        rows.append(row_of[d["image_id"]])
        boxes.append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        scores.append(score[0])
    n = len(rows)
    rows_a = np.asarray(rows, dtype=np.int64)
    boxes_a = np.asarray(boxes, dtype=np.float32).reshape(n, 4)
    skips.log_once()
    return TopDownRecords(
        source=path,
        image_ids=index.image_ids[rows_a],
        file_names=index.file_names[rows_a],
        heights=index.heights[rows_a].astype(np.int64),
        widths=index.widths[rows_a].astype(np.int64),
        keypoints=np.zeros((n, k, 3), dtype=np.float32),
        boxes=boxes_a,
        norm_size=np.full(n, np.nan, dtype=np.float32),
        areas=((boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])).astype(np.float32),
        ids=np.full(n, -1, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32).reshape(n),
        skips=skips,
    )


def mpii_info() -> DatasetInfo:
    """MPII's 16 joints, left/right pairs, limbs and (mmpose's) sigmas."""
    from lightning_seg.data.formats.coco import keypoint_flip_map

    names = list(MPII_KEYPOINT_NAMES)
    return DatasetInfo(
        class_names=["person"],
        category_ids=[1],
        keypoint_names=names,
        keypoint_flip_map=keypoint_flip_map(names),
        skeleton=list(MPII_SKELETON),
        keypoint_sigmas=list(MPII_KEYPOINT_SIGMAS),
    )


def read_head_sizes(headbox_file: str | os.PathLike, count: int, scale: float = 0.6) -> np.ndarray:
    """MPII head sizes, ``scale * ||head box diagonal||`` (``SC_BIAS = 0.6`` of the MPII
    evaluation), one per annotation in file order.

    Args:
        headbox_file: the evaluation's ``mpii_gt_val.mat`` (``headboxes_src`` of shape
            ``[2, 2, N]``, read with SciPy), or a JSON list of ``[[x1, y1], [x2, y2]]``.
        count: annotations in the annotation file (must match).
        scale: the factor (0.6).
    """
    path = Path(headbox_file)
    if not path.is_file():
        raise DataError(f"{path}: head-box file not found (MPII's mpii_gt_val.mat or a JSON list).")
    if path.suffix == ".mat":
        try:
            from scipy.io import loadmat
        except ImportError as exc:  # pragma: no cover - scipy comes with albumentations
            raise DataError(f"{path}: reading .mat head boxes needs SciPy (pip install scipy).") from exc
        mat = loadmat(str(path))
        if "headboxes_src" not in mat:
            raise DataError(f"{path}: no 'headboxes_src' array (MPII's mpii_gt_val.mat has it).")
        boxes = np.transpose(np.asarray(mat["headboxes_src"], dtype=np.float64), (2, 0, 1))
    else:
        raw = read_json_file(path, "head-box file")
        try:
            boxes = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            boxes = np.zeros((0,))
    if boxes.ndim != 3 or boxes.shape[1:] != (2, 2):
        raise DataError(f"{path}: head boxes must be N x [[x1, y1], [x2, y2]], got shape {boxes.shape}.")
    if len(boxes) != count:
        raise DataError(
            f"{path}: {len(boxes)} head boxes for {count} annotations; the head-box file must "
            f"list one box per annotation of the annotation file, in its order (mmpose's "
            f"mpii_gt_val.mat goes with mpii_val.json)."
        )
    return (scale * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=1)).astype(np.float32)


def mpii_records(
    ann_file: str | os.PathLike, headbox_file: str | os.PathLike | None = None
) -> TopDownRecords:
    """Persons of MPII's JSON as mmpose distributes it (``mpii_train.json``, ``mpii_val.json``:
    a list of ``{"image", "joints": [[x, y]] * 16, "joints_vis": [v] * 16, "center": [x, y],
    "scale"}``, 1-based pixel coordinates).

    The crop follows the official code: centre moved down by ``15 * scale`` pixels, box of
    ``200 * scale * 1.25`` pixels (so use ``box_padding=1``). The normaliser is the head size of
    ``headbox_file`` (PCKh), NaN without it.
    """
    path = Path(ann_file)
    data = read_json_file(path, "MPII annotation file")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected MPII's JSON, a list of {{image, joints, joints_vis, center, scale}}.")
    skips = SkipReport(str(path))
    k = len(MPII_KEYPOINT_NAMES)
    n = len(data)
    keypoints = np.zeros((n, k, 3), dtype=np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    names: list[str] = []
    image_ids = np.zeros(n, dtype=np.int64)
    for j, rec in enumerate(data):
        where = f"record [{j}]"
        if not isinstance(rec, dict) or not {"image", "joints", "joints_vis", "center", "scale"} <= set(rec):
            raise DataError(f"{path}: {where} needs 'image', 'joints', 'joints_vis', 'center' and 'scale'.")
        where = f"record [{j}] (image {rec['image']!r})"
        joints, vis = rec["joints"], rec["joints_vis"]
        if not isinstance(joints, list) or not isinstance(vis, list) or len(joints) != k or len(vis) != k:
            raise DataError(
                f"{path}: {where} has {len(joints) if isinstance(joints, list) else '?'} joints and "
                f"{len(vis) if isinstance(vis, list) else '?'} visibilities; MPII has {k}. Fix the record."
            )
        xy = [_number_list(p, 2) for p in joints]
        v = [_number_list(x, 1) for x in vis]
        center, scale = _number_list(rec["center"], 2), _number_list(rec["scale"], 1)
        if any(p is None for p in xy) or any(x is None for x in v) or center is None or scale is None:
            raise DataError(f"{path}: {where}: joints, joints_vis, center and scale must be numbers.")
        pts = np.asarray(xy, dtype=np.float64) - 0.5  # 1-based pixel index -> continuous
        vis_a = (np.asarray(v, dtype=np.float64)[:, 0] > 0).astype(np.float32) * 2
        keypoints[j, :, :2] = np.where(vis_a[:, None] > 0, pts, 0.0)
        keypoints[j, :, 2] = vis_a
        s = scale[0]
        cx, cy = center[0] - 0.5, center[1] - 0.5 + 15 * s
        side = PIXEL_STD * s * 1.25
        boxes[j] = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        names.append(str(rec["image"]))
        stem = Path(str(rec["image"])).stem
        image_ids[j] = int(stem) if stem.isdigit() else j
    norm = np.full(n, np.nan, dtype=np.float32)
    if headbox_file is not None:
        norm = read_head_sizes(headbox_file, n)
    ids = np.arange(n, dtype=np.int64)

    def describe(j: int) -> str:
        return f"record [{j}] (image {names[j]!r})"

    keep = np.ones(n, dtype=bool)
    for mask, reason in (
        ((boxes[:, 2] <= boxes[:, 0]), "zero-size box (scale <= 0)"),
        ((keypoints[..., 2] > 0).sum(axis=1) < 1, "instance with fewer than 1 labelled keypoint(s)"),
    ):
        count_records(skips, reason, np.flatnonzero(mask & keep), describe)
        keep &= ~mask
    records = TopDownRecords(
        source=path,
        image_ids=image_ids,
        file_names=np.asarray(names, dtype=str).reshape(n),
        heights=np.full(n, -1, dtype=np.int64),
        widths=np.full(n, -1, dtype=np.int64),
        keypoints=keypoints,
        boxes=boxes,
        norm_size=norm,
        areas=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 1.25**2).astype(np.float32),
        ids=ids,
        scores=np.full(n, np.nan, dtype=np.float32),
        skips=skips,
    ).select(keep)
    skips.log_once()
    return records


class TopDownKeypointDataset(Dataset):
    """One ``Sample`` per instance: the whole image and the instance's ``KeypointTargets``.

    Args:
        image_dir: folder the records' ``file_names`` are relative to.
        records: the instances (``coco_topdown_records``, ``detection_records``,
            ``mpii_records``).
        info: the dataset's facts (keypoint names, flip map, skeleton, sigmas).
        allow_absolute_paths: trust absolute / ``..`` image paths of the annotation file.

    Attributes:
        info, records, skips (index-time and this process's item-time counts).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        records: TopDownRecords,
        info: DatasetInfo,
        allow_absolute_paths: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.records = records
        self.info = info
        self.skips = records.skips
        if records.num_keypoints != info.num_keypoints:
            raise DataError(
                f"{records.source}: the records have {records.num_keypoints} keypoints, the "
                f"dataset {info.num_keypoints} ({info.keypoint_names[:3]}...); use the "
                f"annotation files of this dataset."
            )
        check_paths_under_root(
            records.file_names, self.image_dir, records.source,
            lambda r: f"image id={records.image_ids[r]}", allow_absolute_paths,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        r = self.records
        path = self.image_dir / str(r.file_names[i])
        image = load_rgb(path, self.skips)
        h, w = image.shape[:2]
        if r.heights[i] > 0 and (int(r.heights[i]), int(r.widths[i])) != (h, w):
            raise DataError(
                f"{path}: image is {h}x{w} (h x w) but {r.source} says "
                f"{int(r.heights[i])}x{int(r.widths[i])} for image id={r.image_ids[i]}. The image "
                f"or the annotation file is from another release; use matching files."
            )
        kpts = r.keypoints[i : i + 1].copy()  # [1, K, 3]
        if r.heights[i] <= 0:  # sizes unknown at index time (MPII): check now
            bad = outside_image(kpts, np.array([h]), np.array([w]))
            if bad.any():
                kpts[bad] = 0.0
                note_item(self.skips, OUTSIDE_IMAGE, f"record [{i}] ({path.name})", fixed=True)

        def one(values: np.ndarray) -> torch.Tensor | None:
            return None if np.isnan(values[i]).all() else torch.tensor([float(values[i])])

        targets = KeypointTargets(
            keypoints=torch.from_numpy(kpts),
            image_size=(h, w),
            boxes=torch.from_numpy(r.boxes[i : i + 1].copy()),
            norm_size=one(r.norm_size),
            areas=one(r.areas),
            ids=torch.tensor([int(r.ids[i])]),
            scores=one(r.scores),
        )
        meta = SampleMeta(image_id=int(r.image_ids[i]), file_name=str(path), orig_size=(h, w))
        return Sample(image=image_tensor(image), meta=meta, keypoints=targets)


def face_info(dataset: str) -> DatasetInfo:
    """Landmark names (``landmark_<i>``), left/right pairs and equal sigmas of a face set
    (``"300w"``, ``"wflw"``, ``"cofw"``, ``"aflw"``)."""
    from lightning_seg.constants import FACE_FLIP_PAIRS, FACE_NUM_LANDMARKS

    if dataset not in FACE_NUM_LANDMARKS:
        raise ValueError(f"dataset must be one of {tuple(FACE_NUM_LANDMARKS)}, got {dataset!r}")
    k = FACE_NUM_LANDMARKS[dataset]
    return DatasetInfo(
        class_names=["face"],
        category_ids=[1],
        keypoint_names=[f"landmark_{i}" for i in range(k)],
        keypoint_flip_map=list(FACE_FLIP_PAIRS[dataset]),
        keypoint_sigmas=[0.025] * k,
    )


def coco_keypoint_info(index_or_categories, keypoint_sigmas: list[float] | None = None) -> DatasetInfo:
    """``DatasetInfo`` of a COCO-style keypoint file's categories (``coco_dataset_info``)."""
    categories = getattr(index_or_categories, "categories", index_or_categories)
    return coco_dataset_info(categories, keypoint_sigmas)
