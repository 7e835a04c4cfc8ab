"""Keypoint / landmark localisation metrics: PCK, PCKh and NME (with AUC and failure rate).

* **PCK@alpha** (Yang and Ramanan, TPAMI 2013): a labelled keypoint is correct when its distance
  to the ground truth is at most ``alpha * norm``; ``norm`` is per instance, e.g. the larger side
  of the object box (``BoxMaxSideNorm``) or the torso size (``KeypointDistanceNorm``).
* **PCKh@0.5** (Andriluka et al., CVPR 2014, MPII): PCK with ``norm = 0.6 * head-box diagonal``
  (``HeadSizeNorm``, the ``SC_BIAS`` of the MPII evaluation code), ``alpha = 0.5``.
* **NME** (face alignment): per image, the mean over labelled landmarks of the distance divided
  by ``norm`` (inter-ocular: outer eye corners, inter-pupil: eye centres, or box size
  ``sqrt(w * h)``), averaged over images. **AUC@T** is the area under the cumulative error
  distribution of the per-image NME on ``[0, T]`` divided by T, integrated exactly
  (``mean(max(0, T - nme)) / T``; the usual Simpson rule on a 1e-4 grid agrees to ~1e-4);
  **failure rate@T** is the fraction of images with NME > T.

Only keypoints labelled in the ground truth (visibility > 0) count. An instance whose
normaliser is not positive (e.g. its eye corners are not labelled) is skipped and counted in
``num_invalid_norm``. Counts are integers and real sums are fixed point (``_exact_sum``), so DDP
results equal single-process results exactly.

Inputs are aligned one-to-one (top-down evaluation): ``preds[i]`` is the prediction for
``target[i]``. OKS AP for COCO keypoints lives in ``lightning_seg.metrics.coco``.
"""

from __future__ import annotations

import math
import os
from typing import Protocol

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.constants import COCO_KEYPOINT_OFFSET
from lightning_seg.data.io import DataError
from lightning_seg.metrics._exact_sum import from_fixed, to_fixed

__all__ = [
    "NME",
    "PCK",
    "PCKh",
    "BoxMaxSideNorm",
    "BoxSqrtAreaNorm",
    "HeadSizeNorm",
    "KeypointCentroidDistanceNorm",
    "KeypointDistanceNorm",
    "KeypointNormalizer",
    "load_keypoint_pairs",
    "normalized_distances",
]


# --------------------------------------------------------------------------------------------
# Normalisers: (target Tensor[N, K, 3], boxes Tensor[N, 4] | None) -> Tensor[N]
# --------------------------------------------------------------------------------------------


class KeypointNormalizer(Protocol):
    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor: ...


def _need_boxes(boxes: Tensor | None, who: str) -> Tensor:
    if boxes is None:
        raise ValueError(f"{who} needs boxes Tensor[N, 4] (x1y1x2y2) in update(..., boxes=...)")
    return boxes.double()


class BoxMaxSideNorm:
    """``max(w, h)`` of the object box (PCK normalised by the box, as mmpose's ``bbox``)."""

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        b = _need_boxes(boxes, "BoxMaxSideNorm")
        return torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


class BoxSqrtAreaNorm:
    """``sqrt(w * h)`` of the face / object box (NME normalised by box size, e.g. AFLW)."""

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        b = _need_boxes(boxes, "BoxSqrtAreaNorm")
        return ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()


class HeadSizeNorm:
    """``scale * ||head box diagonal||`` (MPII PCKh; ``boxes`` are the head boxes).

    Args:
        scale: 0.6 in the MPII evaluation code (``SC_BIAS``).
    """

    def __init__(self, scale: float = 0.6) -> None:
        self.scale = scale

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        b = _need_boxes(boxes, "HeadSizeNorm")
        return self.scale * torch.hypot(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


class KeypointDistanceNorm:
    """Distance between two ground-truth keypoints; 0 (instance skipped) when one is unlabelled.

    Inter-ocular (outer eye corners): 300-W ``(36, 45)``, WFLW ``(60, 72)``; inter-pupil with
    annotated pupils: WFLW ``(96, 97)``, COFW ``(8, 9)``; torso: COCO left shoulder / right hip
    ``(5, 12)``.
    """

    def __init__(self, first: int, second: int) -> None:
        self.first, self.second = first, second

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        a, b = target[:, self.first].double(), target[:, self.second].double()  # [N, 3]
        d = torch.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1])
        return torch.where((a[:, 2] > 0) & (b[:, 2] > 0), d, torch.zeros_like(d))


class KeypointCentroidDistanceNorm:
    """Distance between the centroids of two groups of ground-truth keypoints.

    Inter-pupil from eye contours: 300-W ``first=range(36, 42), second=range(42, 48)``. The
    centroid uses the labelled keypoints of the group; 0 (skipped) when a group has none.
    """

    def __init__(self, first: list[int], second: list[int]) -> None:
        self.first, self.second = list(first), list(second)

    @staticmethod
    def _centroid(points: Tensor) -> tuple[Tensor, Tensor]:
        vis = (points[..., 2] > 0).double()  # [N, G]
        n = vis.sum(1)
        c = (points[..., :2].double() * vis[..., None]).sum(1) / n.clamp(min=1)[:, None]  # [N, 2]
        return c, n > 0

    def __call__(self, target: Tensor, boxes: Tensor | None) -> Tensor:
        ca, va = self._centroid(target[:, self.first])
        cb, vb = self._centroid(target[:, self.second])
        d = torch.linalg.vector_norm(ca - cb, dim=1)
        return torch.where(va & vb, d, torch.zeros_like(d))


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


def normalized_distances(preds: Tensor, target: Tensor, norm: Tensor) -> tuple[Tensor, Tensor]:
    """Distances divided by the per-instance normaliser, and which of them count.

    Args:
        preds: ``Tensor[N, K, >=2]`` predicted ``(x, y, ...)``.
        target: ``Tensor[N, K, 3]`` ground truth ``(x, y, visibility)``.
        norm: ``Tensor[N]`` normaliser per instance.

    Returns:
        ``Tensor[N, K]`` float64 normalised distances, and ``Tensor[N, K]`` bool: labelled
        keypoint of an instance with a positive, finite normaliser.

    Raises:
        ValueError: bad shapes, or a NaN prediction for a keypoint that counts.
    """
    if target.ndim != 3 or target.shape[-1] != 3:
        raise ValueError(f"target must be Tensor[N, K, 3] (x, y, visibility), got {tuple(target.shape)}")
    if preds.ndim != 3 or preds.shape[:2] != target.shape[:2] or preds.shape[-1] < 2:
        raise ValueError(
            f"preds must be Tensor[N={target.shape[0]}, K={target.shape[1]}, >=2], got {tuple(preds.shape)}"
        )
    norm = norm.to(device=target.device, dtype=torch.float64)
    valid = (target[..., 2] > 0) & ((norm > 0) & torch.isfinite(norm))[:, None]  # [N, K]
    diff = preds[..., :2].to(target.device).double() - target[..., :2].double()  # [N, K, 2]
    dist = torch.linalg.vector_norm(diff, dim=-1) / norm.clamp(min=1e-12)[:, None]  # [N, K]
    if bool(torch.isnan(dist[valid]).any()):
        raise ValueError("predictions contain NaN for labelled keypoints")
    return dist, valid


class _KeypointMetricBase(Metric):
    is_differentiable = False
    full_state_update = False

    def _distances(self, preds: Tensor, target: Tensor, boxes: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        norm = self.normalizer(target, boxes)  # [N]
        norm_ok = (norm > 0) & torch.isfinite(norm)
        dist, valid = normalized_distances(preds, target, norm)
        self.num_invalid_norm += int((~norm_ok & (target[..., 2] > 0).any(1)).sum())
        return dist, valid, norm_ok


class PCK(_KeypointMetricBase):
    """Percentage of correct keypoints at ``alpha * norm`` (see the module docstring).

    Example::

        pck = PCK(alpha=0.2, normalizer=BoxMaxSideNorm())
        pck.update(pred_keypoints, gt_keypoints, boxes=gt_boxes)
        pck.compute()["pck"]

    Args:
        alpha: threshold as a fraction of the normaliser; a keypoint is correct when
            ``distance <= alpha * norm``.
        normalizer: maps ``(target, boxes)`` to a per-instance length.
        num_keypoints: K.
        keypoint_names: optional names for ``per_keypoint``.
    """

    higher_is_better = True

    def __init__(
        self,
        num_keypoints: int,
        alpha: float = 0.2,
        normalizer: KeypointNormalizer | None = None,
        keypoint_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = alpha
        self.normalizer = normalizer if normalizer is not None else BoxMaxSideNorm()
        self.num_keypoints = num_keypoints
        self.keypoint_names = keypoint_names
        zeros = torch.zeros(num_keypoints, dtype=torch.int64)
        self.add_state("correct", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("labelled", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("num_instances", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_invalid_norm", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, boxes: Tensor | None = None) -> None:
        """Add instances.

        Args:
            preds: ``Tensor[N, K, >=2]`` predicted coordinates (pixels), aligned with ``target``.
            target: ``Tensor[N, K, 3]`` ground truth ``(x, y, visibility)``.
            boxes: ``Tensor[N, 4]`` x1y1x2y2 boxes the normaliser needs (object or head boxes).
        """
        if target.shape[1] != self.num_keypoints:
            raise ValueError(f"target has {target.shape[1]} keypoints, metric expects {self.num_keypoints}")
        dist, valid, norm_ok = self._distances(preds, target, boxes)
        hit = valid & (dist <= self.alpha)
        self.correct += hit.sum(0).to(self.correct.device)
        self.labelled += valid.sum(0).to(self.labelled.device)
        self.num_instances += int(norm_ok.sum())

    def compute(self) -> dict[str, Tensor]:
        """``pck`` (all labelled keypoints pooled, the MPII "Mean"), ``pck_per_keypoint``
        ``Tensor[K]`` (NaN where none is labelled), ``pck_mean_over_keypoints`` (mmpose's
        average of the per-keypoint values), ``num_keypoints``, ``num_instances``,
        ``num_invalid_norm``."""
        per_kpt = torch.where(self.labelled > 0, self.correct.double() / self.labelled.clamp(min=1), math.nan)
        total = self.labelled.sum()
        nan = torch.tensor(math.nan, dtype=torch.float64, device=per_kpt.device)
        return {
            "pck": self.correct.sum().double() / total if total > 0 else nan,
            "pck_per_keypoint": per_kpt,
            "pck_mean_over_keypoints": per_kpt.nanmean() if total > 0 else nan,
            "num_keypoints": total,
            "num_instances": self.num_instances,
            "num_invalid_norm": self.num_invalid_norm,
        }

    def per_keypoint(self, result: dict[str, Tensor]) -> dict[str, float]:
        names = self.keypoint_names or [str(i) for i in range(self.num_keypoints)]
        return {n: float(v) for n, v in zip(names, result["pck_per_keypoint"])}


class PCKh(PCK):
    """PCKh: PCK normalised by the head size (MPII), ``alpha = 0.5`` by default.

    ``boxes`` given to ``update`` are the head boxes (x1y1x2y2).
    """

    def __init__(
        self,
        num_keypoints: int,
        alpha: float = 0.5,
        normalizer: KeypointNormalizer | None = None,
        keypoint_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            num_keypoints,
            alpha,
            normalizer if normalizer is not None else HeadSizeNorm(0.6),
            keypoint_names,
            **kwargs,
        )


class NME(_KeypointMetricBase):
    """Normalised mean error with AUC and failure rate at ``failure_thresh`` (module docstring).

    Example::

        nme = NME(normalizer=KeypointDistanceNorm(36, 45), failure_thresh=0.08)  # 300-W
        nme.update(pred_landmarks, gt_landmarks)
        nme.compute()  # {"nme", "auc", "failure_rate", ...}

    Args:
        normalizer: maps ``(target, boxes)`` to a per-image length.
        failure_thresh: T for AUC@T and failure rate@T (0.08 or 0.10 are usual).
    """

    higher_is_better = False

    def __init__(self, normalizer: KeypointNormalizer, failure_thresh: float = 0.10, **kwargs) -> None:
        super().__init__(**kwargs)
        if failure_thresh <= 0:
            raise ValueError(f"failure_thresh must be > 0, got {failure_thresh}")
        self.normalizer = normalizer
        self.failure_thresh = failure_thresh
        self.add_state("nme_fixed", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("auc_fixed", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_failures", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_instances", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_invalid_norm", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, boxes: Tensor | None = None) -> None:
        """Add images: ``preds`` ``Tensor[N, K, >=2]``, ``target`` ``Tensor[N, K, 3]``,
        ``boxes`` ``Tensor[N, 4]`` when the normaliser needs them."""
        dist, valid, _ = self._distances(preds, target, boxes)
        n_valid = valid.sum(1)  # [N]
        keep = n_valid > 0
        if not bool(torch.isfinite(dist[valid]).all()):
            raise ValueError("predictions must be finite for every labelled landmark")
        per_image = (torch.where(valid, dist, 0.0).sum(1) / n_valid.clamp(min=1))[keep]  # [N']
        device = self.nme_fixed.device
        self.nme_fixed += to_fixed(per_image).sum().to(device)
        self.auc_fixed += to_fixed((self.failure_thresh - per_image).clamp(min=0)).sum().to(device)
        self.num_failures += int((per_image > self.failure_thresh).sum())
        self.num_instances += int(keep.sum())

    def compute(self) -> dict[str, Tensor]:
        """``nme``, ``auc``, ``failure_rate`` (NaN with no image), ``num_instances``,
        ``num_invalid_norm``."""
        n = self.num_instances.double()
        if int(n) == 0:
            nan = torch.tensor(math.nan, dtype=torch.float64)
            return {
                "nme": nan, "auc": nan, "failure_rate": nan,
                "num_instances": self.num_instances, "num_invalid_norm": self.num_invalid_norm,
            }
        return {
            "nme": from_fixed(self.nme_fixed) / n,
            "auc": from_fixed(self.auc_fixed) / (n * self.failure_thresh),
            "failure_rate": self.num_failures.double() / n,
            "num_instances": self.num_instances,
            "num_invalid_norm": self.num_invalid_norm,
        }


# --------------------------------------------------------------------------------------------
# COCO-style keypoint files
# --------------------------------------------------------------------------------------------


def load_keypoint_pairs(
    gt_json: str | os.PathLike,
    dt_json: str | os.PathLike,
    require_all: bool,
    box_field: str = "bbox",
) -> dict:
    """Pair ground-truth keypoint annotations with predictions (top-down evaluation).

    Ground truth: COCO keypoint JSON (``annotations`` with ``keypoints`` ``[x, y, v] * K``,
    ``bbox`` xywh, ``image_id``, ``id``; crowd annotations and those without a labelled keypoint
    are skipped). Predictions: a COCO results list (or ``{"annotations": [...]}``) of
    ``{"image_id", "keypoints", ["score"], ["annotation_id"]}``. A prediction with
    ``annotation_id`` goes to that annotation; the others are assigned per image greedily by
    smallest mean distance over the labelled keypoints. Unmatched predictions are ignored.

    Both files hold COCO's pixel indices; the tensors returned are in the continuous frame of
    the COCO reader (``lightning_seg.data.formats.coco``): ``+ 0.5`` on ``x, y`` of labelled
    ground-truth keypoints (unlabelled ones stay as written) and of every prediction. The
    metrics only see differences and box sizes, so their numbers do not depend on it.

    Args:
        gt_json: ground-truth file.
        dt_json: prediction file.
        require_all: raise when an annotation gets no prediction (NME); otherwise its keypoints
            are set to +inf, i.e. counted wrong (PCK).
        box_field: annotation field of the boxes returned (``bbox`` xywh, or ``head_box``
            x1y1x2y2 for PCKh).

    Returns:
        ``{"preds": Tensor[N, K, 2], "target": Tensor[N, K, 3], "boxes": Tensor[N, 4] x1y1x2y2,
        "num_missing": int, "num_unmatched_predictions": int}``.

    Raises:
        DataError: malformed files, keypoint arrays of the wrong length, unknown annotation ids,
            missing boxes, or (``require_all``) annotations without prediction.
    """
    from lightning_seg.metrics.panoptic import read_json

    gt = read_json(gt_json)
    dt = read_json(dt_json)
    if not isinstance(gt, dict) or not isinstance(gt.get("annotations"), list):
        raise DataError(f"{gt_json}: no 'annotations' list (COCO keypoint format expected).")
    dts = dt.get("annotations") if isinstance(dt, dict) else dt
    if not isinstance(dts, list):
        raise DataError(f"{dt_json}: expected a list of results or {{'annotations': [...]}}.")

    def parse_kpts(values, where: str, labelled_only: bool) -> Tensor:
        """``[K, 3]`` from a flat COCO list, moved to the continuous frame (pixel index + 0.5)."""
        if not isinstance(values, list) or len(values) % 3 or not values:
            raise DataError(
                f"{where}: 'keypoints' must be a flat list [x1, y1, v1, x2, ...], got {str(values)[:80]}"
            )
        k = torch.tensor(values, dtype=torch.float64).view(-1, 3)  # [K, 3]
        shift = k[:, 2:] > 0 if labelled_only else torch.ones_like(k[:, 2:], dtype=torch.bool)
        k[:, :2] += torch.where(shift, COCO_KEYPOINT_OFFSET, 0.0)  # [K, 2]
        return k

    anns, by_id = [], {}
    num_k = None
    for i, a in enumerate(gt["annotations"]):
        where = f"{gt_json}: annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
        if not isinstance(a, dict) or "keypoints" not in a or "image_id" not in a:
            raise DataError(f"{where}: needs 'image_id' and 'keypoints'.")
        k = parse_kpts(a["keypoints"], where, labelled_only=True)
        num_k = num_k or k.shape[0]
        if k.shape[0] != num_k:
            raise DataError(f"{where}: {k.shape[0]} keypoints, other annotations have {num_k}.")
        if a.get("iscrowd", 0) or not bool((k[:, 2] > 0).any()):
            continue
        box = a.get(box_field)
        if box is None or len(box) != 4:
            raise DataError(f"{where}: needs '{box_field}' with 4 numbers for this metric's normaliser.")
        box = torch.tensor(box, dtype=torch.float64)
        if box_field == "bbox":
            box = torch.cat([box[:2], box[:2] + box[2:]])  # xywh -> xyxy
        by_id[a.get("id", i)] = len(anns)
        anns.append({"image_id": a["image_id"], "kpts": k, "box": box})
    if not anns:
        raise DataError(f"{gt_json}: no non-crowd annotation with labelled keypoints.")
    preds = torch.full((len(anns), num_k, 2), math.inf, dtype=torch.float64)
    assigned = torch.zeros(len(anns), dtype=torch.bool)
    pending: dict = {}
    for j, d in enumerate(dts):
        where = f"{dt_json}: result [{j}]"
        if not isinstance(d, dict) or "keypoints" not in d or "image_id" not in d:
            raise DataError(f"{where}: needs 'image_id' and 'keypoints'.")
        k = parse_kpts(d["keypoints"], where, labelled_only=False)
        if k.shape[0] != num_k:
            raise DataError(f"{where}: {k.shape[0]} keypoints, the ground truth has {num_k}.")
        if "annotation_id" in d:
            if d["annotation_id"] not in by_id:
                raise DataError(
                    f"{where}: annotation_id {d['annotation_id']} is not a ground-truth annotation "
                    f"with keypoints."
                )
            i = by_id[d["annotation_id"]]
            preds[i], assigned[i] = k[:, :2], True
        else:
            pending.setdefault(d["image_id"], []).append(k[:, :2])
    num_unmatched = 0
    for image_id, cands in pending.items():
        gts = [i for i, a in enumerate(anns) if a["image_id"] == image_id and not assigned[i]]
        if not gts:
            num_unmatched += len(cands)
            continue
        tgt = torch.stack([anns[i]["kpts"] for i in gts])  # [G, K, 3]
        cand = torch.stack(cands)  # [D, K, 2]
        vis = (tgt[:, :, 2] > 0).double()  # [G, K]
        dist = torch.linalg.vector_norm(cand[None] - tgt[:, None, :, :2], dim=-1)  # [G, D, K]
        cost = (dist * vis[:, None]).sum(-1) / vis.sum(-1, keepdim=True)  # [G, D]
        for _ in range(min(len(gts), len(cands))):
            flat = int(torch.argmin(cost))
            g, c = divmod(flat, cost.shape[1])
            preds[gts[g]], assigned[gts[g]] = cand[c], True
            cost[g, :] = math.inf
            cost[:, c] = math.inf
        num_unmatched += max(0, len(cands) - len(gts))
    missing = (~assigned).nonzero().flatten().tolist()
    if missing and require_all:
        i = missing[0]
        raise DataError(
            f"{dt_json}: {len(missing)} ground-truth annotations have no prediction (e.g. image_id "
            f"{anns[i]['image_id']}); this metric needs one prediction per annotation."
        )
    return {
        "preds": preds,
        "target": torch.stack([a["kpts"] for a in anns]),
        "boxes": torch.stack([a["box"] for a in anns]),
        "num_missing": len(missing),
        "num_unmatched_predictions": num_unmatched,
    }
