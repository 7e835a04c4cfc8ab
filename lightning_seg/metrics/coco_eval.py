"""Running COCOeval on in-memory COCO datasets, and its numbers: stat names, summary, table.

``accumulate`` runs ``COCOeval.evaluate`` and ``accumulate`` with faster-coco-eval (C++,
default) or pycocotools (with a ``COCOeval`` subclass for Boundary AP), and ``Accumulated``
turns precision/recall into the ``COCOeval.stats`` numbers. ``format_coco_table`` prints them
as pycocotools does. The conventions that change numbers are listed in ``metrics/coco.py``.
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

from lightning_seg.constants import COCO_PERSON_KEYPOINT_SIGMAS
from lightning_seg.metrics.boundary import rle_to_boundary_rle

IOU_TYPES = ("bbox", "segm", "boundary", "keypoints")
BACKENDS = ("faster_coco_eval", "pycocotools")
#: OKS sigmas of the 17 COCO person keypoints (pycocotools' defaults).
COCO_PERSON_SIGMAS = COCO_PERSON_KEYPOINT_SIGMAS
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: IoU types evaluated on masks (RLE ``segmentation``).
MASK_IOU_TYPES = ("segm", "boundary")


def detection_stat_names(max_dets: Sequence[int] = (1, 10, 100)) -> tuple[str, ...]:
    """Names of the 12 box/mask stats, in ``COCOeval.stats`` order."""
    m0, m1, m2 = max_dets
    ap = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return (*ap, f"AR{m0}", f"AR{m1}", f"AR{m2}", "ARs", "ARm", "ARl")


def check_max_dets(max_dets: Sequence[int]) -> tuple[int, int, int]:
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
def gc_paused():
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
class Accumulated:
    """``COCOeval.eval`` precision/recall and the parameters of their axes."""

    precision: np.ndarray  # [T, R, K, A, M], -1 where undefined
    recall: np.ndarray  # [T, K, A, M]
    cat_ids: list[int]  # the K axis
    iou_thrs: np.ndarray
    area_labels: list[str]
    max_dets: list[int]

    @staticmethod
    def concat(parts: list[Accumulated]) -> Accumulated:
        """Join evaluations of disjoint category sets along K (categories are independent in
        ``COCOeval.accumulate``, so this equals evaluating all categories at once)."""
        first = parts[0]
        return Accumulated(
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


def accumulate(
    gt_dataset: dict,
    dt_anns: list[dict],
    iou_type: str,
    backend: str = "faster_coco_eval",
    max_dets: Sequence[int] = (1, 10, 100),
    kpt_sigmas: Sequence[float] | None = None,
    boundary_dilation_ratio: float = 0.02,
) -> Accumulated:
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
    max_dets = check_max_dets(max_dets)
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
    return Accumulated(
        evaluator.eval["precision"],
        evaluator.eval["recall"],
        [int(c) for c in p.catIds],
        p.iouThrs,
        list(p.areaRngLbl),
        list(p.maxDets),
    )


# --------------------------------------------------------------------------------------------
# The stats as a table
# --------------------------------------------------------------------------------------------


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
