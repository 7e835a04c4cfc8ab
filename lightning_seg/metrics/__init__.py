"""Evaluation metrics: COCO AP, PQ / VPQ, mIoU, PCK / PCKh / NME, temporal stability.

Every metric is a ``torchmetrics.Metric`` whose state is summed exactly across DDP processes.
Names are imported on first use (``from lightning_seg.metrics import PanopticQualityMetric``),
so that ``lseg-eval --help`` and the COCO evaluator (engineer A's ``coco`` module) load fast.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "COCOEvaluator": "lightning_seg.metrics.coco",
    "NME": "lightning_seg.metrics.keypoints",
    "PCK": "lightning_seg.metrics.keypoints",
    "PCKh": "lightning_seg.metrics.keypoints",
    "PanopticQualityMetric": "lightning_seg.metrics.panoptic",
    "evaluate_panoptic_files": "lightning_seg.metrics.panoptic",
    "SegmentationMetrics": "lightning_seg.metrics.semantic",
    "evaluate_semantic_folders": "lightning_seg.metrics.semantic",
    "TemporalStability": "lightning_seg.metrics.temporal",
    "VideoPanopticQualityMetric": "lightning_seg.metrics.vpq",
    "evaluate_vpq_files": "lightning_seg.metrics.vpq",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_seg.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
