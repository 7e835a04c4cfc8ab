"""Callbacks: progress reporting, prediction pictures and files, run summary."""

from lightning_seg.callbacks.predictions import PredictionImages, PredictionWriter, RunSummary
from lightning_seg.callbacks.progress import PlainProgress, default_progress_bar

__all__ = ["PlainProgress", "PredictionImages", "PredictionWriter", "RunSummary", "default_progress_bar"]
