"""YOLACT's heads (Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019;
"YOLACT++", TPAMI 2020): anchors, the shared prediction head, the protonet, the auxiliary
semantic head and YOLACT++'s mask re-scoring head.

Details follow the official code (dbolya/yolact @ 902073d: ``yolact.py``, ``data/config.py``,
``layers/modules/multibox_loss.py``); every number is a constructor argument whose default is
the official ``yolact_base_config`` (R101, 550 px). Each head splits ``forward`` (raw tensors),
``loss`` (named terms) and, where it predicts, ``predict``. All convolutions start with Xavier
uniform weights and zero biases, as the official ``init_weights``.

State-dict layout (``load_official_yolact`` maps the official names onto these)::

    head.upfeature.0.{weight,bias}      <- prediction_layers.0.upfeature.0.*
    head.box_layer.{weight,bias}        <- prediction_layers.0.bbox_layer.*
    head.class_layer.{weight,bias}      <- prediction_layers.0.conf_layer.*
    head.coeff_layer.{weight,bias}      <- prediction_layers.0.mask_layer.*
    protonet.layers.{0,2,4,8,10}.*      <- proto_net.{0,2,4,8,10}.*
    semantic_head.conv.*                <- semantic_seg_conv.*
    mask_iou_head.layers.{0,2,...,10}.* <- maskiou_net.maskiou_net.{0,2,...,10}.*
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.assigners.yolact_matcher import AnchorAssignment, YolactMatcher
from lightning_seg.models.losses.yolact import (
    MaskSamples,
    lincomb_mask_loss,
    mask_iou,
    ohem_cross_entropy,
    ohem_negatives,
    semantic_bce_loss,
)
from lightning_seg.ops.ssd_box_coder import SSDBoxCoder
from lightning_seg.structures.dataset_info import require_fact
from lightning_seg.structures.specs import FeatureShapes, ShapeSpec
from lightning_seg.structures.targets import InstanceTargets

#: anchor scales of YOLACT at 550 px, one tuple per level P3..P7
YOLACT_ANCHOR_SCALES = ((24,), (48,), (96,), (192,), (384,))


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every convolution of ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def yolact_anchor_scales(input_size: int = 550, base_size: int = 550, num_scales: int = 1,
                         base_scales: Sequence[float] = (24, 48, 96, 192, 384)) -> tuple[tuple[float, ...], ...]:
    """Anchor scales per level for another input size, as the official configs derive them.

    ``input_size`` 400 / 700 scale the 550-px scales by ``input_size / 550`` truncated to an
    integer (``yolact_im400`` / ``yolact_im700``); ``num_scales=3`` gives YOLACT++'s
    ``s * 2 ** (j / 3)`` for ``j = 0, 1, 2``.
    """
    out = []
    for s in base_scales:
        s = s if input_size == base_size else int(s / base_size * input_size)
        out.append(tuple(s * 2 ** (j / num_scales) for j in range(num_scales)))
    return tuple(out)


class YolactAnchors(nn.Module):
    """Anchors of every level, in pixels of the (padded) network input.

    At grid cell ``(y, x)`` of an ``H_l x W_l`` level the centre is
    ``((x + 0.5) / W_l * W, (y + 0.5) / H_l * H)`` for an ``H x W`` input (the official
    ``make_priors``). An anchor of scale ``s`` and aspect ratio ``r`` (``w / h``) has
    ``w = s * sqrt(r)``, ``h = s / sqrt(r)``; per location the order is scale-major, ratio-minor.

    ``square_anchors=True`` reproduces the official v1 configs' bug, kept for their weights
    (``use_square_anchors``): ``h = w``, so the three "ratios" 1, 1/2, 2 are squares of side
    ``s``, ``0.707 s`` and ``1.414 s``. The YOLACT paper's numbers and the released YOLACT
    weights (``yolact_base``, ``yolact_resnet50``, ``yolact_darknet53``, ``yolact_im700``) use
    square anchors; YOLACT++ uses true rectangles (``square_anchors=False``).

    Args:
        scales: per level, anchor scales in pixels (550 px: 24, 48, 96, 192, 384).
        aspect_ratios: ``w / h`` ratios, the same on every level (1, 1/2, 2).
        square_anchors: the official v1 quirk (above).
    """

    def __init__(
        self,
        scales: Sequence[Sequence[float]] = YOLACT_ANCHOR_SCALES,
        aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0),
        square_anchors: bool = True,
    ) -> None:
        super().__init__()
        self.scales = tuple(tuple(float(s) for s in level) for level in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.square_anchors = square_anchors
        counts = {len(level) for level in self.scales}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of scales, got {self.scales}")

    @property
    def num_anchors(self) -> int:
        """Anchors per location ``A``."""
        return len(self.scales[0]) * len(self.aspect_ratios)

    def cell_sizes(self, level: int) -> Tensor:
        """``Tensor[A, 2]`` ``(w, h)`` of the anchors of one location of ``level``."""
        sizes = []
        for s in self.scales[level]:
            for r in self.aspect_ratios:
                w = s * math.sqrt(r)
                sizes.append((w, w if self.square_anchors else s / math.sqrt(r)))
        return torch.tensor(sizes, dtype=torch.float32)

    def forward(self, grid_sizes: Sequence[tuple[int, int]], input_size: tuple[int, int],
                device: torch.device | str | None = None) -> Tensor:
        """Args:
            grid_sizes: ``(H_l, W_l)`` of each level, finest first.
            input_size: ``(H, W)`` of the network input.
            device: where to build them.

        Returns:
            ``Tensor[sum_l H_l * W_l * A, 4]`` float32 x1y1x2y2, ordered ``(level, y, x, a)``.
        """
        if len(grid_sizes) != len(self.scales):
            raise ValueError(f"{len(grid_sizes)} feature levels for {len(self.scales)} anchor scales")
        height, width = float(input_size[0]), float(input_size[1])
        out = []
        for level, (h, w) in enumerate(grid_sizes):
            cy = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h * height  # [h]
            cx = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w * width  # [w]
            yy, xx = torch.meshgrid(cy, cx, indexing="ij")  # [h, w]
            centres = torch.stack((xx, yy), dim=-1).reshape(-1, 1, 2)  # [h*w, 1, 2]
            half = self.cell_sizes(level).to(device)[None] / 2  # [1, A, 2]
            out.append(torch.cat((centres - half, centres + half), dim=-1).reshape(-1, 4))
        return torch.cat(out)


@dataclass
class YolactHeadOutput:
    """Raw outputs of the prediction head for a batch (anchors of all levels concatenated).

    Attributes:
        box_deltas: ``Tensor[B, N, 4]`` SSD deltas.
        class_logits: ``Tensor[B, N, K+1]`` (index 0: background).
        coeffs: ``Tensor[B, N, P]`` mask coefficients (after tanh).
        anchors: ``Tensor[N, 4]`` x1y1x2y2 in input pixels.
        input_size: ``(H, W)`` of the network input.
    """

    box_deltas: Tensor
    class_logits: Tensor
    coeffs: Tensor
    anchors: Tensor
    input_size: tuple[int, int]


@dataclass
class YolactAssignment:
    """The anchors' training targets for a batch (``YolactHead.match``).

    Attributes:
        labels: ``Tensor[B, N]`` int64 (-1 neutral, 0 background, ``k + 1`` class ``k``).
        matched_idxs: ``Tensor[B, N]`` int64 ground-truth index per anchor.
        num_pos: positives in the whole batch, at least 1 (the normaliser of the loss terms).
    """

    labels: Tensor
    matched_idxs: Tensor
    num_pos: int


class YolactHead(nn.Module):
    """The shared prediction head: per anchor, class logits, SSD box deltas and ``P`` mask
    coefficients, plus the anchor assignment and the class / box losses.

    One 3x3 conv + ReLU (``upfeature``), then three 3x3 convs to ``4A`` box, ``(K+1)A`` class
    and ``PA`` coefficient outputs; coefficients go through tanh. The same weights run on every
    level.

    Args:
        input_shape: the neck's shapes (all levels of ``in_features`` with the same channels).
        num_classes: ``K`` object classes (a dataset fact).
        in_features: levels the head runs on (P3..P7).
        anchors: the anchor generator (its scales give the number of levels and ``A``).
        num_prototypes: ``P`` coefficients per anchor; None: the channels of the ``"protos"``
            entry of ``input_shape`` (``Yolact`` adds the protonet's shape there, so that a
            sweep over ``k`` sets the protonet alone).
        channels: width of ``upfeature`` (256).
        matcher: anchor assignment (IoU 0.5 / 0.4, crowd 0.7).
        box_coder: SSD coding with variances (0.1, 0.2).
        neg_pos_ratio: OHEM negatives per positive (3).
        min_num_negatives: OHEM negatives of an image with few or no positives (0: official;
            an image without objects then gives no loss).
        cls_loss_weight: weight of the class term (1).
        box_loss_weight: weight of the smooth-L1 box term (1.5).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_classes: int | None = None,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        anchors: YolactAnchors | None = None,
        num_prototypes: int | None = None,
        channels: int = 256,
        matcher: YolactMatcher | None = None,
        box_coder: SSDBoxCoder | None = None,
        neg_pos_ratio: float = 3.0,
        min_num_negatives: int = 0,
        cls_loss_weight: float = 1.0,
        box_loss_weight: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        self.in_features = tuple(in_features)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(f"YolactHead in_features {missing} not among the neck's levels {list(input_shape)}")
        widths = {input_shape[f].channels for f in self.in_features}
        if len(widths) != 1:
            raise ValueError(f"YolactHead levels must share one width, got {widths}")
        self.anchors = anchors or YolactAnchors()
        if len(self.anchors.scales) != len(self.in_features):
            raise ValueError(
                f"{len(self.anchors.scales)} anchor levels for {len(self.in_features)} in_features"
            )
        a = self.anchors.num_anchors
        if num_prototypes is None:
            if "protos" not in input_shape:
                raise ValueError("YolactHead needs num_prototypes (or a 'protos' entry in input_shape)")
            num_prototypes = input_shape["protos"].channels
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Sequential(nn.Conv2d(widths.pop(), channels, 3, padding=1), nn.ReLU())
        self.box_layer = nn.Conv2d(channels, a * 4, 3, padding=1)
        self.class_layer = nn.Conv2d(channels, a * (self.num_classes + 1), 3, padding=1)
        self.coeff_layer = nn.Conv2d(channels, a * num_prototypes, 3, padding=1)
        self.matcher = matcher or YolactMatcher()
        self.box_coder = box_coder or SSDBoxCoder()
        self.neg_pos_ratio = neg_pos_ratio
        self.min_num_negatives = min_num_negatives
        self.cls_loss_weight = cls_loss_weight
        self.box_loss_weight = box_loss_weight
        xavier_init(self)

    def forward(self, features: dict[str, Tensor], input_size: tuple[int, int]) -> YolactHeadOutput:
        """Args:
            features: the pyramid (``{level: Tensor[B, C, H_l, W_l]}``).
            input_size: ``(H, W)`` of the network input.
        """
        deltas, logits, coeffs, grids = [], [], [], []
        k1, p = self.num_classes + 1, self.num_prototypes
        for f in self.in_features:
            x = self.upfeature(features[f])
            b, _, h, w = x.shape
            grids.append((h, w))
            deltas.append(self.box_layer(x).permute(0, 2, 3, 1).reshape(b, -1, 4))  # [B, hwA, 4]
            logits.append(self.class_layer(x).permute(0, 2, 3, 1).reshape(b, -1, k1))  # [B, hwA, K+1]
            coeffs.append(self.coeff_layer(x).permute(0, 2, 3, 1).reshape(b, -1, p))  # [B, hwA, P]
        size = (int(input_size[0]), int(input_size[1]))
        return YolactHeadOutput(
            box_deltas=torch.cat(deltas, 1),
            class_logits=torch.cat(logits, 1),
            coeffs=torch.tanh(torch.cat(coeffs, 1)),
            anchors=self.anchors(grids, size, device=deltas[0].device),
            input_size=size,
        )

    def match(self, raw: YolactHeadOutput, targets: Sequence[InstanceTargets]) -> YolactAssignment:
        """Assign every anchor of every image (crowd instances are crowd regions, not targets).

        Args:
            raw: the head's output.
            targets: per image, instances in the input frame (already filtered).
        """
        labels, matched = [], []
        for t in targets:
            crowd = t.iscrowd.to(t.boxes.device)
            a: AnchorAssignment = self.matcher(
                raw.anchors, t.boxes[~crowd], t.labels[~crowd], t.boxes[crowd] if bool(crowd.any()) else None
            )
            labels.append(a.labels)
            matched.append(a.matched_idxs)
        labels_t = torch.stack(labels)  # [B, N]
        return YolactAssignment(labels_t, torch.stack(matched), max(int((labels_t > 0).sum()), 1))

    def loss(self, raw: YolactHeadOutput, assignment: YolactAssignment,
             targets: Sequence[InstanceTargets]) -> dict[str, Tensor]:
        """``loss_cls`` (softmax CE with OHEM) and ``loss_box`` (smooth L1 on SSD deltas), each
        summed and divided by the batch's positives, then weighted.

        Args:
            raw: the head's output.
            assignment: from ``match``.
            targets: the same targets as for ``match``.
        """
        labels = assignment.labels
        negatives = ohem_negatives(raw.class_logits, labels, self.neg_pos_ratio, self.min_num_negatives)
        loss_cls = ohem_cross_entropy(raw.class_logits, labels, negatives)
        pos = labels > 0  # [B, N]
        if bool(pos.any()):
            gt = torch.stack([
                _non_crowd(t).boxes[m] if len(_non_crowd(t)) else raw.anchors
                for t, m in zip(targets, assignment.matched_idxs)
            ])  # [B, N, 4]
            box_targets = self.box_coder.encode(gt[pos].float(), raw.anchors[None].expand_as(gt)[pos])
            loss_box = F.smooth_l1_loss(raw.box_deltas[pos].float(), box_targets, reduction="sum")
        else:
            loss_box = raw.box_deltas.sum() * 0.0
        n = assignment.num_pos
        return {"loss_cls": loss_cls * self.cls_loss_weight / n, "loss_box": loss_box * self.box_loss_weight / n}

    def decode(self, raw: YolactHeadOutput) -> tuple[Tensor, Tensor]:
        """Boxes and class probabilities of every anchor.

        Returns:
            ``Tensor[B, N, 4]`` x1y1x2y2 boxes in input pixels (float32, not clipped) and
            ``Tensor[B, N, K+1]`` softmax probabilities (float32).
        """
        boxes = self.box_coder.decode(raw.box_deltas.float(), raw.anchors[None])
        return boxes, torch.softmax(raw.class_logits.float(), dim=-1)


def _non_crowd(t: InstanceTargets) -> InstanceTargets:
    crowd = t.iscrowd.to(t.boxes.device)
    return t if not bool(crowd.any()) else t.select(~crowd)


class ProtoNet(nn.Module):
    """The protonet: ``k`` prototype masks from the finest pyramid level.

    ``num_convs`` x (3x3 conv + ReLU), bilinear x2 upsampling (+ ReLU, kept as the official
    ``make_net`` has it), one more 3x3 conv + ReLU, a 1x1 conv to ``num_prototypes`` and a ReLU
    (the official ``mask_proto_prototype_activation``). Output stride: half the input's (4 on
    P3). ``layers`` indices equal the official ``proto_net``'s.

    Args:
        input_shape: the neck's shapes.
        in_feature: level it reads (``"p3"``).
        num_prototypes: ``k`` (32; the paper's ablation: 8..256).
        channels: width of the convs (256).
        num_convs: 3x3 convs before the upsampling (3).
        masks_to_train: at most this many positives per image enter the mask loss, chosen at
            random, the loss rescaled by (positives / chosen) (100; 300 at 700 px).
        mask_loss_weight: weight of the mask term (6.125).
        crop_padding: padding of the box crop in prototype pixels (1).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        in_feature: str = "p3",
        num_prototypes: int = 32,
        channels: int = 256,
        num_convs: int = 3,
        masks_to_train: int = 100,
        mask_loss_weight: float = 6.125,
        crop_padding: float = 1.0,
    ) -> None:
        super().__init__()
        if in_feature not in input_shape:
            raise ValueError(f"ProtoNet in_feature {in_feature!r} not among {list(input_shape)}")
        layers: list[nn.Module] = []
        c_in = input_shape[in_feature].channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
            c_in = channels
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReLU()]
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, num_prototypes, 1)]
        self.layers = nn.Sequential(*layers)
        self.in_feature = in_feature
        self.num_prototypes = num_prototypes
        self.stride = input_shape[in_feature].stride / 2
        self.masks_to_train = masks_to_train
        self.mask_loss_weight = mask_loss_weight
        self.crop_padding = crop_padding
        xavier_init(self)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"protos": ShapeSpec(self.num_prototypes, int(self.stride))}

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """``Tensor[B, P, 2 H_3, 2 W_3]`` non-negative prototypes."""
        return F.relu(self.layers(features[self.in_feature]))

    def loss(
        self,
        protos: Tensor,
        coeffs: Tensor,
        assignment: YolactAssignment,
        targets: Sequence[InstanceTargets],
        input_size: tuple[int, int],
    ) -> tuple[dict[str, Tensor], MaskSamples]:
        """``loss_mask``: the cropped, box-area-normalised BCE of the assembled masks
        (``lincomb_mask_loss``), summed over at most ``masks_to_train`` positives per image,
        times ``mask_loss_weight``, divided by the batch's positives.

        Args:
            protos: ``Tensor[B, P, h, w]``.
            coeffs: ``Tensor[B, N, P]`` of every anchor.
            assignment: the anchors' targets.
            targets: per image, instances with masks in the input frame (top-left of the
                padded input).
            input_size: ``(H, W)`` of the padded network input.

        Returns:
            the loss term and the samples it used (for a mask-IoU head).
        """
        total = (protos.sum() + coeffs.sum()) * 0.0  # graph stays connected without positives
        h, w = protos.shape[-2:]
        scale = protos.new_tensor([w / input_size[1], h / input_size[0]] * 2).float()
        probs, masks_t, labels_t = [], [], []
        for i, t in enumerate(targets):
            t = _non_crowd(t)
            pos = torch.nonzero(assignment.labels[i] > 0).flatten()
            if pos.numel() == 0 or len(t) == 0:
                continue
            if t.masks is None:
                raise ValueError("YOLACT's mask loss needs instance masks: the targets have none")
            num_pos = pos.numel()
            if num_pos > self.masks_to_train:
                pos = pos[torch.randperm(num_pos, device=pos.device)[: self.masks_to_train]]
            gt_idx = assignment.matched_idxs[i, pos]
            down = downsample_masks(t.masks, input_size, (h, w))  # [M, h, w]
            per_mask, prob = lincomb_mask_loss(
                protos[i], coeffs[i, pos], down[gt_idx], t.boxes[gt_idx].float() * scale, self.crop_padding
            )
            total = total + per_mask.sum() * (num_pos / pos.numel())
            probs.append(prob)
            masks_t.append(down[gt_idx])
            labels_t.append(t.labels[gt_idx])
        samples = MaskSamples(
            probs=torch.cat(probs) if probs else protos.new_zeros(0, h, w),
            targets=torch.cat(masks_t) if masks_t else protos.new_zeros(0, h, w),
            labels=torch.cat(labels_t) if labels_t else torch.zeros(0, dtype=torch.int64, device=protos.device),
        )
        return {"loss_mask": total * self.mask_loss_weight / assignment.num_pos}, samples


def downsample_masks(masks: Tensor, input_size: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Binary masks of the image (top-left of a padded input) on a grid covering the whole padded
    input: zero-padded, bilinearly resized, thresholded at 0.5 (as the official losses).

    Args:
        masks: ``Tensor[M, h_i, w_i]`` bool.
        input_size: ``(H, W)`` of the padded input.
        size: ``(h, w)`` of the grid.

    Returns:
        ``Tensor[M, h, w]`` float 0/1.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    pad_h, pad_w = input_size[0] - masks.shape[-2], input_size[1] - masks.shape[-1]
    x = F.pad(masks[None].float(), (0, pad_w, 0, pad_h))
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0]
    return (x > 0.5).float()


class YolactSemanticHead(nn.Module):
    """Auxiliary semantic segmentation on P3 (training only): a 1x1 conv to ``K`` logits and a
    per-class sigmoid BCE against the union of each class's instance masks.

    Args:
        input_shape: the neck's shapes.
        num_classes: ``K`` (a dataset fact).
        in_feature: level it reads (``"p3"``).
        loss_weight: weight of the term (1).
    """

    def __init__(self, input_shape: FeatureShapes, num_classes: int | None = None,
                 in_feature: str = "p3", loss_weight: float = 1.0) -> None:
        super().__init__()
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        if in_feature not in input_shape:
            raise ValueError(f"YolactSemanticHead in_feature {in_feature!r} not among {list(input_shape)}")
        self.in_feature = in_feature
        self.conv = nn.Conv2d(input_shape[in_feature].channels, self.num_classes, 1)
        self.loss_weight = loss_weight
        xavier_init(self)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """``Tensor[B, K, H_3, W_3]`` logits."""
        return self.conv(features[self.in_feature])

    def loss(self, logits: Tensor, targets: Sequence[InstanceTargets],
             input_size: tuple[int, int]) -> dict[str, Tensor]:
        """``loss_semantic``: per image, BCE summed over classes and pixels, divided by the map's
        area; summed over the batch and divided by its size."""
        total = logits.sum() * 0.0
        k, h, w = logits.shape[1:]
        for i, t in enumerate(targets):
            t = _non_crowd(t)
            target = logits.new_zeros(k, h, w, dtype=torch.float32)
            if len(t) and t.masks is not None:
                down = downsample_masks(t.masks, input_size, (h, w))  # [M, h, w]
                one_hot = F.one_hot(t.labels, k).T.float()  # [K, M]
                target = (one_hot @ down.flatten(1)).clamp(max=1).reshape(k, h, w)
            total = total + semantic_bce_loss(logits[i], target)
        return {"loss_semantic": total * self.loss_weight / max(len(targets), 1)}


class MaskIoUHead(nn.Module):
    """YOLACT++'s fast mask re-scoring network: the IoU of each cropped mask with its ground truth.

    ``len(channels)`` stride-2 3x3 convs + ReLU (8, 16, 32, 64, 128), a 1x1 conv to ``K``
    outputs + ReLU, and a global max-pool; the output of the detection's class is its IoU. At
    test time a detection's mask score is its class score times that IoU.

    Args:
        num_classes: ``K`` (a dataset fact).
        channels: widths of the stride-2 convs.
        loss_weight: weight of the smooth-L1 term (25).
        min_mask_area: ground-truth masks of at most this many prototype pixels are not used
            (25, the official ``discard_mask_area``).
    """

    def __init__(self, num_classes: int | None = None, channels: Sequence[int] = (8, 16, 32, 64, 128),
                 loss_weight: float = 25.0, min_mask_area: float = 25.0) -> None:
        super().__init__()
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2), nn.ReLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, self.num_classes, 1), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.loss_weight = loss_weight
        self.min_mask_area = min_mask_area
        self.min_size = 2 ** (len(channels) + 1) - 1  # the unpadded stride-2 convs need this
        xavier_init(self)

    def forward(self, masks: Tensor) -> Tensor:
        """``Tensor[N, 1, h, w]`` mask probabilities -> ``Tensor[N, K]`` predicted IoUs.

        Masks smaller than the convs need (63 px for 5 of them; the prototypes are 138 px at
        550) are zero-padded at the bottom / right first.
        """
        h, w = masks.shape[-2:]
        if h < self.min_size or w < self.min_size:
            masks = F.pad(masks, (0, max(self.min_size - w, 0), 0, max(self.min_size - h, 0)))
        return torch.amax(self.layers(masks), dim=(2, 3))

    def loss(self, samples: MaskSamples, num_pos: int) -> dict[str, Tensor]:
        """``loss_mask_iou``: smooth L1 between the predicted IoU of each sampled mask (its class)
        and the IoU of the binarised mask with the ground truth, summed, weighted, divided by
        the batch's positives."""
        keep = samples.targets.sum(dim=(1, 2)) > self.min_mask_area
        if not bool(keep.any()):
            return {"loss_mask_iou": sum(p.sum() for p in self.parameters()) * 0.0}
        probs, targets, labels = samples.probs[keep], samples.targets[keep], samples.labels[keep]
        with torch.no_grad():
            iou_t = mask_iou(probs > 0.5, targets)
        pred = self(probs[:, None]).gather(1, labels[:, None])[:, 0]
        loss = F.smooth_l1_loss(pred.float(), iou_t, reduction="sum")
        return {"loss_mask_iou": loss * self.loss_weight / num_pos}

    def predict(self, masks: Tensor, labels: Tensor) -> Tensor:
        """``Tensor[N]`` predicted IoU of each ``Tensor[N, h, w]`` mask for its class."""
        return self(masks[:, None]).gather(1, labels[:, None])[:, 0]
