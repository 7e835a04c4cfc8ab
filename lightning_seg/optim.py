"""Learning-rate schedules of the detection papers, as YAML-friendly classes.

``torch.optim.lr_scheduler.SequentialLR`` needs scheduler instances, which a YAML file cannot
give; these classes take plain numbers. Use them with ``scheduler_interval: step``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up, then the LR times ``gamma`` at each milestone (Mask R-CNN's schedule).

    The paper's COCO "1x" at 16 images per batch: ``milestones=(60000, 80000)`` of 90k
    iterations, ``warmup_iters=1000``, ``warmup_factor=0.001``.

    Args:
        optimizer: the optimizer.
        milestones: iterations (steps) at which the LR is multiplied by ``gamma``.
        gamma: the decay factor.
        warmup_iters: iterations of linear warm-up from ``warmup_factor * lr`` to ``lr``.
        warmup_factor: LR multiplier at iteration 0.
        last_epoch: the index of the last step (-1 to start).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 1000,
        warmup_factor: float = 0.001,
        last_epoch: int = -1,
    ) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        if warmup_iters < 0 or not 0 < warmup_factor <= 1:
            raise ValueError("warmup_iters must be >= 0 and warmup_factor in (0, 1]")
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, last_epoch)

    def _factor(self, step: int) -> float:
        warm = 1.0
        if step < self.warmup_iters:
            alpha = step / self.warmup_iters
            warm = self.warmup_factor * (1 - alpha) + alpha
        return warm * self.gamma ** bisect_right(self.milestones, step)

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]


def scale_schedule_to_batch(
    batch_size: int,
    reference_batch_size: int = 8,
    lr: float = 1e-3,
    milestones: Sequence[int] = (280000, 600000, 700000, 750000),
    max_steps: int = 800000,
    warmup_init_lr: float = 1e-4,
) -> dict:
    """A schedule written for ``reference_batch_size`` images per step, scaled to ``batch_size``
    as YOLACT's training script does (``--autoscale``, its default): the LR times
    ``batch_size / reference_batch_size``, the milestones and the total divided by that factor
    (floor), the warm-up length and its starting LR unchanged.

    Args:
        batch_size: the total batch (all devices).
        reference_batch_size: the batch the numbers are written for (YOLACT: 8).
        lr: base LR at the reference batch.
        milestones: LR decay steps at the reference batch.
        max_steps: total steps at the reference batch.
        warmup_init_lr: LR at step 0 of the warm-up (YOLACT: 1e-4).

    Returns:
        ``{"lr", "milestones", "max_steps", "warmup_factor"}`` for ``torch.optim.SGD`` /
        ``WarmupMultiStepLR`` / ``trainer.max_steps``.
    """
    if batch_size < 1 or reference_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {reference_batch_size}")
    factor = batch_size / reference_batch_size
    new_lr = lr * factor
    return {
        "lr": new_lr,
        "milestones": [int(m // factor) for m in milestones],
        "max_steps": int(max_steps // factor),
        "warmup_factor": min(warmup_init_lr / new_lr, 1.0),
    }
