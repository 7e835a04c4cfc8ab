"""The one place where training targets are filtered before any matching.

Crowd regions (``iscrowd``) give no positives and no mask targets (they stay out of matching,
as Detectron's COCO models do), and degenerate boxes (width or height below ``min_size``, e.g.
squashed by an augmentation) cannot be encoded as regression targets. Detectors call one
``TargetFilter`` on their targets; heads then assume clean targets. What is dropped is counted
(``counts``) and logged, never silent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from lightning_seg.structures import InstanceTargets

log = logging.getLogger("lightning_seg.models")


class TargetFilter:
    """Drop crowd and degenerate instances from training targets, counting them.

    Args:
        drop_crowd: leave crowd instances out (they then give no positives and no mask
            targets; a proposal overlapping only a crowd region is background).
        min_size: boxes narrower or lower than this (pixels) are dropped.

    Attributes:
        counts: reason -> number of instances dropped so far (``"crowd"``, ``"degenerate box"``).
    """

    def __init__(self, drop_crowd: bool = True, min_size: float = 1e-2) -> None:
        self.drop_crowd = drop_crowd
        self.min_size = min_size
        self.counts: Counter = Counter()
        self._next_report = 1

    def __call__(self, targets: Sequence[InstanceTargets]) -> list[InstanceTargets]:
        """The targets without the dropped instances (one ``InstanceTargets`` per image)."""
        out = []
        for target in targets:
            wh = target.boxes[:, 2:] - target.boxes[:, :2]  # [N, 2]
            degenerate = (wh < self.min_size).any(dim=1)
            keep = ~degenerate
            if self.drop_crowd:
                crowd = target.iscrowd.to(keep.device) & ~degenerate
                self.counts["crowd"] += int(crowd.sum())
                keep &= ~crowd
            n_bad = int(degenerate.sum())
            if n_bad:
                self.counts["degenerate box"] += n_bad
                self._report()
            out.append(target if bool(keep.all()) else target.select(keep))
        return out

    def _report(self) -> None:
        """Log the degenerate-box count at 1, 10, 100... dropped boxes."""
        n = self.counts["degenerate box"]
        if n >= self._next_report:
            log.warning(
                "dropped %d training boxes so far with a side below %g px (the network's "
                "min_box_size: boxes this small after resizing or cropping give no usable target)",
                n, self.min_size,
            )
            while self._next_report <= n:
                self._next_report *= 10
