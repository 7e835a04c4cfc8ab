"""Semantic segmentation metrics from a dataset-level confusion matrix.

``IoU_k = TP_k / (TP_k + FP_k + FN_k)`` per class, accumulated over the whole dataset (not
averaged per image), as in the FCN paper (Long et al., CVPR 2015, section 5) and the Cityscapes
/ PASCAL VOC benchmarks:

* ``mIoU``: mean of the per-class IoU over the classes present in the ground truth or in the
  prediction. A class absent from both has ``IoU = NaN`` and is left out of the mean;
* ``pixel_acc``: ``sum_k TP_k / sum_k (TP_k + FN_k)`` over labelled pixels;
* ``mAcc``: mean over classes present in the ground truth of ``TP_k / (TP_k + FN_k)``;
* ``fwIoU``: ``sum_k freq_k * IoU_k`` with ``freq_k`` the fraction of labelled pixels of class k.

Pixels whose target equals ``ignore_index`` are skipped. The confusion matrix is ``int64`` and
summed across processes, so DDP results equal single-process results exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.data.io import DataError, read_label_map

__all__ = [
    "SegmentationMetrics",
    "confusion_matrix",
    "evaluate_semantic_folders",
    "metrics_from_confusion",
]


def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Confusion matrix of one batch.

    Args:
        preds: ``Tensor[B, H, W]`` int class indices, or ``Tensor[B, K, H, W]`` logits /
            probabilities (argmax over K is taken).
        target: ``Tensor[B, H, W]`` int class indices, ``ignore_index`` for unlabelled pixels.
        num_classes: K.
        ignore_index: target value to skip, or None.

    Returns:
        ``Tensor[K, K]`` int64, rows = ground-truth class, columns = predicted class.

    Raises:
        ValueError: shapes differ, or a label is outside ``0..K-1`` (and not ``ignore_index``).
    """
    if preds.ndim == target.ndim + 1:
        if preds.shape[1] != num_classes:
            raise ValueError(f"logits have {preds.shape[1]} channels, expected num_classes={num_classes}")
        preds = preds.argmax(1)  # [B, K, H, W] -> [B, H, W]
    elif preds.is_floating_point():
        raise ValueError(
            f"preds {tuple(preds.shape)} are floats with the shape of the target: pass class indices "
            f"(int) or logits Tensor[B, K, H, W]"
        )
    if preds.shape != target.shape:
        raise ValueError(
            f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    target = target.reshape(-1).to(torch.int64)  # [B*H*W]
    preds = preds.reshape(-1).to(device=target.device, dtype=torch.int64)  # [B*H*W]
    if ignore_index is not None:
        keep = target != ignore_index
        target, preds = target[keep], preds[keep]
    for name, values in (("target", target), ("prediction", preds)):
        if values.numel():
            lo, hi = torch.aminmax(values)
            if int(lo) < 0 or int(hi) >= num_classes:
                bad = values[(values < 0) | (values >= num_classes)]
                raise ValueError(
                    f"{name} labels {torch.unique(bad)[:5].tolist()} are outside 0..{num_classes - 1}"
                    + (f" and not ignore_index={ignore_index}" if name == "target" else "")
                )
    cm = torch.bincount(target * num_classes + preds, minlength=num_classes * num_classes)
    return cm.view(num_classes, num_classes)  # [K, K]


def metrics_from_confusion(cm: Tensor) -> dict[str, Tensor]:
    """``mIoU, IoU [K], pixel_acc, mAcc, Acc [K], fwIoU`` from a ``[K, K]`` confusion matrix.

    Classes absent from both ground truth and prediction get ``IoU = NaN`` (and ``Acc = NaN``
    when absent from the ground truth); NaNs are excluded from the means. With no labelled
    pixel at all every value is NaN.
    """
    cm = cm.double()
    tp = cm.diagonal()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), math.nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), math.nan)
    total = gt.sum()
    nan = cm.new_tensor(math.nan)
    freq = gt / total if total > 0 else gt * math.nan
    return {
        "mIoU": iou.nanmean() if bool((union > 0).any()) else nan,
        "IoU": iou,
        "pixel_acc": tp.sum() / total if total > 0 else nan,
        "mAcc": acc.nanmean() if bool((gt > 0).any()) else nan,
        "Acc": acc,
        "fwIoU": (freq[gt > 0] * iou[gt > 0]).sum() if total > 0 else nan,
    }


class SegmentationMetrics(Metric):
    """mIoU, per-class IoU, pixel accuracy and frequency-weighted IoU (see the module docstring).

    Example::

        metric = SegmentationMetrics(num_classes=11, ignore_index=11)
        metric.update(logits, batch.semantic)    # Tensor[B, K, H, W] or Tensor[B, H, W]
        metric.compute()["mIoU"]

    Args:
        num_classes: K.
        ignore_index: target value of unlabelled pixels (skipped), or None.
        class_names: optional name per class, used by ``per_class``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: list[str] | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` ``Tensor[B, H, W]`` int or ``Tensor[B, K, H, W]`` logits,
        ``target`` ``Tensor[B, H, W]`` int."""
        cm = confusion_matrix(preds, target, self.num_classes, self.ignore_index)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """See ``metrics_from_confusion``."""
        return metrics_from_confusion(self.confmat)

    def per_class(self, result: dict[str, Tensor]) -> dict[str, float]:
        """``{class name: IoU}`` (NaN for absent classes)."""
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {n: float(v) for n, v in zip(names, result["IoU"])}


def evaluate_semantic_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    num_classes: int,
    ignore_index: int | None = 255,
) -> dict:
    """mIoU of label PNGs in ``pred_dir`` against those in ``gt_dir``, matched by file stem.

    Both folders hold single-channel label maps (mode L, P, I or I;16) with class indices.

    Returns:
        ``{"mIoU", "IoU": [K], "pixel_acc", "mAcc", "Acc": [K], "fwIoU", "num_images",
        "num_unmatched_predictions"}`` with floats (NaN for absent classes).

    Raises:
        DataError: a ground-truth image has no prediction, sizes differ, or a label is out of
            range (the message names the file).
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for d in (gt_dir, pred_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found.")
    exts = {".png", ".tif", ".tiff", ".bmp"}
    gt_files = {p.stem: p for p in sorted(gt_dir.iterdir()) if p.suffix.lower() in exts}
    pred_files = {p.stem: p for p in sorted(pred_dir.iterdir()) if p.suffix.lower() in exts}
    if not gt_files:
        raise DataError(f"{gt_dir}: no label images (.png/.tif/.bmp) found.")
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        raise DataError(
            f"{pred_dir}: no prediction for {len(missing)} ground-truth label maps, e.g. {missing[:3]} "
            f"(predictions are matched to {gt_dir} by file stem)."
        )
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for stem, gt_path in gt_files.items():
        gt = torch.from_numpy(read_label_map(gt_path))
        pred = torch.from_numpy(read_label_map(pred_files[stem]))
        if gt.shape != pred.shape:
            raise DataError(
                f"{pred_files[stem]}: prediction is {tuple(pred.shape)} (H, W) but {gt_path} is "
                f"{tuple(gt.shape)}; resize predictions to the label size (nearest neighbour)."
            )
        try:
            cm += confusion_matrix(pred[None], gt[None], num_classes, ignore_index)
        except ValueError as exc:
            culprit = gt_path if str(exc).startswith("target") else pred_files[stem]
            raise DataError(f"{culprit}: {exc} (num_classes={num_classes}).") from None
    res = metrics_from_confusion(cm)
    out = {k: (v.tolist() if v.ndim else float(v)) for k, v in res.items()}
    out["num_images"] = len(gt_files)
    out["num_unmatched_predictions"] = len(set(pred_files) - set(gt_files))
    return out
