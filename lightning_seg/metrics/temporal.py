"""Temporal stability (flicker) of video instance masks.

Frame-by-frame models (YolactEdge: Liu et al., ICRA 2021) can flicker: a mask that jumps
between consecutive frames although the object barely moved. We measure it against the motion
of the ground truth itself:

For every ground-truth track n and every pair of consecutive frames (t, t + 1) in which the
track is present (non-empty ground-truth mask in both frames):

* ``gt_c = IoU(G[t], G[t+1])``: how much the true mask changes (motion, deformation);
* ``pred_c = IoU(P[t], P[t+1])`` with ``P[t]`` the predicted mask assigned to the track in
  frame t (empty when the track was missed; the IoU of two empty masks is 1);
* ``flicker = |pred_c - gt_c|``.

Reported: ``flicker`` (mean over all track-pairs), ``stability = 1 - flicker``,
``flicker_rate`` (fraction of pairs with ``flicker > flicker_thresh``),
``pred_consecutive_iou`` and ``gt_consecutive_iou`` (means) and ``num_pairs``. A perfect
prediction has flicker 0; so has a prediction that is consistently wrong in the same way, so
read stability beside accuracy (AP, J&F), never alone.

``P`` is aligned with the ground-truth tracks before ``update``: by track id
(``masks_by_track_id``) for trackers and VOS methods, or by per-frame IoU matching
(``masks_by_iou``) for frame-by-frame instance segmentation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_seg.metrics._exact_sum import from_fixed, to_fixed
from lightning_seg.structures import InstancePredictions

__all__ = ["TemporalStability", "consecutive_ious", "mask_iou", "masks_by_iou", "masks_by_track_id"]


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of bool masks ``Tensor[..., H, W]`` pairwise along the leading dims; 1 when both are empty."""
    inter = (a & b).flatten(-2).sum(-1)  # [...]
    union = (a | b).flatten(-2).sum(-1)  # [...]
    return torch.where(union > 0, inter.double() / union.clamp(min=1).double(), 1.0)


def consecutive_ious(masks: Tensor) -> Tensor:
    """``Tensor[T - 1, N]`` IoU of each track's mask between frames t and t + 1.

    Args:
        masks: ``Tensor[T, N, H, W]`` bool.
    """
    return mask_iou(masks[:-1], masks[1:])


class TemporalStability(Metric):
    """Flicker of predicted masks relative to the ground truth's own motion (module docstring).

    Example::

        metric = TemporalStability()
        aligned = masks_by_iou(frame_predictions, gt_masks)       # Tensor[T, N, H, W]
        metric.update(aligned, gt_masks)                          # one video (or clip)
        metric.compute()["flicker"]

    Args:
        flicker_thresh: a pair with ``|pred_c - gt_c|`` above this counts in ``flicker_rate``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, flicker_thresh: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flicker_thresh = flicker_thresh
        for name in ("flicker_fixed", "pred_iou_fixed", "gt_iou_fixed"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_flicker_events", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("num_pairs", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred_masks: Tensor, gt_masks: Tensor) -> None:
        """Add one video (or a clip of consecutive frames; pairs never span two calls).

        Args:
            pred_masks: ``Tensor[T, N, H, W]`` bool, prediction assigned to GT track n in frame t.
            gt_masks: ``Tensor[T, N, H, W]`` bool ground truth per track (empty when absent).
        """
        if pred_masks.shape != gt_masks.shape or gt_masks.ndim != 4:
            raise ValueError(
                f"pred_masks {tuple(pred_masks.shape)} and gt_masks {tuple(gt_masks.shape)} must both be "
                f"Tensor[T, N, H, W]; align predictions to the tracks with masks_by_iou / masks_by_track_id"
            )
        if gt_masks.shape[0] < 2:
            return
        pred_masks, gt_masks = pred_masks.bool(), gt_masks.bool()
        present = gt_masks.flatten(-2).any(-1)  # [T, N]
        pair = present[:-1] & present[1:]  # [T-1, N]
        gt_c = consecutive_ious(gt_masks)[pair]  # [M]
        pred_c = consecutive_ious(pred_masks.to(gt_masks.device))[pair]  # [M]
        flicker = (pred_c - gt_c).abs()
        device = self.num_pairs.device
        self.flicker_fixed += to_fixed(flicker).sum().to(device)
        self.pred_iou_fixed += to_fixed(pred_c).sum().to(device)
        self.gt_iou_fixed += to_fixed(gt_c).sum().to(device)
        self.num_flicker_events += int((flicker > self.flicker_thresh).sum())
        self.num_pairs += int(pair.sum())

    def compute(self) -> dict[str, Tensor]:
        """``flicker, stability, flicker_rate, pred_consecutive_iou, gt_consecutive_iou,
        num_pairs`` (NaN values when no pair was seen)."""
        n = self.num_pairs.double()
        flicker = from_fixed(self.flicker_fixed) / n
        return {
            "flicker": flicker,
            "stability": 1.0 - flicker,
            "flicker_rate": self.num_flicker_events.double() / n,
            "pred_consecutive_iou": from_fixed(self.pred_iou_fixed) / n,
            "gt_consecutive_iou": from_fixed(self.gt_iou_fixed) / n,
            "num_pairs": self.num_pairs,
        }


def _binary(pred: InstancePredictions, mask_thresh: float) -> Tensor:
    if pred.masks is None:
        raise ValueError("predictions need masks for temporal stability")
    return pred.masks if pred.masks.dtype == torch.bool else pred.masks >= mask_thresh


def masks_by_track_id(
    preds: list[InstancePredictions], gt_track_ids: Tensor, mask_thresh: float = 0.5
) -> Tensor:
    """Align predicted masks with ground-truth tracks by track id.

    Args:
        preds: one ``InstancePredictions`` per frame with ``masks`` and ``track_ids``.
        gt_track_ids: ``Tensor[N]`` ids of the ground-truth tracks.
        mask_thresh: threshold for float masks.

    Returns:
        ``Tensor[T, N, H, W]`` bool; a track missing from a frame's predictions gets an empty
        mask; several predictions with the same id in a frame are merged (union).
    """
    h, w = preds[0].image_size
    out = torch.zeros(len(preds), len(gt_track_ids), h, w, dtype=torch.bool)
    for t, pred in enumerate(preds):
        if pred.track_ids is None:
            raise ValueError(f"frame {t}: predictions have no track_ids; use masks_by_iou instead")
        masks = _binary(pred, mask_thresh).cpu()
        for n, tid in enumerate(gt_track_ids.tolist()):
            sel = (pred.track_ids == tid).cpu()
            if bool(sel.any()):
                out[t, n] = masks[sel].any(0)
    return out


def masks_by_iou(
    preds: list[InstancePredictions], gt_masks: Tensor, iou_thresh: float = 0.5, mask_thresh: float = 0.5
) -> Tensor:
    """Align per-frame predicted masks with ground-truth tracks by IoU (no track ids needed).

    In each frame, ground-truth/prediction pairs of the same frame are matched one-to-one
    greedily in decreasing IoU order; a track whose best free prediction has IoU below
    ``iou_thresh`` gets an empty mask (a miss).

    Args:
        preds: one ``InstancePredictions`` per frame, with ``masks``.
        gt_masks: ``Tensor[T, N, H, W]`` bool ground-truth track masks.
        iou_thresh: minimum IoU of a match.
        mask_thresh: threshold for float masks.

    Returns:
        ``Tensor[T, N, H, W]`` bool.
    """
    if len(preds) != gt_masks.shape[0]:
        raise ValueError(f"{len(preds)} predicted frames for {gt_masks.shape[0]} ground-truth frames")
    out = torch.zeros_like(gt_masks, dtype=torch.bool)
    for t, pred in enumerate(preds):
        masks = _binary(pred, mask_thresh).to(gt_masks.device)  # [M, H, W]
        if masks.shape[0] == 0 or gt_masks.shape[1] == 0:
            continue
        gt = gt_masks[t].bool().flatten(1).double()  # [N, H*W]
        pm = masks.flatten(1).double()  # [M, H*W]
        inter = gt @ pm.T  # [N, M]
        union = gt.sum(1)[:, None] + pm.sum(1)[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
        for _ in range(min(iou.shape)):
            best = int(iou.argmax())
            n, m = divmod(best, iou.shape[1])
            if float(iou[n, m]) < iou_thresh:
                break
            out[t, n] = masks[m]
            iou[n, :] = -1.0
            iou[:, m] = -1.0
    return out
