"""Losses of top-down keypoint heads, each a function of predictions, targets and weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_heatmap_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean squared error of heatmaps with per-keypoint target weights (mmpose's
    ``KeypointMSELoss(use_target_weight=True)``).

    ``mean over B, K, h, w of w_bk * (pred - target)^2``: a keypoint with weight 0 (unlabelled,
    or outside the crop) adds nothing, and a batch of only such keypoints gives an exact 0 that
    is still connected to the graph.

    Args:
        pred: ``Tensor[B, K, h, w]``.
        target: ``Tensor[B, K, h, w]``.
        weights: ``Tensor[B, K]``.
    """
    if pred.shape != target.shape or weights.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and weights "
            f"{tuple(weights.shape)} do not match ([B, K, h, w] and [B, K])"
        )
    sq = (pred.float() - target.float()) ** 2  # [B, K, h, w]
    return (sq * weights.float()[..., None, None]).mean()


def weighted_coordinate_loss(pred: Tensor, target: Tensor, weights: Tensor, kind: str = "l1") -> Tensor:
    """Coordinate-regression loss with per-keypoint weights: ``mean over B, K, 2 of
    w_bk * l(pred - target)``.

    Args:
        pred: ``Tensor[B, K, 2]``.
        target: ``Tensor[B, K, 2]``.
        weights: ``Tensor[B, K]``.
        kind: ``"l1"``, ``"smooth_l1"`` (beta 1 on the normalised coordinates would be an L2
            almost everywhere, so beta is 0.05) or ``"mse"`` (DeepPose's L2).
    """
    if pred.shape != target.shape or weights.shape != pred.shape[:2]:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and weights "
            f"{tuple(weights.shape)} do not match ([B, K, 2] and [B, K])"
        )
    diff = pred.float() - target.float()
    if kind == "l1":
        per = diff.abs()
    elif kind == "smooth_l1":
        per = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=0.05)
    elif kind == "mse":
        per = diff**2
    else:
        raise ValueError(f"kind must be 'l1', 'smooth_l1' or 'mse', got {kind!r}")
    return (per * weights.float()[..., None]).mean() if per.numel() else pred.sum() * 0


def coordinate_weights(keypoints: Tensor, input_size: tuple[int, int]) -> Tensor:
    """``Tensor[B, K]`` weights of regression targets: 1 for a labelled keypoint inside the
    input, 0 otherwise (as the heatmap targets)."""
    h, w = input_size
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & torch.isfinite(x) & torch.isfinite(y)
    return ((v > 0) & inside).float()
