"""Callbacks: the best-and-last checkpoint, progress reporting, prediction pictures and files, run
summary, run cost, W&B extras (per-class tables, artifacts), YOLACT prototype diagnostics,
RefineMask per-stage mask quality."""

from lightning_seg.callbacks.checkpoint import BestAndLastCheckpoint
from lightning_seg.callbacks.cost import RunCost
from lightning_seg.callbacks.predictions import PredictionImages, PredictionWriter, RunSummary
from lightning_seg.callbacks.progress import PlainProgress, default_progress_bar
from lightning_seg.callbacks.prototypes import PrototypeDiagnostics
from lightning_seg.callbacks.refine_stages import RefineStageMetrics
from lightning_seg.callbacks.wandb_extras import PerClassTables, WandbArtifacts

__all__ = [
    "BestAndLastCheckpoint",
    "default_progress_bar",
    "PerClassTables",
    "PlainProgress",
    "PredictionImages",
    "PredictionWriter",
    "PrototypeDiagnostics",
    "RefineStageMetrics",
    "RunCost",
    "RunSummary",
    "WandbArtifacts",
]
