"""Max-IoU matching of anchors/proposals to ground truth (Ren et al., Faster R-CNN, 2015)."""

from __future__ import annotations

import torch
from torch import Tensor


class MaxIoUMatcher:
    """Give each prediction the ground truth it overlaps most, or a negative code.

    Semantics equal torchvision's ``Matcher`` (golden test): a prediction whose best quality is
    ``>= high_thresh`` is matched to that ground truth; ``< low_thresh`` gives
    ``BELOW_LOW_THRESHOLD`` (-1, background); in between gives ``BETWEEN_THRESHOLDS`` (-2, ignored).
    With ``allow_low_quality_matches`` every ground truth also keeps the prediction(s) it
    overlaps most (ties included), matched to their own best ground truth, so no ground truth
    is left without a positive (the RPN setting).

    Unlike torchvision, an image without ground truth is not an error: every prediction is
    ``BELOW_LOW_THRESHOLD``. With zero predictions the result is empty.

    Args:
        high_thresh: quality at or above which a match is positive.
        low_thresh: quality below which a prediction is background.
        allow_low_quality_matches: also match each ground truth's best prediction(s).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_thresh: float, low_thresh: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_thresh > high_thresh:
            raise ValueError(f"low_thresh ({low_thresh}) must be <= high_thresh ({high_thresh})")
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"MaxIoUMatcher(high_thresh={self.high_thresh}, low_thresh={self.low_thresh}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, quality: Tensor) -> Tensor:
        """Match predictions to ground truth.

        Args:
            quality: ``Tensor[G, M]`` pairwise quality (IoU) of ``G`` ground-truth boxes and
                ``M`` predictions.

        Returns:
            ``Tensor[M]`` int64: the matched ground-truth index in ``[0, G)``, or -1 / -2.
        """
        num_gt, num_pred = quality.shape
        if num_gt == 0 or num_pred == 0:
            return torch.full(
                (num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
            )

        best_quality, matches = quality.max(dim=0)  # [M], [M]
        best_gt_of_pred = matches.clone() if self.allow_low_quality_matches else None
        matches[best_quality < self.low_thresh] = self.BELOW_LOW_THRESHOLD
        between = (best_quality >= self.low_thresh) & (best_quality < self.high_thresh)
        matches[between] = self.BETWEEN_THRESHOLDS

        if best_gt_of_pred is not None:
            best_quality_per_gt = quality.max(dim=1).values  # [G]
            # every (gt, pred) pair reaching that gt's best quality, ties included
            _, preds = torch.nonzero(quality == best_quality_per_gt[:, None], as_tuple=True)
            matches[preds] = best_gt_of_pred[preds]
        return matches
