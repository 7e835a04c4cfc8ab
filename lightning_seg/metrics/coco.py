"""COCO AP for boxes, masks, mask boundaries and keypoints: streaming metric and file API.

``COCOEvaluator`` is a ``torchmetrics.Metric``: ``update`` encodes masks to RLE at once (memory
grows with the RLE size, not with H x W x detections), ``compute`` builds COCO ground truth and
results in memory and runs faster-coco-eval (default) or pycocotools. The numbers are those
of ``COCOeval.stats`` (12 for boxes/masks/boundaries, 10 for keypoints, -1 where undefined);
the tests check them against pycocotools to 1e-6.

Conventions (each one the common practice, written down because it changes numbers):

* Mask AP uses the *mask* area of a detection for the small/medium/large ranges. pycocotools'
  ``loadRes`` uses the box area when a result also has a ``bbox``; detectron2 and mmdetection
  drop ``bbox`` before mask evaluation, and so do we (also in ``evaluate_coco_files``).
* Ground-truth area is the mask area, or the box area when there are no masks.
* Boundary AP (Cheng et al., CVPR 2021) matches with ``min(mask IoU, boundary IoU)`` (mask
  IoU alone for crowd regions); the boundary band is defined in ``metrics/boundary.py``.
* Keypoint AP uses COCO's 20 detections per image and per-dataset OKS sigmas
  (``kpt_sigmas``; COCO's 17 person sigmas by default). A keypoint result's area is its box
  area when it has a box (pycocotools ``loadRes``), else the extent of its keypoints.
* Keypoint coordinates (detectron2's convention): in memory, keypoints are in the continuous
  frame of boxes and masks (pixel ``(i, j)``'s centre is ``(j + 0.5, i + 0.5)``; the COCO
  reader adds 0.5 to the JSON's values); COCO JSON holds pixel indices. Whatever is written as
  COCO (``predictions_to_coco_results``, and the ground truth and results ``COCOEvaluator``
  builds in memory) gets ``x - 0.5, y - 0.5`` (``keypoints_to_coco``): ground truth for
  labelled keypoints only, predictions for all. Files (``evaluate_coco_files``) are already in
  COCO's convention and are used as they are.
* With ``max_dets`` other than (1, 10, 100), AP and the area-range numbers use the largest
  value (pycocotools' ``summarize`` would print -1 there; faster-coco-eval does the same as us).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pycocotools.mask as mask_utils
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.data.io import DataError
from lightning_seg.metrics.boundary import rle_to_boundary_rle
from lightning_seg.metrics.rle import (
    encode_masks,
    encode_masks_transposed,
    rle_areas,
    validate_rles,
)
from lightning_seg.structures.targets import (
    COCO_KEYPOINT_OFFSET,
    InstancePredictions,
    InstanceTargets,
)

log = logging.getLogger("lightning_seg.metrics")

IOU_TYPES = ("bbox", "segm", "boundary", "keypoints")
BACKENDS = ("faster_coco_eval", "pycocotools")
#: OKS sigmas of the 17 COCO person keypoints (pycocotools' defaults).
COCO_PERSON_SIGMAS = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
]  # fmt: skip
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
_MASK_IOU_TYPES = ("segm", "boundary")


def detection_stat_names(max_dets: Sequence[int] = (1, 10, 100)) -> tuple[str, ...]:
    """Names of the 12 box/mask stats, in ``COCOeval.stats`` order."""
    m0, m1, m2 = max_dets
    ap = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return (*ap, f"AR{m0}", f"AR{m1}", f"AR{m2}", "ARs", "ARm", "ARl")


# --------------------------------------------------------------------------------------------
# Running COCOeval on in-memory datasets
# --------------------------------------------------------------------------------------------


def _check_max_dets(max_dets: Sequence[int]) -> tuple[int, int, int]:
    md = tuple(int(m) for m in max_dets)
    if len(md) != 3 or any(m < 1 for m in md) or list(md) != sorted(md):
        raise ValueError(
            f"max_dets must be 3 increasing positive integers (COCO: 1, 10, 100), got {max_dets}"
        )
    return md  # type: ignore[return-value]


def _mean_defined(values: np.ndarray) -> float:
    """Mean of the entries > -1 (pycocotools' summarize), -1 when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _summarize(
    precision: np.ndarray,
    recall: np.ndarray,
    iou_thrs: np.ndarray,
    area_labels: Sequence[str],
    max_dets: Sequence[int],
    iou_type: str,
) -> dict[str, float]:
    """The ``COCOeval.stats`` numbers from accumulated precision/recall.

    Args:
        precision: ``[T, R, K, A, M]`` (IoU thresholds, recall thresholds, categories, area
            ranges, max detections), -1 where undefined.
        recall: ``[T, K, A, M]``.
        iou_thrs, area_labels, max_dets: the evaluation parameters of those axes.
        iou_type: "keypoints" gives the 10 keypoint stats, anything else the 12 box stats.
    """

    def stat(ap: bool, iou: float | None = None, area: str = "all", md: int | None = None) -> float:
        values = precision if ap else recall
        if iou is not None:
            values = values[np.where(iou == iou_thrs)[0]]
        a = list(area_labels).index(area)
        m = list(max_dets).index(max_dets[-1] if md is None else md)
        return _mean_defined(values[..., a, m])

    if iou_type == "keypoints":
        values = [
            stat(True), stat(True, 0.5), stat(True, 0.75), stat(True, area="medium"),
            stat(True, area="large"), stat(False), stat(False, 0.5), stat(False, 0.75),
            stat(False, area="medium"), stat(False, area="large"),
        ]  # fmt: skip
        return dict(zip(KEYPOINT_STAT_NAMES, values))
    m0, m1, m2 = max_dets
    values = [
        stat(True), stat(True, 0.5), stat(True, 0.75), stat(True, area="small"),
        stat(True, area="medium"), stat(True, area="large"), stat(False, md=m0), stat(False, md=m1),
        stat(False, md=m2), stat(False, area="small"), stat(False, area="medium"),
        stat(False, area="large"),
    ]  # fmt: skip
    return dict(zip(detection_stat_names(max_dets), values))


def _silent(*args, **kwargs) -> None:
    return None


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building many small dicts (2-3x faster)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pycocotools_boundary_eval_class():
    """A pycocotools ``COCOeval`` that matches with min(mask IoU, boundary IoU)."""
    from pycocotools.cocoeval import COCOeval

    class _BoundaryCOCOeval(COCOeval):
        def __init__(self, coco_gt, coco_dt, dilation_ratio: float):
            super().__init__(coco_gt, coco_dt, iouType="segm")
            self.dilation_ratio = dilation_ratio

        def _prepare(self):
            super()._prepare()  # segmentations are RLEs from here on
            for groups in (self._gts, self._dts):
                anns = [a for group in groups.values() for a in group]
                bands = rle_to_boundary_rle([a["segmentation"] for a in anns], self.dilation_ratio)
                for ann, rle in zip(anns, bands):
                    ann["boundary"] = rle

        def computeIoU(self, imgId, catId):  # noqa: N802, N803 (pycocotools API)
            ious = super().computeIoU(imgId, catId)
            gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
            if len(gts) == 0 or len(dts) == 0:
                return ious
            order = np.argsort([-d["score"] for d in dts], kind="mergesort")
            dts = [dts[i] for i in order[: self.params.maxDets[-1]]]  # the mask IoU rows' order
            crowd = np.array([bool(g["iscrowd"]) for g in gts])
            dt_bands, gt_bands = [d["boundary"] for d in dts], [g["boundary"] for g in gts]
            band = np.asarray(mask_utils.iou(dt_bands, gt_bands, crowd.tolist()))
            ious = np.array(ious)
            ious[:, ~crowd] = np.minimum(ious[:, ~crowd], band[:, ~crowd])
            return ious

    return _BoundaryCOCOeval


@dataclass
class _Accumulated:
    """``COCOeval.eval`` precision/recall and the parameters of their axes."""

    precision: np.ndarray  # [T, R, K, A, M], -1 where undefined
    recall: np.ndarray  # [T, K, A, M]
    cat_ids: list[int]  # the K axis
    iou_thrs: np.ndarray
    area_labels: list[str]
    max_dets: list[int]

    @staticmethod
    def concat(parts: list[_Accumulated]) -> _Accumulated:
        """Join evaluations of disjoint category sets along K (categories are independent in
        ``COCOeval.accumulate``, so this equals evaluating all categories at once)."""
        first = parts[0]
        return _Accumulated(
            np.concatenate([a.precision for a in parts], axis=2),
            np.concatenate([a.recall for a in parts], axis=1),
            [c for a in parts for c in a.cat_ids],
            first.iou_thrs,
            first.area_labels,
            first.max_dets,
        )

    def stats(self, iou_type: str) -> dict[str, float]:
        return _summarize(
            self.precision, self.recall, self.iou_thrs, self.area_labels, self.max_dets, iou_type
        )

    def per_class_ap(self) -> dict[int, float]:
        """AP@[.5:.95] (all areas, largest maxDets) per category id, -1 where undefined."""
        ap = self.precision[:, :, :, 0, -1]  # [T, R, K]
        return {c: _mean_defined(ap[:, :, k]) for k, c in enumerate(self.cat_ids)}


def _accumulate(
    gt_dataset: dict,
    dt_anns: list[dict],
    iou_type: str,
    backend: str = "faster_coco_eval",
    max_dets: Sequence[int] = (1, 10, 100),
    kpt_sigmas: Sequence[float] | None = None,
    boundary_dilation_ratio: float = 0.02,
) -> _Accumulated:
    """Run ``COCOeval.evaluate`` and ``accumulate`` on prepared ground truth and detections.

    Args:
        gt_dataset: COCO dict (``images`` with height/width, ``categories``, ``annotations``
            with unique non-zero ids, ``area``, ``iscrowd``, ``bbox`` and the field of
            ``iou_type``). Annotations are modified in place by the backends.
        dt_anns: detection dicts as ``COCO.loadRes`` makes them (``id``, ``image_id``,
            ``category_id``, ``score``, ``area``, ``iscrowd`` and the field of ``iou_type``).
        iou_type: "bbox", "segm", "boundary" or "keypoints".
        backend: "faster_coco_eval" or "pycocotools".
        max_dets: detections per image for box/mask AR (keypoints use COCO's 20).
        kpt_sigmas: OKS sigmas, one per keypoint (COCO person sigmas when None).
        boundary_dilation_ratio: boundary width as a fraction of the image diagonal.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    max_dets = _check_max_dets(max_dets)
    is_kpt = iou_type == "keypoints"
    dt_dataset = dict(gt_dataset, annotations=dt_anns)
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt_dataset, dt_dataset
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval_faster(
            coco_gt,
            coco_dt,
            iouType=iou_type,
            print_function=_silent,
            kpt_oks_sigmas=None if kpt_sigmas is None else list(kpt_sigmas),
            boundary_dilation_ratio=boundary_dilation_ratio,
        )
        if not is_kpt:
            evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = gt_dataset, dt_dataset
            coco_gt.createIndex()
            coco_dt.createIndex()
            if iou_type == "boundary":
                boundary_eval = _pycocotools_boundary_eval_class()
                evaluator = boundary_eval(coco_gt, coco_dt, boundary_dilation_ratio)
            else:
                evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            if is_kpt and kpt_sigmas is not None:
                evaluator.params.kpt_oks_sigmas = np.asarray(kpt_sigmas, dtype=np.float64)
            if not is_kpt:
                evaluator.params.maxDets = list(max_dets)
            evaluator.evaluate()
            evaluator.accumulate()
    p = evaluator.params
    return _Accumulated(
        evaluator.eval["precision"],
        evaluator.eval["recall"],
        [int(c) for c in p.catIds],
        p.iouThrs,
        list(p.areaRngLbl),
        list(p.maxDets),
    )


# --------------------------------------------------------------------------------------------
# Shared record builders
# --------------------------------------------------------------------------------------------


def _xywh(boxes: Tensor) -> list[list[float]]:
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


def _category_map(category_ids: Sequence[int] | None, num: int) -> list[int]:
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
        cat_map = _category_map(category_ids, max(labels) + 1)
        cats = [cat_map[i] for i in labels]
        boxes = _xywh(pred.boxes)
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


def _keypoint_extent(kpts: Sequence[float]) -> tuple[float, list[float]]:
    """Area and bbox of a keypoint result without a box (pycocotools ``loadRes``)."""
    x, y = np.asarray(kpts[0::3]), np.asarray(kpts[1::3])
    x0, x1, y0, y1 = np.min(x), np.max(x), np.min(y), np.max(y)
    return (x1 - x0) * (y1 - y0), [x0, y0, x1 - x0, y1 - y0]


# --------------------------------------------------------------------------------------------
# The streaming metric
# --------------------------------------------------------------------------------------------

_IMAGE_STATES = ("img_ids", "img_sizes", "gt_counts", "dt_counts")
_GT_STATES = ("gt_boxes", "gt_labels", "gt_crowd", "gt_area", "gt_rle", "gt_rle_len", "gt_kpts")
_DT_STATES = ("dt_boxes", "dt_scores", "dt_labels", "dt_area", "dt_rle", "dt_rle_len", "dt_kpts")
_STATES = _IMAGE_STATES + _GT_STATES + _DT_STATES
_COMPACT_EVERY = 32  # a tensor costs ~1 KiB of overhead: keep a few large ones, not many small
# dtype and trailing shape of each state (None: K * 3 keypoint values), for empty states
_STATE_LAYOUT = {
    "img_ids": (torch.int64, ()), "img_sizes": (torch.int64, (2,)),
    "gt_counts": (torch.int64, ()), "dt_counts": (torch.int64, ()),
    "gt_boxes": (torch.float32, (4,)), "dt_boxes": (torch.float32, (4,)),
    "gt_labels": (torch.int64, ()), "dt_labels": (torch.int64, ()),
    "gt_crowd": (torch.bool, ()), "dt_scores": (torch.float32, ()),
    "gt_area": (torch.float64, ()), "dt_area": (torch.float64, ()),
    "gt_rle": (torch.uint8, ()), "dt_rle": (torch.uint8, ()),
    "gt_rle_len": (torch.int64, ()), "dt_rle_len": (torch.int64, ()),
    "gt_kpts": (torch.float32, None), "dt_kpts": (torch.float32, None),
}  # fmt: skip


class COCOEvaluator(Metric):
    """COCO AP for boxes, masks, boundaries and keypoints, streaming and DDP-safe.

    ``update`` takes predictions and targets in the same pixel frame; masks are binarised
    (float masks at ``mask_thresh``) and run-length encoded immediately, so nothing of size
    H x W is kept. ``compute`` gathers every process's records (``all_gather_object``) and
    evaluates once; an image id added twice (DistributedSampler pads the last batch by
    repeating samples) counts once, and twice with different ground truth is an error.

    Args:
        iou_types: any of "bbox", "segm", "boundary", "keypoints".
        category_ids: dataset category id of each contiguous class index (default index + 1).
        backend: "faster_coco_eval" (C++, default) or "pycocotools".
        max_dets: detections per image for box/mask AR@m; AP uses the largest.
        kpt_sigmas: OKS sigma per keypoint (``DatasetInfo.keypoint_sigmas``); COCO's 17 person
            sigmas when None.
        boundary_dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        per_class: also return ``<iou_type>/AP/<class>`` for every class.
        class_names: names used in the per-class keys (default: the class index).
        mask_thresh: threshold for float (probability) masks.
        max_anns_per_pass: ``compute`` evaluates groups of categories with at most this many
            annotations at once (categories are independent in COCOeval, so the numbers do
            not change; the peak memory of ``compute`` does).

    ``compute`` returns ``{"bbox/AP": ..., "bbox/AP50": ..., "segm/APs": ..., ...}`` with the
    names of ``detection_stat_names`` / ``KEYPOINT_STAT_NAMES``; -1 where undefined.

    Example::

        metric = COCOEvaluator(("bbox", "segm"), category_ids=info.category_ids)
        for batch in loader:  # predictions mapped back to the original image frame
            metric.update(model.predict(batch), batch.instances, [m.image_id for m in batch.meta])
        stats = metric.compute()  # {"bbox/AP": 0.37, ..., "segm/ARl": 0.52}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        iou_types: Sequence[str] = ("bbox", "segm"),
        category_ids: list[int] | None = None,
        backend: str = "faster_coco_eval",
        max_dets: Sequence[int] = (1, 10, 100),
        kpt_sigmas: list[float] | None = None,
        boundary_dilation_ratio: float = 0.02,
        per_class: bool = False,
        class_names: list[str] | None = None,
        mask_thresh: float = 0.5,
        max_anns_per_pass: int = 50_000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        iou_types = tuple(iou_types)
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if not iou_types or unknown:
            raise ValueError(
                f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if category_ids is not None and len(set(category_ids)) != len(category_ids):
            raise ValueError("category_ids must be unique")
        if class_names is not None and category_ids is not None:
            if len(class_names) != len(category_ids):
                raise ValueError(
                    f"class_names has {len(class_names)} entries, category_ids {len(category_ids)}"
                )
        self.iou_types = iou_types
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self.backend = backend
        self.max_dets = _check_max_dets(max_dets)
        self.kpt_sigmas = None if kpt_sigmas is None else [float(s) for s in kpt_sigmas]
        self.boundary_dilation_ratio = boundary_dilation_ratio
        self.per_class = per_class
        self.class_names = class_names
        self.mask_thresh = mask_thresh
        self.max_anns_per_pass = max_anns_per_pass
        self._needs_masks = any(t in _MASK_IOU_TYPES for t in iou_types)
        self._needs_kpts = "keypoints" in iou_types
        self._num_keypoints: int | None = None if self.kpt_sigmas is None else len(self.kpt_sigmas)
        self._next_index = 0  # default image ids: a running index, unique across ranks
        self._num_small: dict[str, int] = {}  # per state: tensors appended since the last merge
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)

    # ---------------------------------------------------------------- update

    def _default_image_ids(self, num: int) -> list[int]:
        rank, world = 0, 1
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        ids = [(self._next_index + i) * world + rank for i in range(num)]
        self._next_index += num
        return ids

    def _check_labels(self, labels: Tensor, what: str, image_id: int) -> None:
        if labels.numel() == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        limit = len(self.category_ids) if self.category_ids is not None else None
        if lo < 0 or (limit is not None and hi >= limit):
            bound = f"[0, {limit})" if limit is not None else ">= 0"
            raise ValueError(
                f"image {image_id}: {what} labels must be contiguous class indices {bound}, "
                f"got {lo}..{hi}; pass category_ids with one dataset id per class"
            )

    def _keypoints(self, kpts: Tensor | None, n: int, what: str, image_id: int) -> Tensor:
        if not self._needs_kpts:
            return torch.zeros(n, 0)
        if kpts is None:
            if n == 0:
                return torch.zeros(0, 3 * (self._num_keypoints or 0))
            raise ValueError(f"image {image_id}: 'keypoints' AP needs {what}.keypoints, got None")
        k = kpts.shape[1]
        if self._num_keypoints is None:
            if k != len(COCO_PERSON_SIGMAS):
                raise ValueError(
                    f"image {image_id}: {what} have {k} keypoints; pass kpt_sigmas (one OKS sigma "
                    f"per keypoint, DatasetInfo.keypoint_sigmas) for datasets other than COCO "
                    f"people"
                )
            self._num_keypoints = k
        elif k != self._num_keypoints:
            raise ValueError(
                f"image {image_id}: {what} have {k} keypoints, expected {self._num_keypoints}"
            )
        return kpts.detach().to("cpu", torch.float32).reshape(n, 3 * k)  # [N, K*3]

    def _encode(
        self, masks: Tensor | None, n: int, what: str, image_id: int
    ) -> tuple[list[dict], np.ndarray]:
        if not self._needs_masks or n == 0:
            return [], np.zeros(n)
        if masks is None:
            types = "/".join(self.iou_types)
            raise ValueError(f"image {image_id}: {types} AP needs {what}.masks, got None")
        rles = encode_masks_transposed(masks, self.mask_thresh)
        return rles, rle_areas(rles).astype(np.float64)

    def update(
        self,
        preds: list[InstancePredictions],
        targets: list[InstanceTargets],
        image_ids: list[int] | None = None,
    ) -> None:
        """Add a batch of images.

        Args:
            preds: detections per image (boxes, scores, labels; masks for segm/boundary,
                keypoints for keypoints), in the pixel frame of the targets.
            targets: ground truth per image (boxes, labels, iscrowd; masks, keypoints).
            image_ids: the dataset's id of each image; a running index when None.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        if image_ids is None:
            image_ids = self._default_image_ids(len(preds))
        elif len(image_ids) != len(preds):
            raise ValueError(f"got {len(image_ids)} image ids for {len(preds)} images")
        batch: dict[str, list] = {name: [] for name in _STATES}
        gt_rle_bytes: list[bytes] = []
        dt_rle_bytes: list[bytes] = []
        for pred, target, image_id in zip(preds, targets, image_ids):
            image_id = int(image_id)
            if tuple(pred.image_size) != tuple(target.image_size):
                raise ValueError(
                    f"image {image_id}: predictions are in a {tuple(pred.image_size)} frame, "
                    f"targets in {tuple(target.image_size)}; map predictions back to the target "
                    f"frame first"
                )
            g, d = len(target), len(pred)
            self._check_labels(target.labels, "target", image_id)
            self._check_labels(pred.labels, "predicted", image_id)
            scores = pred.scores.detach().to("cpu", torch.float32)
            pred_boxes = pred.boxes.detach().to("cpu", torch.float32)
            if not (torch.isfinite(scores).all() and torch.isfinite(pred_boxes).all()):
                raise ValueError(f"image {image_id}: predicted boxes or scores contain NaN/inf")
            gt_boxes = target.boxes.detach().to("cpu", torch.float32)

            gt_rles, gt_mask_area = self._encode(target.masks, g, "targets", image_id)
            if len(gt_rles):
                gt_area = torch.from_numpy(gt_mask_area)
            elif target.masks is not None:
                gt_area = target.masks.flatten(1).sum(1).to("cpu", torch.float64)  # [N]
            else:
                box_areas = [w * h for _, _, w, h in _xywh(gt_boxes)]
                gt_area = torch.tensor(box_areas, dtype=torch.float64)
            dt_rles, dt_mask_area = self._encode(pred.masks, d, "predictions", image_id)

            batch["img_ids"].append(torch.tensor([image_id]))
            batch["img_sizes"].append(torch.tensor([list(target.image_size)]))
            batch["gt_counts"].append(torch.tensor([g]))
            batch["dt_counts"].append(torch.tensor([d]))
            batch["gt_boxes"].append(gt_boxes)
            batch["gt_labels"].append(target.labels.detach().to("cpu", torch.int64))
            batch["gt_crowd"].append(target.iscrowd.detach().to("cpu", torch.bool))
            batch["gt_area"].append(gt_area.reshape(g))
            batch["gt_rle_len"].append(torch.tensor([len(r["counts"]) for r in gt_rles] or [0] * g))
            batch["gt_kpts"].append(self._keypoints(target.keypoints, g, "targets", image_id))
            batch["dt_boxes"].append(pred_boxes)
            batch["dt_scores"].append(scores)
            batch["dt_labels"].append(pred.labels.detach().to("cpu", torch.int64))
            batch["dt_area"].append(torch.from_numpy(dt_mask_area))
            batch["dt_rle_len"].append(torch.tensor([len(r["counts"]) for r in dt_rles] or [0] * d))
            batch["dt_kpts"].append(self._keypoints(pred.keypoints, d, "predictions", image_id))
            gt_rle_bytes.extend(r["counts"] for r in gt_rles)
            dt_rle_bytes.extend(r["counts"] for r in dt_rles)
        for name, rle_bytes in (("gt_rle", gt_rle_bytes), ("dt_rle", dt_rle_bytes)):
            buf = np.frombuffer(b"".join(rle_bytes), dtype=np.uint8).copy()
            batch[name].append(torch.from_numpy(buf))
        for name in _STATES:
            parts = [p for p in batch[name] if p.shape[0]]
            if parts:
                state = getattr(self, name)
                state.append(torch.cat(parts).to(_STATE_LAYOUT[name][0]))
                self._num_small[name] = self._num_small.get(name, 0) + 1
                if self._num_small[name] == _COMPACT_EVERY:  # merge the newest small tensors
                    state[-_COMPACT_EVERY:] = [torch.cat(state[-_COMPACT_EVERY:])]
                    self._num_small[name] = 0

    def reset(self) -> None:
        super().reset()
        self._num_small = {}

    # ---------------------------------------------------------------- sync

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        """Gather every state as one object per rank (states of mixed dtypes and sizes)."""
        group = process_group or self.process_group
        local = {name: self._cat_state(name) for name in _STATES}
        gathered: list[dict | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for name in _STATES:
            parts = [part[name] for part in gathered if part is not None]
            setattr(self, name, [p for p in parts if p.numel()])

    def _cat_state(self, name: str) -> Tensor:
        dtype, trailing = _STATE_LAYOUT[name]
        parts = [p.cpu() for p in getattr(self, name) if p.shape[0]]
        if parts:
            return torch.cat(parts).to(dtype)
        width = (3 * (self._num_keypoints or 0),) if trailing is None else trailing
        return torch.zeros((0, *width), dtype=dtype)

    # ---------------------------------------------------------------- compute

    def _gathered_arrays(self) -> dict[str, np.ndarray]:
        """All states as numpy arrays, each image id kept once (its first occurrence)."""
        data = {name: self._cat_state(name).numpy() for name in _STATES}
        ids = data["img_ids"]
        if np.unique(ids).size == ids.size:
            return data
        keep_img = self._first_occurrences(data)
        keep = {"img": keep_img}
        for prefix in ("gt", "dt"):
            keep[prefix] = np.repeat(keep_img, data[f"{prefix}_counts"])
            keep[f"{prefix}_rle"] = np.repeat(keep[prefix], data[f"{prefix}_rle_len"])
        for name in _STATES:
            group = name if name in keep else ("img" if name in _IMAGE_STATES else name[:2])
            data[name] = data[name][keep[group]]
        return data

    @staticmethod
    def _first_occurrences(data: dict[str, np.ndarray]) -> np.ndarray:
        """Bool [I]: False for a repeated image id; raises when a repeat has other ground truth."""
        gt_off = np.concatenate(([0], np.cumsum(data["gt_counts"])))
        rle_off = np.concatenate(([0], np.cumsum(data["gt_rle_len"])))

        def ground_truth(i: int) -> list[np.ndarray]:
            a, b = gt_off[i], gt_off[i + 1]
            keys = ("gt_boxes", "gt_labels", "gt_crowd", "gt_rle_len", "gt_kpts")
            fields = [data[k][a:b] for k in keys]
            return [data["img_sizes"][i], data["gt_rle"][rle_off[a] : rle_off[b]], *fields]

        keep = np.ones(data["img_ids"].size, dtype=bool)
        first: dict[int, int] = {}
        for i, image_id in enumerate(data["img_ids"].tolist()):
            j = first.setdefault(image_id, i)
            if j == i:
                continue
            if not all(np.array_equal(x, y) for x, y in zip(ground_truth(i), ground_truth(j))):
                raise DataError(
                    f"COCOEvaluator: image id {image_id} was added twice with different ground "
                    f"truth. Pass the dataset's own id of every image as image_ids (ids must be "
                    f"unique)."
                )
            keep[i] = False
        return keep

    def _class_index_and_category(self, cat_ids: list[int]) -> list[tuple[int, int]]:
        if self.category_ids is not None:
            return list(enumerate(self.category_ids))
        return [(cat - 1, cat) for cat in cat_ids]

    def _category_ids(self, data: dict[str, np.ndarray]) -> list[int]:
        if self.category_ids is not None:
            return list(self.category_ids)
        labels = np.union1d(data["gt_labels"], data["dt_labels"])
        return [int(i) + 1 for i in labels]

    def _annotation_arrays(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-annotation arrays derived from the states: image id, category id, RLE spans."""
        max_label = max(data["gt_labels"].max(initial=-1), data["dt_labels"].max(initial=-1))
        cat_map = np.asarray(_category_map(self.category_ids, int(max_label) + 1), dtype=np.int64)
        for prefix in ("gt", "dt"):
            counts = data[f"{prefix}_counts"]
            data[f"{prefix}_image"] = np.repeat(data["img_ids"], counts)
            data[f"{prefix}_category"] = cat_map[data[f"{prefix}_labels"]]
            sizes = np.repeat(data["img_sizes"][:, ::-1], counts, axis=0)  # [N, 2] (W, H)
            data[f"{prefix}_rle_size"] = sizes
            data[f"{prefix}_rle_offset"] = np.cumsum(np.r_[0, data[f"{prefix}_rle_len"]])
        return data

    @staticmethod
    def _records(
        data: dict[str, np.ndarray], prefix: str, sel: np.ndarray, iou_type: str
    ) -> list[dict]:
        """COCO ground-truth annotations (``prefix="gt"``) or detections (``"dt"``) of the
        annotations ``sel`` (indices), for one IoU type.

        Detections get ``area`` as ``COCO.loadRes`` sets it: the mask area for mask types,
        the box area otherwise. Ids are index + 1 (0 would read as "unmatched" in COCOeval).
        """
        is_gt = prefix == "gt"
        boxes = _xywh(torch.from_numpy(data[f"{prefix}_boxes"][sel]))
        columns = [
            (sel + 1).tolist(),
            data[f"{prefix}_image"][sel].tolist(),
            data[f"{prefix}_category"][sel].tolist(),
        ]
        records = [
            {"id": i, "image_id": image_id, "category_id": cat}
            for i, image_id, cat in zip(*columns)
        ]
        if is_gt:
            areas, crowd = data["gt_area"][sel].tolist(), data["gt_crowd"][sel].tolist()
            for rec, box, area, is_crowd in zip(records, boxes, areas, crowd):
                rec.update(bbox=box, area=area, iscrowd=int(is_crowd))
        else:
            for rec, score in zip(records, data["dt_scores"][sel].tolist()):
                rec.update(score=score, iscrowd=0)
        if iou_type in _MASK_IOU_TYPES:
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

    def _category_groups(self, data: dict[str, np.ndarray], cat_ids: list[int]) -> list[list[int]]:
        """Consecutive categories (sorted ids) with at most ``max_anns_per_pass`` annotations
        each (one category may exceed it); groups without ground truth are left out."""
        ids = np.asarray(sorted(cat_ids), dtype=np.int64)
        gt_per_cat = np.bincount(np.searchsorted(ids, data["gt_category"]), minlength=ids.size)
        dt_per_cat = np.bincount(np.searchsorted(ids, data["dt_category"]), minlength=ids.size)
        groups: list[list[int]] = []
        current: list[int] = []
        size = 0
        for cat, g, d in zip(ids.tolist(), gt_per_cat.tolist(), dt_per_cat.tolist()):
            if current and size + g + d > self.max_anns_per_pass:
                groups.append(current)
                current, size = [], 0
            current.append(cat)
            size += g + d
        groups.append(current)
        has_gt = set(data["gt_category"].tolist())
        return [grp for grp in groups if has_gt.intersection(grp)]

    def compute(self) -> dict[str, float]:
        """Evaluate everything added so far (all processes); returns stats by name."""
        with _gc_paused():
            return self._compute()

    def _compute(self) -> dict[str, float]:
        data = self._gathered_arrays()
        out: dict[str, float] = {}
        if data["img_ids"].size == 0:
            log.warning("COCOEvaluator.compute() called before any update; every stat is -1")
            for iou_type in self.iou_types:
                out.update({f"{iou_type}/{k}": v for k, v in self._undefined(iou_type).items()})
            return out
        data = self._annotation_arrays(data)
        # Images in the transposed frame of the internal RLEs (height = W, width = H).
        images = [
            {"id": i, "height": w, "width": h}
            for i, (h, w) in zip(data["img_ids"].tolist(), data["img_sizes"].tolist())
        ]
        cat_ids = self._category_ids(data)
        groups = self._category_groups(data, cat_ids)
        for iou_type in self.iou_types:
            parts = []
            for group in groups:  # categories are evaluated independently: bounded memory
                gt_sel = np.flatnonzero(np.isin(data["gt_category"], group))
                dt_sel = np.flatnonzero(np.isin(data["dt_category"], group))
                gt_dataset = {
                    "images": images,
                    "categories": [{"id": c, "name": str(c)} for c in group],
                    "annotations": self._records(data, "gt", gt_sel, iou_type),
                }
                parts.append(
                    _accumulate(
                        gt_dataset,
                        self._records(data, "dt", dt_sel, iou_type),
                        iou_type,
                        backend=self.backend,
                        max_dets=self.max_dets,
                        kpt_sigmas=self.kpt_sigmas,
                        boundary_dilation_ratio=self.boundary_dilation_ratio,
                    )
                )
                del gt_dataset
            result = _Accumulated.concat(parts) if parts else None
            stats = result.stats(iou_type) if result is not None else self._undefined(iou_type)
            out.update({f"{iou_type}/{k}": v for k, v in stats.items()})
            if self.per_class:
                per_class = result.per_class_ap() if result is not None else {}
                for index, cat in self._class_index_and_category(cat_ids):
                    names = self.class_names
                    name = names[index] if names is not None and index < len(names) else str(index)
                    out[f"{iou_type}/AP/{name}"] = per_class.get(cat, -1.0)
        return out

    def _undefined(self, iou_type: str) -> dict[str, float]:
        """-1 for every stat (no ground truth, or nothing added)."""
        is_kpt = iou_type == "keypoints"
        names = KEYPOINT_STAT_NAMES if is_kpt else detection_stat_names(self.max_dets)
        return {n: -1.0 for n in names}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


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
        if iou_type in _MASK_IOU_TYPES:
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
        if iou_type in _MASK_IOU_TYPES or (iou_type == "bbox" and not has_box):
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
    if iou_type in _MASK_IOU_TYPES or iou_type == "bbox":
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
    with _gc_paused():
        gt = _load_gt(gt_json, iou_type, num_kpts)
        dts = _load_results(dt_json, gt, iou_type, num_kpts)
        result = _accumulate(
            gt, dts, iou_type, backend=backend, max_dets=max_dets, kpt_sigmas=kpt_sigmas
        )
    return result.stats(iou_type)


# name -> (is AP, IoU threshold or None for 0.50:0.95, area range)
_STAT_DESCRIPTIONS = {
    "AP": (1, None, "all"), "AP50": (1, 0.5, "all"), "AP75": (1, 0.75, "all"),
    "APs": (1, None, "small"), "APm": (1, None, "medium"), "APl": (1, None, "large"),
    "AR": (0, None, "all"), "AR50": (0, 0.5, "all"), "AR75": (0, 0.75, "all"),
    "ARs": (0, None, "small"), "ARm": (0, None, "medium"), "ARl": (0, None, "large"),
}  # fmt: skip


def _is_ar_at(name: str) -> bool:
    """``AR<maxDets>`` (AR1, AR10, AR100...), not AR50 / AR75 (IoU thresholds)."""
    return name.startswith("AR") and name[2:].isdigit() and name not in ("AR50", "AR75")


def format_coco_table(stats: dict) -> str:
    """Format COCO stats as pycocotools prints them (one line per stat).

    Accepts the dict of ``evaluate_coco_files`` or of ``COCOEvaluator.compute`` (keys with an
    ``<iou_type>/`` prefix are grouped under a header; per-class keys are listed after).
    """
    groups: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        head, _, rest = key.partition("/")
        prefix, name = (head, rest) if head in IOU_TYPES and rest else ("", key)
        groups.setdefault(prefix, {})[name] = float(value)
    lines: list[str] = []
    for prefix, group in groups.items():
        if prefix:
            lines.append(f"[{prefix}]")
        ar_max = [int(k[2:]) for k in group if _is_ar_at(k)]
        is_kpt = "AR" in group
        top = 20 if is_kpt else (max(ar_max) if ar_max else 100)
        for name, value in group.items():
            if name in _STAT_DESCRIPTIONS or _is_ar_at(name):
                ap, iou, area = _STAT_DESCRIPTIONS.get(name, (0, None, "all"))
                md = int(name[2:]) if name not in _STAT_DESCRIPTIONS else top
                title = "Average Precision  (AP)" if ap else "Average Recall     (AR)"
                iou_str = "0.50:0.95" if iou is None else f"{iou:0.2f}"
                setting = f"IoU={iou_str:<9} | area={area:>6s} | maxDets={md:>3d}"
                lines.append(f" {title} @[ {setting} ] = {value:0.3f}")
            else:
                lines.append(f" {name:<52} = {value:0.3f}")
    return "\n".join(lines)
