"""Order-independent sums of real numbers, so that DDP reduction is bit-exact.

Float addition is not associative: summing per-rank partial sums (DDP) gives a slightly
different float than summing the same values in one process. Metrics in this package that
accumulate real numbers (IoU sums, NME sums, consecutive-IoU sums) therefore store them as
``int64`` fixed-point numbers with a resolution of ``2**-32`` (each term is rounded to the
nearest multiple, an error below 1.2e-10). Integer sums are associative, so single-process and
multi-process results are identical to the last bit. A sum may hold up to ``2**31`` terms of
magnitude <= 1 before overflowing.
"""

from __future__ import annotations

import torch
from torch import Tensor

FIXED_POINT_SCALE = 2.0**32


def to_fixed(values: Tensor) -> Tensor:
    """Round real values to ``int64`` fixed point (``value * 2**32``)."""
    return torch.round(values.double() * FIXED_POINT_SCALE).to(torch.int64)


def from_fixed(sums: Tensor) -> Tensor:
    """Convert fixed-point ``int64`` sums back to ``float64``."""
    return sums.double() / FIXED_POINT_SCALE
