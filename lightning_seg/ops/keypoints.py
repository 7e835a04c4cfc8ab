"""Object keypoint similarity between predicted instances, and OKS-based NMS (top-down COCO
evaluation with person detections: overlapping detections of one person give near-identical
poses, and only the best-scored one is kept, as SimpleBaseline / mmpose do)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def oks_matrix(keypoints: Tensor, areas: Tensor, sigmas: Sequence[float],
               score_thresh: float | None = None) -> Tensor:
    """Pairwise OKS (COCO's formula) between instances: ``mean_k exp(-d_k^2 / (2 s^2 (2
    sigma_k)^2))`` with ``s^2`` the mean of the two areas, over the keypoints both score above
    ``score_thresh`` (all when None; 0 when none qualifies).

    Args:
        keypoints: ``Tensor[N, K, 3]`` ``(x, y, score)``.
        areas: ``Tensor[N]`` instance areas.
        sigmas: K OKS sigmas.
        score_thresh: keypoints at or below it are ignored.

    Returns:
        ``Tensor[N, N]`` float64, symmetric, 1 on the diagonal where a keypoint counts.
    """
    k = keypoints.double()
    var = (2 * torch.as_tensor(list(sigmas), dtype=torch.float64, device=k.device)) ** 2  # [K]
    d2 = ((k[:, None, :, :2] - k[None, :, :, :2]) ** 2).sum(-1)  # [N, N, K]
    scale = (areas.double()[:, None] + areas.double()[None, :]) / 2 + torch.finfo(torch.float64).eps
    e = d2 / var / scale[..., None] / 2  # [N, N, K]
    use = torch.ones_like(e, dtype=torch.bool)
    if score_thresh is not None:
        ok = k[..., 2] > score_thresh  # [N, K]
        use = ok[:, None, :] & ok[None, :, :]
    count = use.sum(-1)
    total = (torch.exp(-e) * use).sum(-1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def oks_nms(keypoints: Tensor, scores: Tensor, areas: Tensor, sigmas: Sequence[float],
            thresh: float = 0.9, score_thresh: float | None = 0.2) -> Tensor:
    """Greedy NMS with OKS as the overlap: keep the best-scored instance, drop those whose OKS
    with it exceeds ``thresh``, repeat.

    Returns:
        ``Tensor[M]`` int64 indices of the kept instances, best first.
    """
    order = torch.argsort(scores, descending=True)
    oks = oks_matrix(keypoints, areas, sigmas, score_thresh)
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (oks[i] > thresh).cpu()
    return torch.as_tensor(keep, dtype=torch.long)
