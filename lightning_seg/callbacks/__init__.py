"""Callbacks: progress reporting, prediction pictures and files, run summary, YOLACT prototype
diagnostics."""

from lightning_seg.callbacks.predictions import PredictionImages, PredictionWriter, RunSummary
from lightning_seg.callbacks.progress import PlainProgress, default_progress_bar
from lightning_seg.callbacks.prototypes import PrototypeDiagnostics

__all__ = [
    "PlainProgress",
    "PredictionImages",
    "PredictionWriter",
    "PrototypeDiagnostics",
    "RunSummary",
    "default_progress_bar",
]
