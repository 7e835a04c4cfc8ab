"""Heads: ``forward(features, ...) -> raw``, ``loss(raw, targets) -> dict``, ``predict(raw, ...)``."""

from lightning_seg.models.heads.anchors import AnchorGenerator
from lightning_seg.models.heads.box_head import BoxRoIHead
from lightning_seg.models.heads.keypoints import (
    HourglassHeatmapHead,
    RegressionHead,
    SimpleBaselineHead,
)
from lightning_seg.models.heads.mask_head import MaskRoIHead
from lightning_seg.models.heads.panoptic import HeuristicPanopticMerge, UPSNetPanopticHead
from lightning_seg.models.heads.refine_mask import RefineMaskHead
from lightning_seg.models.heads.refine_mask_semantic import ForegroundSemanticHead
from lightning_seg.models.heads.rpn import RPN, RPNHead
from lightning_seg.models.heads.upsnet_semantic import UPSNetSemanticHead
from lightning_seg.models.heads.yolact import (
    MaskIoUHead,
    ProtoNet,
    YolactAnchors,
    YolactHead,
    YolactSemanticHead,
)

__all__ = [
    "RPN",
    "AnchorGenerator",
    "BoxRoIHead",
    "ForegroundSemanticHead",
    "HeuristicPanopticMerge",
    "HourglassHeatmapHead",
    "MaskIoUHead",
    "MaskRoIHead",
    "ProtoNet",
    "RefineMaskHead",
    "RegressionHead",
    "RPNHead",
    "SimpleBaselineHead",
    "UPSNetPanopticHead",
    "UPSNetSemanticHead",
    "YolactAnchors",
    "YolactHead",
    "YolactSemanticHead",
]
