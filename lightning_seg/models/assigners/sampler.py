"""Balanced positive/negative sampling of examples (Ren et al., Faster R-CNN, NeurIPS 2015)."""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    """Pick at most ``batch_size_per_image`` examples per image, a fixed share of them positive.

    Equal to torchvision's ``BalancedPositiveNegativeSampler``: per image it draws
    ``min(#pos, int(batch_size_per_image * positive_fraction))`` positives, fills the rest with
    negatives (as many as exist), using one ``torch.randperm`` for the positives and one for the
    negatives in that order. Seeding the global RNG (or passing ``generator``) the same way
    therefore draws the same examples as torchvision.

    Args:
        batch_size_per_image: examples per image (256 for the RPN, 512 for the box head).
        positive_fraction: wanted share of positives (0.5 for the RPN, 0.25 for the box head).
        generator: optional RNG for the draws (default: torch's global RNG).
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size_per_image < 1:
            raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"BalancedSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Sample per image.

        Args:
            labels: per image ``Tensor[M]``: ``>= 1`` positive (a class index or 1), ``0``
                negative, ``< 0`` ignored.

        Returns:
            ``(pos_masks, neg_masks)``: per image ``Tensor[M]`` bool masks of the sampled
            positives and negatives.
        """
        pos_masks, neg_masks = [], []
        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        for labels_per_image in labels:
            positive = torch.nonzero(labels_per_image >= 1).squeeze(1)
            negative = torch.nonzero(labels_per_image == 0).squeeze(1)
            num_pos = min(positive.numel(), max_pos)
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            device, rng = labels_per_image.device, self.generator
            pos_pick = torch.randperm(positive.numel(), device=device, generator=rng)[:num_pos]
            neg_pick = torch.randperm(negative.numel(), device=device, generator=rng)[:num_neg]

            pos_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            pos_mask[positive[pos_pick]] = True
            neg_mask[negative[neg_pick]] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
