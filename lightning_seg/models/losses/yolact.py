"""YOLACT's loss terms (Bolya et al., ICCV 2019), each as its official code computes it
(dbolya/yolact @ 902073d, ``layers/modules/multibox_loss.py``).

Normalisation, as the official code: the box, class, mask and mask-IoU terms are sums divided by
the number of positive anchors in the whole batch; the semantic term is divided by the batch size.
One deviation: a batch without any positive divides by 1 instead of 0 (the official loader never
gives one: it resamples images without ground truth), so its terms stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.ops.mask_crop import box_crop_mask

#: the clamp ``F.binary_cross_entropy`` applies to ``log(p)``: the loss of a target-1 pixel that a
#: crop set to probability 0
BCE_LOG_CLAMP = 100.0


def ohem_negatives(logits: Tensor, labels: Tensor, neg_pos_ratio: float = 3.0, min_num_negatives: int = 0) -> Tensor:
    """Hard negatives of SSD's online hard example mining, per image.

    An image keeps its ``neg_pos_ratio * num_pos`` background anchors with the highest
    background loss ``-log softmax(logits)[0]`` (at most ``A - 1``, at least
    ``min_num_negatives``); positives and neutral anchors are never negatives.

    Args:
        logits: ``Tensor[B, A, K+1]`` class logits (index 0: background).
        labels: ``Tensor[B, A]`` int64 (-1 neutral, 0 background, ``k + 1`` class ``k``).
        neg_pos_ratio: negatives per positive (3).
        min_num_negatives: negatives of an image with few or no positives (0: the official rule,
            an image without positives gives no classification loss).

    Returns:
        ``Tensor[B, A]`` bool: the selected negatives.
    """
    with torch.no_grad():
        bg_loss = torch.logsumexp(logits.float(), dim=-1) - logits[..., 0].float()  # [B, A]
        candidate = labels == 0
        bg_loss = torch.where(candidate, bg_loss, torch.full_like(bg_loss, -1.0))
        rank = bg_loss.argsort(dim=1, descending=True).argsort(dim=1)  # [B, A] 0 = hardest
        num_pos = (labels > 0).sum(dim=1, keepdim=True)  # [B, 1]
        num_neg = (neg_pos_ratio * num_pos).long().clamp(min=min_num_negatives)
        num_neg = num_neg.clamp(max=labels.shape[1] - 1)
        return (rank < num_neg) & candidate


def ohem_cross_entropy(logits: Tensor, labels: Tensor, negatives: Tensor) -> Tensor:
    """Softmax cross-entropy summed over the positives and the selected negatives.

    Args:
        logits: ``Tensor[B, A, K+1]``.
        labels: ``Tensor[B, A]`` int64.
        negatives: ``Tensor[B, A]`` bool (``ohem_negatives``).

    Returns:
        scalar sum (``logits.sum() * 0`` when nothing is selected).
    """
    selected = (labels > 0) | negatives  # [B, A]
    if not bool(selected.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[selected].float(), labels[selected], reduction="sum")


@dataclass
class MaskSamples:
    """Assembled masks of the positives that the mask loss saw (what the mask-IoU head trains on).

    Attributes:
        probs: ``Tensor[S, h, w]`` cropped mask probabilities at prototype resolution.
        targets: ``Tensor[S, h, w]`` binary ground truth at prototype resolution.
        labels: ``Tensor[S]`` int64 classes ``0..K-1``.
    """

    probs: Tensor
    targets: Tensor
    labels: Tensor


def lincomb_mask_loss(
    protos: Tensor,
    coeffs: Tensor,
    gt_masks: Tensor,
    gt_boxes: Tensor,
    crop_padding: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """YOLACT's mask loss of one image's positives (before the batch normalisation).

    The mask of positive ``n`` is ``sigmoid(protos . coeffs[n])``, cropped with its ground-truth
    box (padded by ``crop_padding`` prototype pixels); its per-pixel binary cross-entropy against
    the ground truth (zero outside the box, as the official crop makes the probability exactly
    0 there) is summed and divided by the box's area in prototype pixels.

    Args:
        protos: ``Tensor[P, h, w]`` prototypes.
        coeffs: ``Tensor[N, P]`` coefficients of the positives.
        gt_masks: ``Tensor[N, h, w]`` binary targets at prototype resolution.
        gt_boxes: ``Tensor[N, 4]`` x1y1x2y2 ground-truth boxes in prototype pixels.
        crop_padding: padding of the crop (1).

    Returns:
        ``Tensor[N]`` loss per positive, and ``Tensor[N, h, w]`` the cropped probabilities.
    """
    logits = torch.einsum("phw,np->nhw", protos.float(), coeffs.float())  # [N, h, w]
    window = box_crop_mask(gt_boxes.float(), protos.shape[-2:], crop_padding)  # [N, h, w]
    target = gt_masks.float()
    inside = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    per_pixel = window * inside + (1 - window) * target * BCE_LOG_CLAMP
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).float()  # [N, 2]
    per_mask = per_pixel.sum(dim=(1, 2)) / (wh[:, 0] * wh[:, 1]).clamp(min=1e-6)
    return per_mask, torch.sigmoid(logits) * window


def semantic_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """YOLACT's auxiliary semantic loss of one image: per-class sigmoid BCE, summed, divided by
    the map's area.

    Args:
        logits: ``Tensor[K, h, w]``.
        targets: ``Tensor[K, h, w]`` 0/1 (union of the instance masks of each class).

    Returns:
        scalar.
    """
    h, w = logits.shape[-2:]
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
    return loss / (h * w)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of binary masks, pairwise along the first dimension.

    Args:
        pred: ``Tensor[N, h, w]`` 0/1.
        target: ``Tensor[N, h, w]`` 0/1.

    Returns:
        ``Tensor[N]`` (0 where both are empty).
    """
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    inter = (pred * target).sum(1)
    union = pred.sum(1) + target.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)
