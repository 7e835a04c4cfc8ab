"""Typed data that flows between datasets, models, losses and metrics."""

from lightning_seg.structures.batch import Batch, Sample, SampleMeta
from lightning_seg.structures.dataset_info import DatasetInfo, default_palette
from lightning_seg.structures.targets import InstancePredictions, InstanceTargets, PanopticTargets

__all__ = [
    "Batch",
    "DatasetInfo",
    "InstancePredictions",
    "InstanceTargets",
    "PanopticTargets",
    "Sample",
    "SampleMeta",
    "default_palette",
]
