"""Pure functions: boxes, RoIAlign, NMS variants, box coders, mask crops, each with a golden test."""

from lightning_seg.ops.fast_nms import (
    batched_box_iou,
    cross_class_fast_nms,
    fast_nms,
    fast_nms_matrix,
)
from lightning_seg.ops.labels import argmax_labels
from lightning_seg.ops.mask_crop import box_crop_mask, crop_masks
from lightning_seg.ops.ssd_box_coder import SSDBoxCoder

__all__ = [
    "SSDBoxCoder",
    "argmax_labels",
    "batched_box_iou",
    "box_crop_mask",
    "crop_masks",
    "cross_class_fast_nms",
    "fast_nms",
    "fast_nms_matrix",
]
