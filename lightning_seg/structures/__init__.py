"""Typed data that flows between datasets, models, losses and metrics."""

from lightning_seg.structures.base import TensorStruct
from lightning_seg.structures.batch import Batch, Sample, SampleMeta
from lightning_seg.structures.crop import AffineCrop
from lightning_seg.structures.dataset_info import DatasetInfo, default_palette
from lightning_seg.structures.predictions import (
    InstancePredictions,
    KeypointPredictions,
    PanopticPredictions,
    SemanticPredictions,
)
from lightning_seg.structures.specs import FeatureShapes, ShapeSpec
from lightning_seg.structures.targets import InstanceTargets, KeypointTargets, PanopticTargets

__all__ = [
    "AffineCrop",
    "Batch",
    "DatasetInfo",
    "FeatureShapes",
    "InstancePredictions",
    "InstanceTargets",
    "KeypointPredictions",
    "KeypointTargets",
    "PanopticPredictions",
    "PanopticTargets",
    "Sample",
    "SampleMeta",
    "SemanticPredictions",
    "ShapeSpec",
    "TensorStruct",
    "default_palette",
]
