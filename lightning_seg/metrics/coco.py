"""COCO AP for boxes, masks, mask boundaries and keypoints: streaming metric and file API.

``COCOEvaluator`` is a ``torchmetrics.Metric``: ``update`` encodes masks to RLE at once (memory
grows with the RLE size, not with H x W x detections), ``compute`` builds COCO ground truth and
results in memory and runs faster-coco-eval (default) or pycocotools. The numbers are those
of ``COCOeval.stats`` (12 for boxes/masks/boundaries, 10 for keypoints, -1 where undefined);
the tests check them against pycocotools to 1e-6.

The pieces live in one module per job; this module re-exports their public names:

* ``coco_eval``: running COCOeval (either backend) on in-memory datasets, the stat names,
  the summary numbers and ``format_coco_table``;
* ``coco_records``: COCO records from predictions and targets (``predictions_to_coco_results``,
  ``keypoints_to_coco`` and the evaluator's in-memory ground truth and detections);
* ``coco_files``: loading and checking ground-truth and results files (``evaluate_coco_files``);
* ``coco_state``: the evaluator's state tensors and their gathering across processes.

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

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.metrics.coco_eval import (
    BACKENDS,
    COCO_PERSON_SIGMAS,
    IOU_TYPES,
    KEYPOINT_STAT_NAMES,
    MASK_IOU_TYPES,
    Accumulated,
    accumulate,
    check_max_dets,
    detection_stat_names,
    format_coco_table,
    gc_paused,
)
from lightning_seg.metrics.coco_files import evaluate_coco_files
from lightning_seg.metrics.coco_records import (
    annotation_arrays,
    keypoints_to_coco,
    predictions_to_coco_results,
    state_records,
    xywh,
)
from lightning_seg.metrics.coco_state import (
    STATES,
    all_gather_states,
    append_batch,
    bytes_tensor,
    cat_state,
    unique_images,
)
from lightning_seg.metrics.rle import encode_masks_transposed, rle_areas
from lightning_seg.structures import InstancePredictions, InstanceTargets

__all__ = [
    "BACKENDS",
    "COCO_PERSON_SIGMAS",
    "IOU_TYPES",
    "KEYPOINT_STAT_NAMES",
    "COCOEvaluator",
    "detection_stat_names",
    "evaluate_coco_files",
    "format_coco_table",
    "keypoints_to_coco",
    "predictions_to_coco_results",
]

log = logging.getLogger("lightning_seg.metrics")


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
        self.max_dets = check_max_dets(max_dets)
        self.kpt_sigmas = None if kpt_sigmas is None else [float(s) for s in kpt_sigmas]
        self.boundary_dilation_ratio = boundary_dilation_ratio
        self.per_class = per_class
        self.class_names = class_names
        self.mask_thresh = mask_thresh
        self.max_anns_per_pass = max_anns_per_pass
        self._needs_masks = any(t in MASK_IOU_TYPES for t in iou_types)
        self._needs_kpts = "keypoints" in iou_types
        self._num_keypoints: int | None = None if self.kpt_sigmas is None else len(self.kpt_sigmas)
        self._next_index = 0  # default image ids: a running index, unique across ranks
        self._num_small: dict[str, int] = {}  # per state: tensors appended since the last merge
        for name in STATES:
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
        batch: dict[str, list] = {name: [] for name in STATES}
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
                box_areas = [w * h for _, _, w, h in xywh(gt_boxes)]
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
        batch["gt_rle"].append(bytes_tensor(gt_rle_bytes))
        batch["dt_rle"].append(bytes_tensor(dt_rle_bytes))
        append_batch({name: getattr(self, name) for name in STATES}, batch, self._num_small)

    def reset(self) -> None:
        super().reset()
        self._num_small = {}

    # ---------------------------------------------------------------- sync

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        """Gather every state as one object per rank (states of mixed dtypes and sizes)."""
        local = {name: self._cat_state(name) for name in STATES}
        for name, parts in all_gather_states(local, process_group or self.process_group).items():
            setattr(self, name, parts)

    def _cat_state(self, name: str) -> Tensor:
        return cat_state(getattr(self, name), name, self._num_keypoints)

    # ---------------------------------------------------------------- compute

    def _gathered_arrays(self) -> dict[str, np.ndarray]:
        """All states as numpy arrays, each image id kept once (its first occurrence)."""
        return unique_images({name: self._cat_state(name).numpy() for name in STATES})

    def _class_index_and_category(self, cat_ids: list[int]) -> list[tuple[int, int]]:
        if self.category_ids is not None:
            return list(enumerate(self.category_ids))
        return [(cat - 1, cat) for cat in cat_ids]

    def _category_ids(self, data: dict[str, np.ndarray]) -> list[int]:
        if self.category_ids is not None:
            return list(self.category_ids)
        labels = np.union1d(data["gt_labels"], data["dt_labels"])
        return [int(i) + 1 for i in labels]

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
        with gc_paused():
            return self._compute()

    def _compute(self) -> dict[str, float]:
        data = self._gathered_arrays()
        out: dict[str, float] = {}
        if data["img_ids"].size == 0:
            log.warning("COCOEvaluator.compute() called before any update; every stat is -1")
            for iou_type in self.iou_types:
                out.update({f"{iou_type}/{k}": v for k, v in self._undefined(iou_type).items()})
            return out
        data = annotation_arrays(data, self.category_ids)
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
                    "annotations": state_records(data, "gt", gt_sel, iou_type),
                }
                parts.append(
                    accumulate(
                        gt_dataset,
                        state_records(data, "dt", dt_sel, iou_type),
                        iou_type,
                        backend=self.backend,
                        max_dets=self.max_dets,
                        kpt_sigmas=self.kpt_sigmas,
                        boundary_dilation_ratio=self.boundary_dilation_ratio,
                    )
                )
                del gt_dataset
            result = Accumulated.concat(parts) if parts else None
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
