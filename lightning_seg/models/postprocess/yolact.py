"""YOLACT's detection step and mask assembly (Bolya et al., ICCV 2019; official code
dbolya/yolact @ 902073d, ``layers/functions/detection.py`` and ``layers/output_utils.py``).

Detection keeps the anchors whose best class score exceeds ``conf_thresh``; per class the
``top_k`` best of them (whatever their score for that class: no second threshold, as the
official code, which notes +0.2 mAP for it) go through Fast NMS, and the ``max_detections``
best survivors over all classes are returned. The Fast NMS path works on fixed-size tensors
(``[B, K, top_k]``), with a ``valid`` flag instead of dynamic filtering, so the same code runs
in PyTorch and in an exported ONNX / TorchScript graph.

Masks: ``sigmoid(protos . coeffs)`` at prototype resolution, cropped with the predicted box,
then bilinearly upsampled to the output frame and thresholded (``masks_to_frame``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from lightning_seg.ops.fast_nms import fast_nms_matrix
from lightning_seg.ops.mask_crop import crop_masks

NMS_MODES = ("fast", "cross_class", "standard")


@dataclass
class YolactDetections:
    """Fixed-size detections of a batch (``D = max_detections``), best first.

    Attributes:
        boxes: ``Tensor[B, D, 4]`` x1y1x2y2 in input pixels.
        scores: ``Tensor[B, D]`` class confidences (0 where not valid).
        labels: ``Tensor[B, D]`` int64 classes ``0..K-1``.
        coeffs: ``Tensor[B, D, P]`` mask coefficients.
        valid: ``Tensor[B, D]`` bool: a real detection (the rest is padding).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    coeffs: Tensor
    valid: Tensor


def detect(
    boxes: Tensor,
    class_probs: Tensor,
    coeffs: Tensor,
    conf_thresh: float = 0.05,
    iou_thresh: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
    nms: str = "fast",
) -> YolactDetections:
    """YOLACT's detections of a batch.

    Args:
        boxes: ``Tensor[B, N, 4]`` decoded boxes of every anchor.
        class_probs: ``Tensor[B, N, K+1]`` softmax probabilities (index 0: background).
        coeffs: ``Tensor[B, N, P]``.
        conf_thresh: an anchor is a candidate when its best class score exceeds this (0.05).
        iou_thresh: NMS threshold (0.5).
        top_k: candidates per class entering Fast NMS (200; cross-class: in all).
        max_detections: detections kept per image (100).
        nms: ``"fast"`` (per class), ``"cross_class"`` (Fast NMS over all classes, each anchor
            with its best class) or ``"standard"`` (``torchvision.ops.batched_nms`` per class on
            every candidate score above ``conf_thresh``, the official "traditional" NMS; not
            exportable).
    """
    if nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
    scores = class_probs[..., 1:]  # [B, N, K]
    if nms == "standard":
        return _detect_standard(boxes, scores, coeffs, conf_thresh, iou_thresh, max_detections)
    b, n, _ = scores.shape
    candidate = scores.amax(dim=-1) > conf_thresh  # [B, N]
    if nms == "cross_class":
        best, best_label = scores.max(dim=-1)  # [B, N]
        grouped = torch.where(candidate, best, -1.0)[:, None]  # [B, 1, N]
    else:
        grouped = torch.where(candidate[:, None, :], scores.transpose(1, 2), -1.0)  # [B, K, N]
    kk = min(top_k, n)
    top_scores, top_idx = grouped.topk(kk, dim=2)  # [B, G, kk], sorted
    valid = top_scores >= 0
    g = grouped.shape[1]
    top_boxes = boxes[:, None].expand(b, g, n, 4).gather(2, top_idx[..., None].expand(b, g, kk, 4))
    keep = fast_nms_matrix(top_boxes.reshape(b * g, kk, 4), iou_thresh, valid.reshape(b * g, kk))
    keep = keep.reshape(b, g * kk)  # [B, G*kk]
    flat_scores = torch.where(keep, top_scores.reshape(b, g * kk), -1.0)
    d = min(max_detections, g * kk)
    det_scores, det_idx = flat_scores.topk(d, dim=1)  # [B, D]
    det_valid = keep.gather(1, det_idx)
    anchor = top_idx.reshape(b, g * kk).gather(1, det_idx)  # [B, D]
    if nms == "cross_class":
        labels = best_label.gather(1, anchor)
    else:
        labels = torch.div(det_idx, kk, rounding_mode="floor")
    return YolactDetections(
        boxes=boxes.gather(1, anchor[..., None].expand(b, d, 4)),
        scores=torch.where(det_valid, det_scores, 0.0),
        labels=labels,
        coeffs=coeffs.gather(1, anchor[..., None].expand(b, d, coeffs.shape[-1])),
        valid=det_valid,
    )


def _detect_standard(boxes: Tensor, scores: Tensor, coeffs: Tensor, conf_thresh: float,
                     iou_thresh: float, max_detections: int) -> YolactDetections:
    """Per-class standard NMS on every (candidate, class) score above ``conf_thresh``, padded."""
    b = scores.shape[0]
    p = coeffs.shape[-1]
    out_boxes = boxes.new_zeros(b, max_detections, 4)
    out_scores = scores.new_zeros(b, max_detections)
    out_labels = torch.zeros(b, max_detections, dtype=torch.int64, device=boxes.device)
    out_coeffs = coeffs.new_zeros(b, max_detections, p)
    out_valid = torch.zeros(b, max_detections, dtype=torch.bool, device=boxes.device)
    for i in range(b):
        candidate = scores[i].amax(dim=-1) > conf_thresh  # [N]
        anchor, label = torch.nonzero(scores[i] * candidate[:, None] > conf_thresh, as_tuple=True)
        s = scores[i, anchor, label]
        kept = batched_nms(boxes[i, anchor].float(), s.float(), label, iou_thresh)[:max_detections]
        m = kept.numel()
        out_boxes[i, :m] = boxes[i, anchor[kept]]
        out_scores[i, :m] = s[kept]
        out_labels[i, :m] = label[kept]
        out_coeffs[i, :m] = coeffs[i, anchor[kept]]
        out_valid[i, :m] = True
    return YolactDetections(out_boxes, out_scores, out_labels, out_coeffs, out_valid)


def assemble_masks(protos: Tensor, coeffs: Tensor, boxes: Tensor, input_size: tuple[int, int],
                   crop_padding: float = 1.0) -> Tensor:
    """Mask probabilities of detections at prototype resolution, cropped with their boxes.

    Args:
        protos: ``Tensor[B, P, h, w]``.
        coeffs: ``Tensor[B, D, P]``.
        boxes: ``Tensor[B, D, 4]`` x1y1x2y2 in input pixels.
        input_size: ``(H, W)`` of the network input (the prototypes cover it).
        crop_padding: padding of the crop in prototype pixels (1).

    Returns:
        ``Tensor[B, D, h, w]`` float32 probabilities, 0 outside the (padded) box.
    """
    h, w = protos.shape[-2:]
    masks = torch.sigmoid(torch.einsum("bphw,bdp->bdhw", protos.float(), coeffs.float()))
    scale = torch.tensor([w / input_size[1], h / input_size[0]] * 2, device=boxes.device)
    return crop_masks(masks, boxes.float() * scale, crop_padding)


def masks_to_frame(probs: Tensor, input_size: tuple[int, int], image_size: tuple[int, int],
                   out_size: tuple[int, int]) -> Tensor:
    """Resize prototype-resolution masks of one image to its output frame.

    The prototypes cover the whole padded input ``input_size``; the image occupies its top-left
    ``image_size`` and maps to ``out_size``. The masks are upsampled bilinearly to the padded
    input at the output scale and cropped (for an unpadded input: straight to ``out_size``, as
    the official ``postprocess``).

    Args:
        probs: ``Tensor[..., D, h, w]``.
        input_size: ``(H, W)`` of the padded network input.
        image_size: ``(h_i, w_i)`` of the image in that input.
        out_size: ``(H_0, W_0)`` of the output frame.

    Returns:
        ``Tensor[..., D, H_0, W_0]`` probabilities.
    """
    out_h, out_w = int(out_size[0]), int(out_size[1])
    full_h = round(input_size[0] * out_h / image_size[0])
    full_w = round(input_size[1] * out_w / image_size[1])
    lead = probs.shape[:-2]
    x = probs.reshape(-1, 1, *probs.shape[-2:])
    if x.shape[0] == 0:
        return probs.new_zeros((*lead, out_h, out_w))
    x = F.interpolate(x, size=(full_h, full_w), mode="bilinear", align_corners=False)
    return x[..., :out_h, :out_w].reshape(*lead, out_h, out_w)
