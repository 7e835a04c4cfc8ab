"""Panoptic fusion: UPSNet's parameter-free panoptic logits and its inference, and the heuristic
merge of Panoptic FPN style methods.

Xiong et al., "UPSNet: A Unified Panoptic Segmentation Network", CVPR 2019, section 3.3. The
numbers and steps follow the official code (uber-research/UPSNet @ aa8434e, the unary-logits,
mask-matching and mask-removal operators, the model's forward and the dataset's panoptic
post-processing); where this module differs, the function says so.

Class indices are the dataset's contiguous indices (things and stuff together, any order):
``stuff_classes`` and ``thing_classes`` say which is which. Panoptic logits of one image are
laid out as::

    channel   0 .. S-1          the S stuff classes (semantic logits, in stuff_classes order)
    channel   S .. S+N-1        the N instances
    channel   S+N               the unknown class (when enabled)

Pixel boxes: a box ``x1y1x2y2`` (continuous frame, ``x2`` exclusive) covers the pixel columns
``floor(x1) .. ceil(x2) - 1`` (``box_extents``), at least one pixel; for the integer boxes of
ground-truth masks this is exactly the mask's extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.ops.boxes import batched_nms, clip_boxes_to_image, remove_small_boxes
from lightning_seg.structures import InstancePredictions, PanopticPredictions

__all__ = [
    "box_extents",
    "box_masks",
    "class_agnostic_detections",
    "heuristic_merge",
    "paste_mask_logits",
    "remove_overlapping_masks",
    "resize_labels",
    "unified_panoptic_result",
    "upsample_semantic_logits",
    "upsnet_panoptic_logits",
    "upsnet_panoptic_targets",
]


# ------------------------------------------------------------------------------------ boxes
def box_extents(boxes: Tensor, scale: float = 1.0) -> Tensor:
    """Integer pixel extent of each box after scaling it by ``scale``.

    Args:
        boxes: ``Tensor[N, 4]`` x1y1x2y2 in pixels (continuous frame).
        scale: multiplies the coordinates first (``1 / stride`` for a feature map).

    Returns:
        ``Tensor[N, 4]`` int64 ``(x0, y0, x1, y1)``, end exclusive: ``floor`` of the low corner,
        ``ceil`` of the high corner, at least one pixel wide and high; not clipped.
    """
    b = boxes.detach().float() * scale
    lo = b[:, :2].floor()
    hi = torch.maximum(b[:, 2:].ceil(), lo + 1)
    return torch.cat([lo, hi], dim=1).to(torch.int64)  # [N, 4]


def box_masks(extents: Tensor, size: Sequence[int]) -> Tensor:
    """``Tensor[N, H, W]`` bool: the pixels inside each integer extent (clipped to ``size``)."""
    h, w = int(size[0]), int(size[1])
    ys = torch.arange(h, device=extents.device)
    xs = torch.arange(w, device=extents.device)
    in_y = (ys[None] >= extents[:, 1:2]) & (ys[None] < extents[:, 3:4])  # [N, H]
    in_x = (xs[None] >= extents[:, 0:1]) & (xs[None] < extents[:, 2:3])  # [N, W]
    return in_y[:, :, None] & in_x[:, None, :]  # [N, H, W]


def paste_mask_logits(mask_logits: Tensor, extents: Tensor, size: Sequence[int]) -> Tensor:
    """Resize each ``M x M`` mask to its box's integer extent and place it in an empty map.

    As the official ``MaskTerm`` / ``MaskRemoval``: the whole mask is bilinearly resized
    (``align_corners=False``) to the extent's size, no border padding, and the part inside the
    image is written; pixels outside the box are 0. Differentiable (training pastes mask logits
    at stride 4).

    Args:
        mask_logits: ``Tensor[N, M, M]``.
        extents: ``Tensor[N, 4]`` int64 from ``box_extents`` (in the frame of ``size``).
        size: ``(H, W)`` of the output map.

    Returns:
        ``Tensor[N, H, W]`` of the dtype of ``mask_logits``.
    """
    h, w = int(size[0]), int(size[1])
    out = mask_logits.new_zeros(mask_logits.shape[0], h, w)
    for i, (x0, y0, x1, y1) in enumerate(extents.tolist()):
        xs, xe, ys, ye = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        if xe <= xs or ye <= ys:
            continue
        resized = F.interpolate(mask_logits[i][None, None], size=(y1 - y0, x1 - x0),
                                mode="bilinear", align_corners=False)[0, 0]  # [box_h, box_w]
        out[i, ys:ye, xs:xe] = resized[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return out


# ------------------------------------------------------------------------------------ logits
def upsnet_panoptic_logits(
    semantic: Tensor,
    extents: Tensor,
    labels: Tensor,
    pasted_mask_logits: Tensor,
    stuff_classes: Sequence[int],
    thing_classes: Sequence[int],
    with_unknown: bool = True,
    empty_instance_logit: float = -10.0,
    mask_logit_weight: float = 1.0,
) -> Tensor:
    """UPSNet's panoptic logits of one image (no parameters).

    * stuff: the semantic logits of the stuff classes;
    * instance ``i`` of class ``c``: ``Y_i + w X_i``, with ``Y_i`` the semantic channel ``c``
      inside the box (0 outside), ``X_i`` the pasted mask logits (0 outside) and ``w`` =
      ``mask_logit_weight`` (1 in the paper and the official code);
    * unknown: ``max`` of the thing classes' semantic logits ``- max_i Y_i`` (the maximum runs
      over full channels, so it includes the zeros outside the boxes, as the official code);
      with no instance the official code uses a constant ``empty_instance_logit`` for
      ``max_i Y_i``.

    Without gradients (inference) the same values are computed box by box, without ``[N, H, W]``
    copies of the semantic logits and box masks; with them, in the differentiable form above.

    Args:
        semantic: ``Tensor[K, H, W]`` semantic logits (dataset class order).
        extents: ``Tensor[N, 4]`` int64 box extents in this frame (``box_extents``).
        labels: ``Tensor[N]`` int64 dataset class index of each instance (a thing class).
        pasted_mask_logits: ``Tensor[N, H, W]`` from ``paste_mask_logits``.
        stuff_classes: the S stuff class indices.
        thing_classes: the thing class indices.
        with_unknown: add the unknown channel.
        empty_instance_logit: ``max_i Y_i`` when ``N = 0``.
        mask_logit_weight: ``w``, the mask logits' weight against the semantic channel (an
            ablation knob; 1 = UPSNet).

    Returns:
        ``Tensor[S + N (+ 1), H, W]``.
    """
    size = semantic.shape[-2:]
    device = semantic.device
    if not (torch.is_grad_enabled() and (semantic.requires_grad or pasted_mask_logits.requires_grad)):
        return _upsnet_panoptic_logits_boxwise(
            semantic, extents, labels, pasted_mask_logits, stuff_classes, thing_classes, with_unknown,
            empty_instance_logit, mask_logit_weight)
    stuff = semantic[torch.as_tensor(list(stuff_classes), dtype=torch.int64, device=device)]
    inside = box_masks(extents, size)  # [N, H, W]
    y = torch.where(inside, semantic[labels], semantic.new_zeros(()))  # [N, H, W]
    channels = [stuff, y + mask_logit_weight * pasted_mask_logits.to(y.dtype)]
    if with_unknown:
        things = torch.as_tensor(list(thing_classes), dtype=torch.int64, device=device)
        thing_max = semantic[things].amax(0)  # [H, W]
        inst_max = y.amax(0) if y.shape[0] else torch.full_like(thing_max, empty_instance_logit)
        channels.append((thing_max - inst_max)[None])
    return torch.cat(channels, dim=0)


def _channel_max(semantic: Tensor, channels: Sequence[int]) -> Tensor:
    """``semantic[channels].amax(0)`` without the copy when the channels are a contiguous range."""
    channels = list(channels)
    if channels and channels == list(range(channels[0], channels[0] + len(channels))):
        return semantic[channels[0] : channels[0] + len(channels)].amax(0)
    return semantic[torch.as_tensor(channels, dtype=torch.int64, device=semantic.device)].amax(0)


@torch.no_grad()
def _upsnet_panoptic_logits_boxwise(
    semantic: Tensor,
    extents: Tensor,
    labels: Tensor,
    pasted_mask_logits: Tensor,
    stuff_classes: Sequence[int],
    thing_classes: Sequence[int],
    with_unknown: bool,
    empty_instance_logit: float,
    mask_logit_weight: float,
) -> Tensor:
    """``upsnet_panoptic_logits`` at inference, the same values computed box by box: the
    semantic channel is read and added inside each box only, and ``max_i Y_i`` is the maximum
    over the boxes covering a pixel (and 0 where some box does not), so no ``[N, H, W]`` copy
    of the semantic logits, box masks or sums is made (at COCO size with 100 detections, 6x
    faster on a CPU)."""
    k, h, w = semantic.shape
    n, s = labels.shape[0], len(stuff_classes)
    out = semantic.new_empty(s + n + int(with_unknown), h, w)
    torch.index_select(semantic, 0, torch.as_tensor(list(stuff_classes), dtype=torch.int64,
                                                    device=semantic.device), out=out[:s])
    inst = out[s : s + n]
    torch.mul(pasted_mask_logits.to(semantic.dtype), mask_logit_weight, out=inst)
    boxes = [(max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)) for x0, y0, x1, y1 in extents.tolist()]
    for i, (label, (xs, xe, ys, ye)) in enumerate(zip(labels.tolist(), boxes)):
        if xe > xs and ye > ys:
            inst[i, ys:ye, xs:xe] += semantic[label, ys:ye, xs:xe]  # Y_i + w X_i (X_i is 0 outside)
    if with_unknown:
        unknown = out[s + n]
        if n == 0:
            torch.sub(_channel_max(semantic, thing_classes), empty_instance_logit, out=unknown)
            return out
        inst_max = torch.full((h, w), float("-inf"), dtype=semantic.dtype, device=semantic.device)
        covered = torch.zeros((h, w), dtype=torch.int32, device=semantic.device)
        for label, (xs, xe, ys, ye) in zip(labels.tolist(), boxes):
            if xe > xs and ye > ys:
                region = inst_max[ys:ye, xs:xe]
                torch.maximum(region, semantic[label, ys:ye, xs:xe], out=region)
                covered[ys:ye, xs:xe] += 1
        inst_max = torch.where(covered < n, inst_max.clamp(min=0), inst_max)  # the 0s outside boxes
        torch.sub(_channel_max(semantic, thing_classes), inst_max, out=unknown)
    return out


def upsnet_panoptic_targets(
    semantic: Tensor,
    instance_masks: Tensor,
    stuff_classes: Sequence[int],
    ignore_index: int,
    with_unknown: bool = True,
    out_ignore: int = -100,
) -> Tensor:
    """Per-pixel targets of the panoptic logits (the official ``MaskMatching``).

    Stuff pixels take their stuff channel, void pixels stay ignored, the pixels of instance ``i``
    take channel ``S + i`` (overwriting whatever the semantic map says there, later instances
    winning), and every other pixel (a thing class without a kept instance: a dropped one, a
    crowd region) takes the unknown channel ``S + N``, or is ignored without it.

    Args:
        semantic: ``Tensor[H, W]`` int64 dataset class per pixel, ``ignore_index`` for void.
        instance_masks: ``Tensor[N, H, W]`` bool masks of the instances that have a channel.
        stuff_classes: the S stuff class indices.
        ignore_index: void label of ``semantic``.
        with_unknown: whether the logits have the unknown channel.
        out_ignore: the value of ignored pixels in the output.

    Returns:
        ``Tensor[H, W]`` int64 in ``0 .. S + N`` or ``out_ignore``.
    """
    s = len(stuff_classes)
    n = instance_masks.shape[0]
    lut_size = max(int(semantic.max()) if semantic.numel() else 0, ignore_index, *stuff_classes) + 1
    lut = torch.full((lut_size,), -1, dtype=torch.int64, device=semantic.device)
    lut[torch.as_tensor(list(stuff_classes), dtype=torch.int64, device=semantic.device)] = (
        torch.arange(s, device=semantic.device))
    lut[ignore_index] = out_ignore
    target = lut[semantic.clamp(min=0)]  # [H, W]; -1 = a thing pixel
    for i in range(n):
        target[instance_masks[i]] = s + i
    unmatched = target == -1
    target[unmatched] = s + n if with_unknown else out_ignore
    return target


# ------------------------------------------------------------------------------------ inference
@torch.no_grad()
def class_agnostic_detections(
    box_head,
    raw,
    image_sizes: Sequence[tuple[int, int]],
    score_thresh: float = 0.6,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> list[InstancePredictions]:
    """Detections for UPSNet's panoptic head: every (RoI, class) with a probability above
    ``score_thresh`` in one pool, class-agnostic NMS, the best ``detections_per_img`` kept.

    The official code's ``MaskROI(class_agnostic=True)``; the box head's own ``predict`` does
    per-class NMS at a low threshold for COCO AP instead.

    Args:
        box_head: a ``BoxRoIHead`` (its ``box_coder``, ``num_classes`` and ``min_box_size``).
        raw: its ``BoxHeadOutput`` computed without targets.
        image_sizes: ``(h, w)`` of each image; boxes are clipped to it.
        score_thresh: keep probabilities ``> score_thresh`` (0.6).
        nms_thresh: IoU of the class-agnostic NMS (0.5).
        detections_per_img: most detections per image (100).

    Returns:
        one ``InstancePredictions`` per image (labels ``0..K-1`` of the box head's classes).
    """
    rois = torch.cat(raw.rois, dim=0)  # [R, 4]
    boxes = box_head.box_coder.decode(raw.box_deltas.float(), rois.float())  # [R, K + 1, 4]
    scores = F.softmax(raw.class_logits.float(), dim=-1)  # [R, K + 1]
    sizes = [r.shape[0] for r in raw.rois]
    out = []
    for boxes_i, scores_i, size in zip(boxes.split(sizes), scores.split(sizes), image_sizes):
        size = (int(size[0]), int(size[1]))
        boxes_i = clip_boxes_to_image(boxes_i, size)[:, 1:].reshape(-1, 4)  # [R_i * K, 4]
        k = scores_i.shape[1] - 1
        classes = torch.arange(k, device=scores_i.device).repeat(scores_i.shape[0])  # [R_i * K]
        scores_i = scores_i[:, 1:].reshape(-1)
        keep = torch.nonzero(scores_i > score_thresh).squeeze(1)
        boxes_i, scores_i, classes = boxes_i[keep], scores_i[keep], classes[keep]
        keep = remove_small_boxes(boxes_i, box_head.min_box_size)
        boxes_i, scores_i, classes = boxes_i[keep], scores_i[keep], classes[keep]
        keep = batched_nms(boxes_i, scores_i, torch.zeros_like(classes), nms_thresh)
        keep = keep[:detections_per_img]
        out.append(InstancePredictions(boxes=boxes_i[keep], scores=scores_i[keep],
                                       labels=classes[keep], image_size=size))
    return out


def remove_overlapping_masks(
    masks: Tensor, labels: Tensor, scores: Tensor, overlap_thresh: float = 0.3
) -> Tensor:
    """Indices of the masks kept by the official ``MaskRemoval``, best score first.

    In score order, a mask is dropped when it is empty or when more than ``overlap_thresh`` of
    its pixels are already covered by kept masks **of its own class**.

    Args:
        masks: ``Tensor[N, H, W]`` bool.
        labels: ``Tensor[N]`` int64 classes.
        scores: ``Tensor[N]`` confidences.
        overlap_thresh: largest covered fraction kept (0.3).

    Returns:
        ``Tensor[N']`` int64 indices into the inputs, in decreasing score.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    covered: dict[int, Tensor] = {}
    keep = []
    for i in order.tolist():
        mask = masks[i]
        area = int(mask.sum())
        if area == 0:
            continue
        label = int(labels[i])
        seen = covered.get(label)
        if seen is not None and int((seen & mask).sum()) / area > overlap_thresh:
            continue
        covered[label] = mask.clone() if seen is None else seen | mask
        keep.append(i)
    return torch.tensor(keep, dtype=torch.int64, device=masks.device)


def upsample_semantic_logits(logits: Tensor, image_size: Sequence[int], stride: int) -> Tensor:
    """Semantic logits of one image at input resolution: bilinear ``x stride`` of the stride-4
    map (``align_corners=False``), cropped to the image's valid ``(h, w)``.

    Only the rows / columns the crop needs are upsampled (one more than the image covers, so the
    values equal those of upsampling the whole padded map).

    Args:
        logits: ``Tensor[K, H_s, W_s]`` at ``stride``.
        image_size: ``(h, w)`` of the image before padding.
        stride: the map's stride (4).

    Returns:
        ``Tensor[K, h, w]`` float32.
    """
    h, w = int(image_size[0]), int(image_size[1])
    hs = min(logits.shape[-2], -(-h // stride) + 1)
    ws = min(logits.shape[-1], -(-w // stride) + 1)
    up = F.interpolate(logits[None, :, :hs, :ws].float(), scale_factor=stride, mode="bilinear",
                       align_corners=False)[0]  # [K, hs * stride, ws * stride]
    return up[:, :h, :w]


def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of an integer map ``Tensor[H, W]`` to ``size`` (as cv2's
    ``INTER_NEAREST`` in the official code); unchanged when the size is the same."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape) == size:
        return labels
    out = F.interpolate(labels[None, None].double(), size=size, mode="nearest")[0, 0]
    return out.to(labels.dtype)


def _segments(
    cls_map: Tensor, inst_map: Tensor, inst_labels: Tensor, inst_scores: Tensor, num_classes: int
) -> PanopticPredictions:
    """Build ``PanopticPredictions`` from a class map (-1 void) and an instance map (0 none,
    ``i + 1`` instance ``i``): one segment per instance with pixels, one per stuff class present.
    Ids: instances first (in their order) then stuff classes (ascending), numbered from 1."""
    device = cls_map.device
    n = inst_labels.shape[0]
    k = num_classes
    # raw segment index: 1..n instances, n + 1 + c stuff class c
    raw = torch.where(inst_map > 0, inst_map, torch.where(cls_map >= 0, n + 1 + cls_map, 0))
    present = torch.bincount(raw.reshape(-1), minlength=n + 1 + k)[1:] > 0  # [n + k]
    raw_labels = torch.cat([inst_labels.to(device), torch.arange(k, device=device)])
    raw_scores = torch.cat([inst_scores.to(device).float(), torch.ones(k, device=device)])
    raw_thing = torch.cat([torch.ones(n, dtype=torch.bool, device=device),
                           torch.zeros(k, dtype=torch.bool, device=device)])
    keep = torch.nonzero(present).squeeze(1)  # [S'] raw index - 1
    new_id = torch.zeros(n + 1 + k, dtype=torch.int64, device=device)
    new_id[keep + 1] = torch.arange(1, keep.numel() + 1, device=device)
    return PanopticPredictions(
        segment_map=new_id[raw], ids=new_id[keep + 1], labels=raw_labels[keep],
        isthing=raw_thing[keep], scores=raw_scores[keep],
    )


def unified_panoptic_result(
    index_map: Tensor,
    semantic_map: Tensor,
    labels: Tensor,
    scores: Tensor,
    stuff_classes: Sequence[int],
    num_classes: int,
    stuff_area_limit: int = 4096,
    majority_thresh: float = 0.5,
) -> PanopticPredictions:
    """Segments from the arg-max of UPSNet's panoptic logits (the official unified result).

    * the unknown channel (index ``S + N``) becomes void;
    * instance ``i`` keeps its class when the semantic map's majority class in its pixels is its
      class; otherwise, when that majority is a stuff class covering at least
      ``majority_thresh`` of its pixels, the pixels become that stuff; otherwise it stays;
    * every stuff class then forms one segment, void when smaller than ``stuff_area_limit``.

    Args:
        index_map: ``Tensor[H, W]`` int64 panoptic arg-max in ``0 .. S + N``.
        semantic_map: ``Tensor[H, W]`` int64 semantic arg-max (dataset classes).
        labels: ``Tensor[N]`` int64 dataset class of each instance.
        scores: ``Tensor[N]`` confidences.
        stuff_classes: the S stuff classes (channel order).
        num_classes: K, all classes.
        stuff_area_limit: smallest stuff segment kept, in pixels of this frame.
        majority_thresh: share of the majority stuff class that relabels an instance.

    Returns:
        ``PanopticPredictions`` in the frame of the maps.
    """
    device = index_map.device
    s, n = len(stuff_classes), labels.shape[0]
    stuff = torch.as_tensor(list(stuff_classes), dtype=torch.int64, device=device)
    isthing = torch.ones(num_classes, dtype=torch.bool, device=device)
    isthing[stuff] = False
    cls_map = torch.full_like(index_map, -1)
    is_stuff = index_map < s
    cls_map[is_stuff] = stuff[index_map[is_stuff]]
    inst_map = torch.zeros_like(index_map)
    inst_pixels = (index_map >= s) & (index_map < s + n)
    inst_map[inst_pixels] = index_map[inst_pixels] - s + 1
    if n:
        # semantic class counts inside each instance's pixels: [N + 1, K] (row 0: other pixels)
        table = torch.bincount(inst_map.reshape(-1) * num_classes + semantic_map.reshape(-1),
                               minlength=(n + 1) * num_classes).view(n + 1, num_classes)[1:]
        top, majority = table.max(1)  # [N]
        area = table.sum(1)
        to_stuff = (majority != labels) & ~isthing[majority] & (
            top.double() >= majority_thresh * area.double()) & (area > 0)
        relabel = torch.where(to_stuff, majority, -1)  # [N]
        moved = inst_pixels & (relabel[(inst_map - 1).clamp(min=0)] >= 0)
        cls_map[moved] = relabel[inst_map[moved] - 1]
        inst_map[moved] = 0
        cls_map[inst_map > 0] = labels[inst_map[inst_map > 0] - 1]
    # small stuff regions become void
    stuff_area = torch.bincount(torch.where(inst_map == 0, cls_map, -1).reshape(-1) + 1,
                                minlength=num_classes + 1)[1:]  # [K]
    small = (stuff_area < stuff_area_limit) & ~isthing
    cls_map[(inst_map == 0) & (cls_map >= 0) & small[cls_map.clamp(min=0)]] = -1
    return _segments(cls_map, inst_map, labels, scores, num_classes)


def heuristic_merge(
    semantic_map: Tensor,
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    stuff_classes: Sequence[int],
    num_classes: int,
    score_thresh: float = 0.6,
    overlap_thresh: float = 0.3,
    stuff_area_limit: int = 4096,
) -> PanopticPredictions:
    """Heuristic merge of instance and semantic predictions (Panoptic FPN style; the official
    UPSNet repository's "combined" baseline).

    Instances in decreasing score with ``score >= score_thresh`` paste their pixels not taken
    yet, unless more than ``overlap_thresh`` of their mask is taken already (the official
    baseline keeps a mask when at least 70% of it is free); stuff classes smaller than
    ``stuff_area_limit`` in the semantic map become void; a pixel the semantic map calls a thing
    but no instance covers is void; the rest is stuff.

    Args:
        semantic_map: ``Tensor[H, W]`` int64 semantic arg-max (dataset classes).
        masks: ``Tensor[N, H, W]`` bool instance masks in the same frame.
        labels: ``Tensor[N]`` int64 dataset class of each instance.
        scores: ``Tensor[N]`` confidences.
        stuff_classes: the stuff classes.
        num_classes: K.
        score_thresh: lowest instance score used (0.6).
        overlap_thresh: largest share of a mask already taken for it to be pasted (0.3).
        stuff_area_limit: smallest stuff class area kept, pixels.

    Returns:
        ``PanopticPredictions`` in the frame of the maps.
    """
    device = semantic_map.device
    isthing = torch.ones(num_classes, dtype=torch.bool, device=device)
    isthing[torch.as_tensor(list(stuff_classes), dtype=torch.int64, device=device)] = False
    inst_map = torch.zeros_like(semantic_map)
    n = labels.shape[0]
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if float(scores[i]) < score_thresh:
            continue
        mask = masks[i]
        area = int(mask.sum())
        free = mask & (inst_map == 0)
        if area == 0 or area - int(free.sum()) > overlap_thresh * area:
            continue
        inst_map[free] = i + 1
    cls_map = semantic_map.clone()
    area = torch.bincount(semantic_map.reshape(-1), minlength=num_classes)  # [K]
    small = (area < stuff_area_limit) & ~isthing
    cls_map[small[semantic_map]] = -1
    cls_map[isthing[semantic_map] & (inst_map == 0)] = -1  # thing without an instance: void
    if n:
        cls_map[inst_map > 0] = labels[inst_map[inst_map > 0] - 1]
    return _segments(cls_map, inst_map, labels, scores, num_classes)
