"""Ablations as sweeps: sweep files (W&B's format plus the experiment), the trials they expand
to (grid, random, Bayesian), the local runner with its resumable sweep folder, and the W&B
backend. ``lseg sweep`` (``lightning_seg.commands.sweep``) is the command."""

from lightning_seg.sweeps.spec import (
    Metric,
    Parameter,
    SweepError,
    SweepSpec,
    format_value,
    load_sweep,
)

__all__ = ["Metric", "Parameter", "SweepError", "SweepSpec", "format_value", "load_sweep"]
