"""Region Proposal Network (Ren et al., Faster R-CNN, NeurIPS 2015) on FPN levels (CVPR 2017).

Configured alike, ``RPN`` gives the same proposals and losses as torchvision's
``RegionProposalNetwork`` (golden tests). Differences, none of which changes results in float32:

* anchors and box decoding are always float32 (torchvision builds anchors in the feature dtype,
  which loses whole pixels under bf16 autocast);
* only the pre-NMS top-k anchors of each level are decoded, and regression targets are encoded
  for the sampled positives only (torchvision encodes every anchor);
* targets are expected filtered (the detector's ``TargetFilter`` drops crowd regions and
  degenerate boxes once, counted), so an image with only crowd boxes is a background image
  (torchvision has no crowd notion; COCO-trained Detectron models drop crowd boxes the same way);
* an image without ground truth is a background image: all anchors negative, box loss exactly 0.

State-dict layout of ``RPNHead`` (see ``rpn_key_map_from_torchvision``)::

    conv.{weight,bias}               <- torchvision head.conv.0.0.{weight,bias}
    objectness_logits.{weight,bias}  <- torchvision head.cls_logits.{weight,bias}
    box_deltas.{weight,bias}         <- torchvision head.bbox_pred.{weight,bias}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.assigners.matcher import MaxIoUMatcher
from lightning_seg.models.assigners.sampler import BalancedSampler
from lightning_seg.models.heads.anchors import AnchorGenerator
from lightning_seg.ops.boxes import (
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from lightning_seg.structures.specs import FeatureShapes
from lightning_seg.structures.targets import InstanceTargets


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs to ``A`` objectness logits and ``A * 4`` box deltas.

    Args:
        in_channels: channels of every input level (the FPN's width).
        num_anchors: anchors per location ``A`` (3 aspect ratios x 1 size on an FPN).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.box_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.box_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``Tensor[B, C, H, W]`` -> objectness ``Tensor[B, A, H, W]`` and deltas
        ``Tensor[B, A*4, H, W]``."""
        objectness, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x), inplace=True)
            objectness.append(self.objectness_logits(t))
            deltas.append(self.box_deltas(t))
        return objectness, deltas


def rpn_key_map_from_torchvision(
    src_prefix: str = "rpn.", dst_prefix: str = "rpn."
) -> dict[str, str]:
    """State-dict key correspondence torchvision ``RegionProposalNetwork`` -> ``RPN``.

    Covers the current (``head.conv.0.0.weight``) and the old (``head.conv.weight``) layouts.

    Args:
        src_prefix: prefix of the torchvision RPN keys (``"rpn."`` in its detectors).
        dst_prefix: prefix of our ``RPN`` in the model.

    Returns:
        ``{torchvision_key: our_key}``.
    """
    mapping = {}
    for param in ("weight", "bias"):
        for src in (f"head.conv.0.0.{param}", f"head.conv.{param}"):
            mapping[src_prefix + src] = f"{dst_prefix}head.conv.{param}"
        for src, dst in (("cls_logits", "objectness_logits"), ("bbox_pred", "box_deltas")):
            mapping[f"{src_prefix}head.{src}.{param}"] = f"{dst_prefix}head.{dst}.{param}"
    return mapping


@dataclass
class RPNOutput:
    """Raw RPN output of a batch.

    Attributes:
        objectness: per level ``Tensor[B, A, H_l, W_l]`` logits.
        box_deltas: per level ``Tensor[B, A*4, H_l, W_l]`` deltas ``(dx, dy, dw, dh)`` per anchor.
        anchors: per level ``Tensor[H_l*W_l*A, 4]`` float32 ``x1y1x2y2`` in the padded image,
            ordered ``(y, x, a)`` like the flattened predictions; the same for every image.
        image_sizes: ``(h, w)`` of each image before padding.
    """

    objectness: list[Tensor]
    box_deltas: list[Tensor]
    anchors: list[Tensor]
    image_sizes: list[tuple[int, int]]

    @property
    def num_anchors_per_level(self) -> list[int]:
        return [a.shape[0] for a in self.anchors]

    def flat_objectness(self) -> Tensor:
        """``Tensor[B, sum_l H_l*W_l*A]`` logits, levels concatenated, in anchor order."""
        # each level [B, A, H, W] -> [B, H, W, A] -> [B, H*W*A]
        return torch.cat([o.permute(0, 2, 3, 1).flatten(1) for o in self.objectness], dim=1)

    def flat_box_deltas(self) -> Tensor:
        """``Tensor[B, sum_l H_l*W_l*A, 4]`` deltas, levels concatenated, in anchor order."""
        return torch.cat([_flatten_deltas(d) for d in self.box_deltas], dim=1)


def _flatten_deltas(deltas: Tensor) -> Tensor:
    """``Tensor[B, A*4, H, W]`` -> ``Tensor[B, H*W*A, 4]`` in anchor order ``(y, x, a)``."""
    b, a4, h, w = deltas.shape
    deltas = deltas.view(b, a4 // 4, 4, h, w)  # [B, A, 4, H, W]
    return deltas.permute(0, 3, 4, 1, 2).reshape(b, -1, 4)  # [B, H*W*A, 4]


class RPN(nn.Module):
    """Anchors + head + target assignment + proposal selection.

    Training labels anchors by IoU with the ground truth (``>= fg_iou_thresh`` positive,
    ``< bg_iou_thresh`` negative, in between ignored; each ground truth also keeps its best
    anchors), samples ``batch_size_per_image`` anchors per image at ``positive_fraction``
    positives, and returns ``loss_rpn_cls`` (BCE over the sampled anchors, mean) and
    ``loss_rpn_box`` (smooth-L1 with ``box_loss_beta`` summed over the sampled positives and
    divided by the number of sampled anchors), each times its weight.

    Proposals: per level the ``pre_nms_top_n`` highest-scoring anchors are decoded, clipped to
    the image, boxes smaller than ``min_size`` and scores below ``score_thresh`` dropped, NMS at
    ``nms_thresh`` run per level, and the ``post_nms_top_n`` best kept per image. The train or
    test top-k settings apply according to ``self.training``.

    A network receives the RPN as a callable of its neck's shapes (YAML: ``class_path: RPN``
    with the arguments below except ``input_shape``): the head width and the anchor strides are
    read from the shapes.

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck (its ``output_shape()``).
        in_features: feature levels used, finest first (the neck's level names).
        anchor_sizes: per level, one anchor size (Mask R-CNN FPN: 32..512) or a list of sizes.
        aspect_ratios: anchor ``h / w`` ratios, the same on every level.
        fg_iou_thresh: IoU at or above which an anchor is positive.
        bg_iou_thresh: IoU below which an anchor is negative.
        batch_size_per_image: anchors sampled per image for the losses.
        positive_fraction: wanted share of positives among them.
        pre_nms_top_n_train: anchors kept per level before NMS, training.
        post_nms_top_n_train: proposals kept per image after NMS, training.
        pre_nms_top_n_test: anchors kept per level before NMS, inference.
        post_nms_top_n_test: proposals kept per image after NMS, inference.
        nms_thresh: IoU threshold of the per-level NMS.
        score_thresh: minimum objectness probability of a proposal.
        min_size: minimum width and height of a proposal in pixels.
        box_loss_beta: smooth-L1 beta of the box loss (torchvision 1/9; 0 gives L1 as Detectron2).
        loss_cls_weight: multiplier of ``loss_rpn_cls``.
        loss_box_weight: multiplier of ``loss_rpn_box``.
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6"),
        anchor_sizes: Sequence[float | Sequence[float]] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n_train: int = 2000,
        post_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        box_loss_beta: float = 1.0 / 9.0,
        loss_cls_weight: float = 1.0,
        loss_box_weight: float = 1.0,
    ) -> None:
        super().__init__()
        in_features = tuple(in_features)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"RPN in_features {missing} are not among the neck's levels {list(input_shape)}"
            )
        if len(anchor_sizes) != len(in_features):
            raise ValueError(
                f"anchor_sizes has {len(anchor_sizes)} entries but in_features {in_features} has "
                f"{len(in_features)}; give one anchor size (or list of sizes) per level"
            )
        widths = {input_shape[f].channels for f in in_features}
        if len(widths) != 1:
            raise ValueError(f"the RPN head is shared across levels: they need equal channels, got {widths}")
        sizes = [tuple(s) if isinstance(s, Sequence) else (s,) for s in anchor_sizes]
        anchor_generator = AnchorGenerator(
            sizes=sizes,
            aspect_ratios=[tuple(aspect_ratios)] * len(in_features),
            strides=[input_shape[f].stride for f in in_features],
        )
        counts = set(anchor_generator.num_anchors_per_location())
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of anchor sizes, got {anchor_sizes}")
        head = RPNHead(widths.pop(), counts.pop())
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = in_features
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = MaxIoUMatcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n_train = pre_nms_top_n_train
        self.post_nms_top_n_train = post_nms_top_n_train
        self.pre_nms_top_n_test = pre_nms_top_n_test
        self.post_nms_top_n_test = post_nms_top_n_test
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.box_loss_beta = box_loss_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_box_weight = loss_box_weight

    # ------------------------------------------------------------------ forward
    def forward(
        self, features: Mapping[str, Tensor], image_sizes: Sequence[tuple[int, int]]
    ) -> RPNOutput:
        """Run the head on every level and lay anchors on the padded batch.

        Args:
            features: ``{level: Tensor[B, C, H_l, W_l]}`` containing ``in_features``.
            image_sizes: ``(h, w)`` of each image before padding.

        Returns:
            ``RPNOutput``.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(
                f"RPN in_features {missing} not in the features {list(features)}; set in_features"
            )
        feats = [features[f] for f in self.in_features]
        if len(image_sizes) != feats[0].shape[0]:
            raise ValueError(f"{len(image_sizes)} image sizes for a batch of {feats[0].shape[0]}")
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator([f.shape[-2:] for f in feats], device=feats[0].device)
        return RPNOutput(objectness, deltas, anchors, [tuple(s) for s in image_sizes])

    # ------------------------------------------------------------------ loss
    def loss(self, raw: RPNOutput, targets: Sequence[InstanceTargets]) -> dict[str, Tensor]:
        """Objectness and box losses on sampled anchors.

        Args:
            raw: output of ``forward``.
            targets: per image ground truth, filtered (``TargetFilter``); boxes in the pixel
                frame of the padded image (top-left aligned, so the frame of the unpadded image).

        Returns:
            ``{"loss_rpn_cls": Tensor[], "loss_rpn_box": Tensor[]}``, already weighted.
        """
        anchors = torch.cat(raw.anchors)  # [NA, 4]
        logits = raw.flat_objectness().float()  # [B, NA]
        deltas = raw.flat_box_deltas().float()  # [B, NA, 4]
        num_images, num_anchors = logits.shape
        if len(targets) != num_images:
            raise ValueError(f"{len(targets)} targets for a batch of {num_images}")

        labels, matched_boxes = [], []
        for target in targets:
            gt = target.boxes.to(anchors)
            if gt.shape[0] == 0:
                labels.append(torch.zeros(num_anchors, device=anchors.device))
                matched_boxes.append(torch.zeros_like(anchors))
                continue
            matches = self.matcher(box_iou(gt, anchors))  # [NA]
            image_labels = (matches >= 0).to(torch.float32)
            image_labels[matches == MaxIoUMatcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
            matched_boxes.append(gt[matches.clamp(min=0)])  # [NA, 4]

        pos_masks, neg_masks = self.sampler(labels)
        pos = torch.nonzero(torch.cat(pos_masks)).squeeze(1)  # indices into B*NA, image major
        neg = torch.nonzero(torch.cat(neg_masks)).squeeze(1)
        sampled = torch.cat([pos, neg])
        num_sampled = max(sampled.numel(), 1)

        flat_labels = torch.cat(labels)  # [B*NA]
        flat_logits = logits.reshape(-1)  # [B*NA]
        if sampled.numel() > 0:
            loss_cls = F.binary_cross_entropy_with_logits(
                flat_logits[sampled], flat_labels[sampled]
            )
        else:
            loss_cls = flat_logits.sum() * 0

        pos_anchors = anchors[pos % num_anchors]  # [P, 4]
        box_targets = self.box_coder.encode(torch.cat(matched_boxes)[pos], pos_anchors)
        pos_deltas = deltas.reshape(-1, 4)[pos]  # [B*NA, 4] -> [P, 4]
        loss_box = F.smooth_l1_loss(
            pos_deltas, box_targets, beta=self.box_loss_beta, reduction="sum"
        ) / num_sampled
        return {
            "loss_rpn_cls": loss_cls * self.loss_cls_weight,
            "loss_rpn_box": loss_box * self.loss_box_weight,
        }

    # ------------------------------------------------------------------ predict
    def predict(
        self, raw: RPNOutput, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[Tensor]:
        """Proposals per image (see ``predict_with_scores``): ``list[Tensor[R_i, 4]]``."""
        return self.predict_with_scores(raw, image_sizes)[0]

    @torch.no_grad()
    def predict_with_scores(
        self, raw: RPNOutput, image_sizes: Sequence[tuple[int, int]] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals and their objectness probabilities, no gradient (Faster R-CNN does not
        back-propagate through proposals).

        Args:
            raw: output of ``forward``.
            image_sizes: ``(h, w)`` per image to clip to (default: ``raw.image_sizes``).

        Returns:
            ``(boxes, scores)``: per image ``Tensor[R_i, 4]`` float32 ``x1y1x2y2`` sorted by
            decreasing score, ``R_i <= post_nms_top_n``, and ``Tensor[R_i]`` in ``[0, 1]``.
        """
        image_sizes = raw.image_sizes if image_sizes is None else [tuple(s) for s in image_sizes]
        pre_nms_top_n = self.pre_nms_top_n_train if self.training else self.pre_nms_top_n_test
        post_nms_top_n = self.post_nms_top_n_train if self.training else self.post_nms_top_n_test

        level_logits, level_boxes, level_ids = [], [], []
        levels = zip(raw.objectness, raw.box_deltas, raw.anchors)
        for level, (objectness, deltas, anchors) in enumerate(levels):
            num_images = objectness.shape[0]
            logits = objectness.permute(0, 2, 3, 1).flatten(1).float()  # [B, H*W*A]
            k = min(pre_nms_top_n, logits.shape[1])
            top_logits, top_idx = logits.topk(k, dim=1)  # [B, k]
            top_deltas = torch.gather(
                _flatten_deltas(deltas), 1, top_idx[..., None].expand(-1, -1, 4)
            )  # [B, k, 4]
            top_anchors = anchors[top_idx.reshape(-1)]  # [B*k, 4]
            boxes = self.box_coder.decode(top_deltas.reshape(-1, 4).float(), top_anchors)
            level_logits.append(top_logits)
            level_boxes.append(boxes.view(num_images, k, 4))  # [B*k, 1, 4] -> [B, k, 4]
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
        all_scores = torch.sigmoid(torch.cat(level_logits, dim=1))  # [B, K]
        all_boxes = torch.cat(level_boxes, dim=1)  # [B, K, 4]
        all_levels = torch.cat(level_ids)  # [K]

        proposals, scores = [], []
        for boxes, probs, size in zip(all_boxes, all_scores, image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, probs, levels = boxes[keep], probs[keep], all_levels[keep]
            keep = torch.nonzero(probs >= self.score_thresh).squeeze(1)
            boxes, probs, levels = boxes[keep], probs[keep], levels[keep]
            keep = batched_nms(boxes, probs, levels, self.nms_thresh)[:post_nms_top_n]
            proposals.append(boxes[keep])
            scores.append(probs[keep])
        return proposals, scores
