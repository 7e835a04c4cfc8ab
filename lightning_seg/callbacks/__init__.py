"""Callbacks: progress reporting, prediction pictures and files, run summary, YOLACT prototype
diagnostics, RefineMask per-stage mask quality."""

from lightning_seg.callbacks.predictions import PredictionImages, PredictionWriter, RunSummary
from lightning_seg.callbacks.progress import PlainProgress, default_progress_bar
from lightning_seg.callbacks.prototypes import PrototypeDiagnostics
from lightning_seg.callbacks.refine_stages import RefineStageMetrics

__all__ = [
    "PlainProgress",
    "PredictionImages",
    "PredictionWriter",
    "PrototypeDiagnostics",
    "RefineStageMetrics",
    "RunSummary",
    "default_progress_bar",
]
