"""LightningModules, one per task family: they own training, logging, metrics and predictions."""

from lightning_seg.tasks.base import BaseTask
from lightning_seg.tasks.instance import InstanceSegmentationTask
from lightning_seg.tasks.keypoints import KeypointTask
from lightning_seg.tasks.panoptic import PanopticSegmentationTask
from lightning_seg.tasks.semantic import SemanticSegmentationTask

__all__ = [
    "BaseTask",
    "InstanceSegmentationTask",
    "KeypointTask",
    "PanopticSegmentationTask",
    "SemanticSegmentationTask",
]
