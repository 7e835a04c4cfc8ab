"""Panoptic quality PQ = SQ x RQ (Kirillov et al., "Panoptic Segmentation", CVPR 2019).

The definition follows the COCO reference implementation literally (cocodataset/panopticapi,
``panopticapi/evaluation.py``, ``pq_compute_single_core``):

* a predicted and a ground-truth segment of the same category match when their IoU > 0.5,
  where the union leaves out the predicted segment's pixels that are void in the ground truth;
  crowd ground-truth segments never match;
* unmatched non-crowd ground-truth segments are false negatives;
* an unmatched predicted segment is a false positive unless more than half of its pixels are
  void in the ground truth or inside the crowd region of its own category (as panopticapi,
  only the last crowd segment of that category in the image's segment order counts);
* per class ``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP``,
  ``RQ = TP / (TP + FP/2 + FN/2)``; the "All", "Things" and "Stuff" values average these over
  the classes with ``TP + FP + FN > 0``.

Segment areas are always counted from the pixels (the ``area`` of a JSON record is not read).
Predicted segments with no pixel are ignored by the metric (the file-level evaluator rejects
them, as panopticapi does). A group with no evaluated class (e.g. a dataset without stuff) gives
NaN where panopticapi would divide by zero.

Speed: an image costs one ``searchsorted`` per segment map and one ``bincount`` of
``gt_index * (P + 1) + pred_index`` (the gt x pred intersection table); matching is a few
tensor operations on that ``[G + 1, P + 1]`` table, with no Python loop over segments.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.data.io import DataError, read_rgb_ids
from lightning_seg.metrics._exact_sum import from_fixed, to_fixed
from lightning_seg.structures import PanopticTargets

__all__ = [
    "PanopticCategories",
    "PanopticCounts",
    "PanopticQualityMetric",
    "evaluate_panoptic_files",
    "intersection_table",
    "load_panoptic_segments",
    "match_segments",
    "panoptic_counts",
    "pq_from_counts",
    "read_json",
    "segment_index",
]


_LUT_MIN_SIZE = 1 << 16  # ids below max(this, pixels) are mapped through a lookup table


@dataclass
class PanopticCounts:
    """Per-class matching statistics, summed over images (or video windows).

    Attributes:
        iou_fixed: ``Tensor[K]`` int64, sum of the IoU of matched pairs in fixed point
            (``lightning_seg.metrics._exact_sum``), so that sums are exact under DDP.
        tp: ``Tensor[K]`` int64 matched pairs.
        fp: ``Tensor[K]`` int64 unmatched predicted segments that count as false positives.
        fn: ``Tensor[K]`` int64 unmatched non-crowd ground-truth segments.
    """

    iou_fixed: Tensor
    tp: Tensor
    fp: Tensor
    fn: Tensor

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str | None = None) -> PanopticCounts:
        z = torch.zeros(num_classes, dtype=torch.int64, device=device)
        return cls(z.clone(), z.clone(), z.clone(), z.clone())

    def __add__(self, other: PanopticCounts) -> PanopticCounts:
        return PanopticCounts(
            self.iou_fixed + other.iou_fixed,
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
        )


def segment_index(segment_map: Tensor, ids: Tensor, void_label: int = 0) -> Tensor:
    """Map every pixel's segment id to its position in ``ids`` (plus one; 0 = void).

    Args:
        segment_map: ``Tensor[H, W]`` int segment id per pixel.
        ids: ``Tensor[S]`` int64 segment ids, unique, without ``void_label``.
        void_label: segment id of void / unlabelled pixels.

    Returns:
        ``Tensor[H * W]`` int64 in ``0..S``: 0 for void pixels, ``i + 1`` for ``ids[i]``.

    Raises:
        ValueError: a pixel carries an id that is neither ``void_label`` nor in ``ids``, or
            ``ids`` has duplicates or contains ``void_label``.
    """
    flat = segment_map.reshape(-1).to(torch.int64)  # [H*W]
    ids = ids.to(device=flat.device, dtype=torch.int64)
    if ids.numel() == 0:
        unknown = flat[flat != void_label]
        if unknown.numel():
            raise ValueError(f"segment ids {_few(unknown)} are in the segment map but not in ids")
        return torch.zeros_like(flat)
    sorted_ids, order = ids.sort()
    if bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        raise ValueError(f"ids must be unique, got duplicates {_few(dup)}")
    if bool((sorted_ids == void_label).any()):
        raise ValueError(f"ids must not contain the void label {void_label}")
    lo, hi = torch.aminmax(flat)
    lo = min(int(lo), int(sorted_ids[0]), void_label)
    hi = max(int(hi), int(sorted_ids[-1]), void_label)
    if lo >= 0 and hi < max(_LUT_MIN_SIZE, flat.numel()):
        # small ids (model outputs): one gather through a lookup table, -1 = unknown id
        lut = torch.full((hi + 1,), -1, dtype=torch.int64, device=flat.device)
        lut[void_label] = 0
        lut[ids] = torch.arange(1, ids.numel() + 1, device=flat.device)
        index = lut[flat]  # [H*W]
        if bool((index < 0).any()):
            raise ValueError(f"segment ids {_few(flat[index < 0])} are in the segment map but not in ids")
        return index
    # large ids (RGB-encoded COCO ids up to 256^3): binary search in the sorted ids
    pos = torch.searchsorted(sorted_ids, flat).clamp_(max=sorted_ids.numel() - 1)  # [H*W]
    found = sorted_ids[pos] == flat
    is_void = flat == void_label
    if not bool((found | is_void).all()):
        raise ValueError(
            f"segment ids {_few(flat[~(found | is_void)])} are in the segment map but not in ids"
        )
    return torch.where(found, order[pos] + 1, torch.zeros_like(pos))


def intersection_table(gt_index: Tensor, pred_index: Tensor, num_gt: int, num_pred: int) -> Tensor:
    """Pixel counts of every (ground-truth segment, predicted segment) pair.

    Args:
        gt_index: ``Tensor[M]`` int64 in ``0..G`` (0 = void), from ``segment_index``.
        pred_index: ``Tensor[M]`` int64 in ``0..P`` (0 = void).
        num_gt: G.
        num_pred: P.

    Returns:
        ``Tensor[G + 1, P + 1]`` int64; row 0 / column 0 are the void pixels.
    """
    width = num_pred + 1
    counts = torch.bincount(gt_index * width + pred_index, minlength=(num_gt + 1) * width)
    return counts.view(num_gt + 1, width)  # [G+1, P+1]


def match_segments(
    table: Tensor,
    gt_labels: Tensor,
    gt_crowd: Tensor,
    pred_labels: Tensor,
    num_classes: int,
    gt_order: Tensor | None = None,
) -> PanopticCounts:
    """TP / FP / FN and matched IoU per class from an intersection table (panopticapi rules).

    Args:
        table: ``Tensor[G + 1, P + 1]`` int64 pixel counts from ``intersection_table``.
        gt_labels: ``Tensor[G]`` int64 class index of each ground-truth segment.
        gt_crowd: ``Tensor[G]`` bool crowd flag of each ground-truth segment.
        pred_labels: ``Tensor[P]`` int64 class index of each predicted segment.
        num_classes: K.
        gt_order: ``Tensor[G]`` int64 rank of each ground-truth segment in the annotation's
            segment order, used to pick the last crowd segment of a class (default: row order).

    Returns:
        The counts of this image (or video window).
    """
    num_gt, num_pred = table.shape[0] - 1, table.shape[1] - 1
    device = table.device
    inter = table[1:, 1:]  # [G, P]
    gt_area = table[1:].sum(1)  # [G]
    pred_area = table[:, 1:].sum(0)  # [P]
    pred_void = table[0, 1:]  # [P] predicted pixels that are void in the ground truth
    same_class = gt_labels[:, None] == pred_labels[None, :]  # [G, P]
    union = gt_area[:, None] + pred_area[None, :] - inter - pred_void[None, :]  # [G, P]
    # IoU > 0.5 exactly, in integers: 2 * inter > union
    match = same_class & ~gt_crowd[:, None] & (2 * inter > union)  # [G, P]
    gt_i, pred_i = match.nonzero(as_tuple=True)
    matched_labels = gt_labels[gt_i]
    iou = inter[gt_i, pred_i].double() / union[gt_i, pred_i].double()
    iou_fixed = torch.zeros(num_classes, dtype=torch.int64, device=device)
    iou_fixed.index_add_(0, matched_labels, to_fixed(iou))
    tp = torch.bincount(matched_labels, minlength=num_classes)

    gt_matched = match.any(1)
    fn = torch.bincount(gt_labels[~gt_matched & ~gt_crowd], minlength=num_classes)

    ignored_pixels = pred_void
    if num_gt > 0 and num_pred > 0:
        crowd_same = gt_crowd[:, None] & same_class  # [G, P]
        if gt_order is None:
            gt_order = torch.arange(num_gt, device=device)
        rank = torch.where(crowd_same, gt_order[:, None] + 1, torch.zeros_like(inter))  # [G, P]
        last_crowd = rank.argmax(0)  # [P] row of the last crowd segment of the pred's class
        crowd_inter = inter.gather(0, last_crowd[None, :])[0]  # [P]
        ignored_pixels = pred_void + torch.where(crowd_same.any(0), crowd_inter, 0)
    ignored = 2 * ignored_pixels > pred_area
    is_fp = ~match.any(0) & ~ignored & (pred_area > 0)
    fp = torch.bincount(pred_labels[is_fp], minlength=num_classes)
    return PanopticCounts(iou_fixed, tp, fp, fn)


def panoptic_counts(
    pred: PanopticTargets, target: PanopticTargets, num_classes: int, void_label: int = 0
) -> PanopticCounts:
    """Matching statistics of one image.

    Args:
        pred: predicted segments (``iscrowd`` is ignored).
        target: ground-truth segments.
        num_classes: K; labels are contiguous class indices ``0..K-1``.
        void_label: segment id of void pixels in both segment maps.

    Raises:
        ValueError: different image sizes, or a segment map with ids missing from its ``ids``.
    """
    if pred.segment_map.shape != target.segment_map.shape:
        raise ValueError(
            f"prediction is {tuple(pred.segment_map.shape)} but ground truth is "
            f"{tuple(target.segment_map.shape)}; predictions must be at the ground-truth size"
        )
    try:
        gt_index = segment_index(target.segment_map, target.ids, void_label)
    except ValueError as exc:
        raise ValueError(f"ground truth: {exc}") from None
    try:
        pred_index = segment_index(pred.segment_map, pred.ids, void_label).to(gt_index.device)
    except ValueError as exc:
        raise ValueError(f"prediction: {exc}") from None
    table = intersection_table(gt_index, pred_index, len(target), len(pred))
    device = table.device
    return match_segments(
        table,
        target.labels.to(device),
        target.iscrowd.to(device=device, dtype=torch.bool),
        pred.labels.to(device),
        num_classes,
    )


def pq_from_counts(counts: PanopticCounts, things: list[int], stuff: list[int]) -> dict[str, Tensor]:
    """PQ / SQ / RQ per class and averaged over all, thing and stuff classes.

    Returns:
        ``pq, sq, rq, n`` (all evaluated classes), the same with suffix ``_th`` (things) and
        ``_st`` (stuff), scalar tensors (NaN when a group has no evaluated class); and
        ``pq_per_class, sq_per_class, rq_per_class`` ``Tensor[K]`` float64 (NaN for classes with
        no segment in ground truth or prediction), ``tp, fp, fn`` ``Tensor[K]`` int64.
    """
    iou = from_fixed(counts.iou_fixed)
    tp, fp, fn = counts.tp.double(), counts.fp.double(), counts.fn.double()
    denom = tp + 0.5 * fp + 0.5 * fn
    present = (counts.tp + counts.fp + counts.fn) > 0
    nan = torch.full_like(iou, math.nan)
    pq_c = torch.where(present, iou / denom.clamp(min=0.5), nan)
    sq_c = torch.where(present, torch.where(counts.tp > 0, iou / tp.clamp(min=1), 0.0), nan)
    rq_c = torch.where(present, tp / denom.clamp(min=0.5), nan)
    out: dict[str, Tensor] = {}
    groups = (("", sorted(things + stuff)), ("_th", things), ("_st", stuff))
    for suffix, classes in groups:
        idx = torch.as_tensor(classes, dtype=torch.int64, device=iou.device)
        sel = idx[present[idx]]
        out[f"pq{suffix}"] = pq_c[sel].mean() if sel.numel() else nan.new_tensor(math.nan)
        out[f"sq{suffix}"] = sq_c[sel].mean() if sel.numel() else nan.new_tensor(math.nan)
        out[f"rq{suffix}"] = rq_c[sel].mean() if sel.numel() else nan.new_tensor(math.nan)
        out[f"n{suffix}"] = torch.tensor(sel.numel(), device=iou.device)
    out.update(
        pq_per_class=pq_c, sq_per_class=sq_c, rq_per_class=rq_c, tp=counts.tp, fp=counts.fp, fn=counts.fn
    )
    return out


def _check_classes(things: list[int], stuff: list[int]) -> int:
    """Validate the thing/stuff split and return the number of class indices K."""
    things, stuff = [int(c) for c in things], [int(c) for c in stuff]
    both = things + stuff
    if not both:
        raise ValueError("at least one of `things` and `stuff` must be non-empty")
    if len(set(both)) != len(both):
        raise ValueError(
            f"`things` and `stuff` must be disjoint lists of unique class indices, got {things} and {stuff}"
        )
    if min(both) < 0:
        raise ValueError(f"class indices must be >= 0, got {sorted(both)}")
    return max(both) + 1


class PanopticQualityMetric(Metric):
    """Dataset-level panoptic quality with panopticapi's rules (see the module docstring).

    Example::

        metric = PanopticQualityMetric(things=info.thing_classes, stuff=info.stuff_classes)
        metric.update(pred_segments, batch.panoptic)   # lists of PanopticTargets
        result = metric.compute()                      # {"pq": ..., "pq_th": ..., ...}

    Args:
        things: contiguous class indices of countable things.
        stuff: contiguous class indices of amorphous stuff.
        class_names: optional name per class index, used by ``per_class``.
        void_label: segment id of void / unlabelled pixels in the segment maps.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        things: list[int],
        stuff: list[int],
        class_names: list[str] | None = None,
        void_label: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = _check_classes(things, stuff)
        self.things = sorted(int(c) for c in things)
        self.stuff = sorted(int(c) for c in stuff)
        if class_names is not None and len(class_names) < self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {self.num_classes} classes")
        self.class_names = class_names
        self.void_label = void_label
        known = torch.zeros(self.num_classes, dtype=torch.bool)
        known[self.things + self.stuff] = True
        self._known = known
        for name in ("iou_fixed", "tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(self.num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _check_labels(self, labels: Tensor, what: str) -> None:
        if labels.numel() == 0:
            return
        known = self._known.to(labels.device)
        bad = (labels < 0) | (labels >= self.num_classes)
        if not bool(bad.any()):
            bad = ~known[labels]
        if bool(bad.any()):
            raise ValueError(
                f"{what} labels {_few(labels[bad])} are neither in `things` nor in `stuff` "
                f"(classes 0..{self.num_classes - 1})"
            )

    def update(self, preds: list[PanopticTargets], targets: list[PanopticTargets]) -> None:
        """Add a batch of images.

        Args:
            preds: predicted segments per image (``iscrowd`` ignored), same size as the target.
            targets: ground-truth segments per image.
        """
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
        for i, (pred, target) in enumerate(zip(preds, targets)):
            self._check_labels(target.labels, f"image {i}: ground-truth")
            self._check_labels(pred.labels, f"image {i}: predicted")
            try:
                counts = panoptic_counts(pred, target, self.num_classes, self.void_label)
            except ValueError as exc:
                raise ValueError(f"image {i} of the batch: {exc}") from None
            device = self.tp.device
            self.iou_fixed += counts.iou_fixed.to(device)
            self.tp += counts.tp.to(device)
            self.fp += counts.fp.to(device)
            self.fn += counts.fn.to(device)
        self.num_images += len(targets)

    def compute(self) -> dict[str, Tensor]:
        """See ``pq_from_counts`` for the keys; also ``num_images``."""
        counts = PanopticCounts(self.iou_fixed, self.tp, self.fp, self.fn)
        out = pq_from_counts(counts, self.things, self.stuff)
        out["num_images"] = self.num_images
        return out

    def per_class(self, result: dict[str, Tensor]) -> dict[str, dict[str, float]]:
        """``{class name (or index): {"pq", "sq", "rq"}}`` for the evaluated classes of a result."""
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        table = {}
        for c in self.things + self.stuff:
            if not math.isnan(float(result["pq_per_class"][c])):
                table[names[c]] = {k: float(result[f"{k}_per_class"][c]) for k in ("pq", "sq", "rq")}
        return table


def _few(values: Tensor, limit: int = 5) -> list[int]:
    """The first few distinct values, for error messages."""
    return torch.unique(values.reshape(-1))[:limit].tolist()


# --------------------------------------------------------------------------------------------
# COCO panoptic files (JSON + RGB-encoded PNGs)
# --------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> dict | list:
    """Load a JSON file; a missing or malformed file raises ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: JSON file not found.")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed JSON ({exc}). Fix or regenerate the file.") from exc


@dataclass
class PanopticCategories:
    """The categories of a COCO panoptic ground-truth JSON, in file order.

    Attributes:
        category_ids: dataset id of each contiguous index.
        names: category names.
        isthing: thing (True) or stuff (False) per index.
    """

    category_ids: list[int]
    names: list[str]
    isthing: list[bool]

    @classmethod
    def from_json(cls, data: dict, path: str | os.PathLike) -> PanopticCategories:
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, list) or not cats:
            raise DataError(f"{path}: no 'categories' list; a COCO panoptic ground-truth JSON needs one.")
        ids, names, isthing = [], [], []
        for i, c in enumerate(cats):
            if not isinstance(c, dict) or "id" not in c or "isthing" not in c:
                raise DataError(f"{path}: categories[{i}] needs 'id' and 'isthing', got {str(c)[:120]}")
            ids.append(int(c["id"]))
            names.append(str(c.get("name", c["id"])))
            isthing.append(bool(c["isthing"]))
        if len(set(ids)) != len(ids):
            raise DataError(f"{path}: duplicate category ids in 'categories'.")
        return cls(ids, names, isthing)

    @property
    def things(self) -> list[int]:
        return [i for i, t in enumerate(self.isthing) if t]

    @property
    def stuff(self) -> list[int]:
        return [i for i, t in enumerate(self.isthing) if not t]

    @property
    def id_to_index(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.category_ids)}


def annotations_by_image(data: dict | list, path: str | os.PathLike) -> dict:
    """``{image_id: annotation}`` of a COCO panoptic JSON; bad records raise ``DataError``."""
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise DataError(f"{path}: no 'annotations' list (COCO panoptic format expected).")
    out = {}
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or not {"image_id", "file_name", "segments_info"} <= set(ann):
            raise DataError(
                f"{path}: annotations[{i}] needs 'image_id', 'file_name' and 'segments_info', "
                f"got keys {sorted(ann) if isinstance(ann, dict) else type(ann).__name__}"
            )
        if ann["image_id"] in out:
            raise DataError(f"{path}: two annotations for image_id {ann['image_id']}.")
        out[ann["image_id"]] = ann
    return out


def load_panoptic_segments(
    folder: str | os.PathLike,
    ann: dict,
    categories: PanopticCategories,
    json_path: str | os.PathLike,
    is_prediction: bool,
) -> PanopticTargets:
    """Read one annotation's PNG and segments into ``PanopticTargets`` (labels contiguous).

    Checks (``DataError`` naming the JSON, the image and the PNG): PNG ids missing from
    ``segments_info``, duplicate ids, unknown ``category_id``; for predictions also segments of
    ``segments_info`` with no pixel in the PNG (panopticapi rejects them too).
    """
    png = Path(folder) / ann["file_name"]
    where = f"{json_path}: image_id {ann['image_id']} ({png})"
    id_to_index = categories.id_to_index
    ids, labels, crowd = [], [], []
    for j, seg in enumerate(ann["segments_info"]):
        if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
            raise DataError(f"{where}: segments_info[{j}] needs 'id' and 'category_id', got {str(seg)[:120]}")
        if seg["category_id"] not in id_to_index:
            raise DataError(
                f"{where}: segment {seg['id']} has unknown category_id {seg['category_id']} "
                f"(not in the ground-truth categories)."
            )
        ids.append(int(seg["id"]))
        labels.append(id_to_index[seg["category_id"]])
        crowd.append(bool(seg.get("iscrowd", 0)) and not is_prediction)
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: duplicate segment ids in segments_info.")
    if 0 in ids:
        raise DataError(f"{where}: segment id 0 is reserved for void pixels.")
    segment_map = torch.from_numpy(read_rgb_ids(png))
    ids_t = torch.tensor(ids, dtype=torch.int64)
    try:
        index = segment_index(segment_map, ids_t, 0)
    except ValueError:
        present = torch.unique(segment_map)
        missing = sorted(set(present.tolist()) - set(ids) - {0})
        raise DataError(
            f"{where}: segment ids {missing[:10]} are in the PNG but not in segments_info. Every "
            f"non-zero id of the PNG (id = R + 256 G + 256^2 B) needs a segments_info entry."
        ) from None
    if is_prediction and ids:
        area = torch.bincount(index, minlength=len(ids) + 1)[1:]
        if bool((area == 0).any()):
            empty = ids_t[area == 0].tolist()
            raise DataError(
                f"{where}: segments {empty[:10]} are in segments_info but have no pixel in the PNG; "
                f"remove them from the JSON."
            )
    return PanopticTargets(
        segment_map=segment_map,
        ids=ids_t,
        labels=torch.tensor(labels, dtype=torch.int64),
        isthing=torch.tensor([categories.isthing[c] for c in labels], dtype=torch.bool),
        iscrowd=torch.tensor(crowd, dtype=torch.bool),
    )


def panopticapi_results(result: dict[str, Tensor], categories: PanopticCategories) -> dict:
    """Convert ``pq_from_counts`` output to panopticapi's result layout.

    ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq",
    "rq", "tp", "fp", "fn", "name"}}}``; like panopticapi, classes without any segment get 0.0.
    """
    out: dict = {}
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        out[name] = {k: float(result[f"{k}{suffix}"]) for k in ("pq", "sq", "rq")}
        out[name]["n"] = int(result[f"n{suffix}"])
    per_class = {}
    for i, cat_id in enumerate(categories.category_ids):
        entry = {}
        for k in ("pq", "sq", "rq"):
            v = float(result[f"{k}_per_class"][i])
            entry[k] = 0.0 if math.isnan(v) else v
        entry.update(
            tp=int(result["tp"][i]), fp=int(result["fp"][i]), fn=int(result["fn"][i]), name=categories.names[i]
        )
        per_class[cat_id] = entry
    out["per_class"] = per_class
    return out


def evaluate_panoptic_files(
    gt_json: str | os.PathLike,
    gt_folder: str | os.PathLike,
    pred_json: str | os.PathLike,
    pred_folder: str | os.PathLike,
) -> dict:
    """PQ of COCO panoptic prediction files, like panopticapi's ``pq_compute``.

    Args:
        gt_json: ground-truth JSON (``categories`` and ``annotations`` with ``segments_info``).
        gt_folder: folder of the ground-truth PNGs (``file_name`` of each annotation).
        pred_json: prediction JSON with the same layout (its ``categories`` are not read).
        pred_folder: folder of the predicted PNGs.

    Returns:
        panopticapi's layout (see ``panopticapi_results``) plus ``"num_images"``.

    Raises:
        DataError: malformed JSON, missing prediction for a ground-truth image, PNGs of different
            sizes, segment ids missing from the JSON, unknown category ids.
    """
    gt_data = read_json(gt_json)
    pred_data = read_json(pred_json)
    categories = PanopticCategories.from_json(gt_data, gt_json)
    gt_anns = annotations_by_image(gt_data, gt_json)
    pred_anns = annotations_by_image(pred_data, pred_json)
    num_classes = len(categories.category_ids)
    total = PanopticCounts.zeros(num_classes)
    for image_id, gt_ann in gt_anns.items():
        if image_id not in pred_anns:
            raise DataError(f"{pred_json}: no prediction for image_id {image_id} ({gt_ann['file_name']}).")
        target = load_panoptic_segments(gt_folder, gt_ann, categories, gt_json, is_prediction=False)
        pred_ann = pred_anns[image_id]
        pred = load_panoptic_segments(pred_folder, pred_ann, categories, pred_json, is_prediction=True)
        if pred.image_size != target.image_size:
            raise DataError(
                f"{pred_json}: image_id {image_id}: predicted PNG {Path(pred_folder) / pred_ann['file_name']} "
                f"is {pred.image_size} (H, W) but the ground truth is {target.image_size}; predictions "
                f"must be at the original image size."
            )
        total = total + panoptic_counts(pred, target, num_classes)
    result = pq_from_counts(total, categories.things, categories.stuff)
    out = panopticapi_results(result, categories)
    out["num_images"] = len(gt_anns)
    return out
