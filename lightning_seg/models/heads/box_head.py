"""Fast R-CNN box head on FPN RoIs: 2-fc head, softmax classifier, class-specific regression.

Girshick, "Fast R-CNN", ICCV 2015; Lin et al., "Feature Pyramid Networks", CVPR 2017 (2-fc
1024 head on 7x7 RoIAlign features); He et al., "Mask R-CNN", ICCV 2017 (RoIAlign, 512 RoIs
per image at 25% positives). Numerics follow torchvision's ``RoIHeads`` (sampling, losses and
post-processing), so that mapped torchvision weights give the same detections.

Class indices: ``InstanceTargets.labels`` and ``InstancePredictions.labels`` are contiguous
``0..K-1``. Inside this head the classifier has ``K + 1`` outputs with **index 0 for
background** and ``k + 1`` for class ``k`` (``BoxHeadOutput.roi_labels`` uses that internal
indexing); the box regressor has ``(K + 1) * 4`` outputs, laid out like torchvision's.

Targets are expected filtered (the detector's ``TargetFilter`` drops crowd regions and
degenerate boxes once): every ground-truth instance is matched and added as a proposal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.assigners.matcher import MaxIoUMatcher
from lightning_seg.models.assigners.sampler import BalancedSampler
from lightning_seg.ops.boxes import (
    BoxCoder,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from lightning_seg.ops.roi_align import MultiLevelRoIAlign, pooled_channels
from lightning_seg.structures import FeatureShapes, InstancePredictions, InstanceTargets
from lightning_seg.structures.dataset_info import require_fact


@dataclass
class BoxHeadOutput:
    """Raw output of ``BoxRoIHead.forward``.

    Attributes:
        class_logits: ``Tensor[R, K + 1]`` scores, column 0 is background.
        box_deltas: ``Tensor[R, (K + 1) * 4]`` class-specific ``(dx, dy, dw, dh)``.
        rois: one ``Tensor[R_i, 4]`` x1y1x2y2 per image: the sampled RoIs when targets were
            given, else all proposals.
        roi_labels: per image ``Tensor[R_i]`` int64 training label of each sampled RoI
            (0 background, ``k + 1`` for class ``k``); None without targets.
        matched_idxs: per image ``Tensor[R_i]`` int64 index of the ground-truth instance (in
            that image's ``InstanceTargets``) each RoI is matched to (meaningful for
            positives only); None without targets.
        box_targets: per image ``Tensor[R_i, 4]`` encoded regression targets; None without
            targets.
    """

    class_logits: Tensor
    box_deltas: Tensor
    rois: list[Tensor]
    roi_labels: list[Tensor] | None = None
    matched_idxs: list[Tensor] | None = None
    box_targets: list[Tensor] | None = None

    def positives(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The foreground sampled RoIs, for the mask head.

        Returns:
            per image ``(rois Tensor[P_i, 4], labels Tensor[P_i] in 0..K-1,
            matched_idxs Tensor[P_i])``.
        """
        if self.roi_labels is None or self.matched_idxs is None:
            raise ValueError("positives() needs a BoxHeadOutput computed with targets")
        rois, labels, matched = [], [], []
        for r, lab, idx in zip(self.rois, self.roi_labels, self.matched_idxs):
            pos = torch.nonzero(lab > 0).squeeze(1)  # [P_i]
            rois.append(r[pos])
            labels.append(lab[pos] - 1)
            matched.append(idx[pos])
        return rois, labels, matched


class BoxRoIHead(nn.Module):
    """Second stage of Faster / Mask R-CNN: classify and refine proposals.

    A network receives the head as a callable of its neck's shapes (YAML: ``class_path:
    BoxRoIHead`` with the arguments below except ``input_shape``; ``num_classes`` is filled
    from the dataset).

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck (its ``output_shape()``).
        num_classes: ``K`` object classes (the head adds one background class).
        in_features: levels to pool from, finest first (P2..P5).
        pooler_size: RoIAlign output side (7).
        sampling_ratio: RoIAlign bilinear samples per bin side (2).
        aligned: half-pixel-correct RoIAlign (paper); torchvision's pooler uses False.
        fc_dim: width of the two fully connected layers (1024).
        fg_iou_thresh: IoU at or above which a RoI is foreground (0.5).
        bg_iou_thresh: IoU below which a RoI is background (0.5; RoIs in between ignored).
        batch_size_per_image: RoIs sampled per image in training (512).
        positive_fraction: target share of foreground RoIs (0.25).
        add_gt_as_proposals: append the ground-truth boxes to the proposals in training.
        bbox_reg_weights: ``(wx, wy, ww, wh)`` of the box coder (10, 10, 5, 5).
        box_loss_beta: smooth-L1 transition point (1/9, as torchvision); 0 gives the L1 loss
            (mmdetection's ``L1Loss``, as RefineMask's official configs).
        loss_cls_weight: multiplier of ``loss_cls`` (1; RefineMask's official configs 2).
        loss_box_weight: multiplier of ``loss_box`` (1; RefineMask's official configs 2).
        score_thresh: inference: minimum class probability kept (0.05).
        nms_thresh: inference: per-class NMS IoU threshold (0.5).
        detections_per_img: inference: detections kept per image (100).
        min_box_size: inference: boxes with a side below this (pixels) are dropped (0.01).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_classes: int | None = None,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        pooler_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = True,
        fc_dim: int = 1024,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        box_loss_beta: float = 1.0 / 9,
        loss_cls_weight: float = 1.0,
        loss_box_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_box_size: float = 1e-2,
    ) -> None:
        super().__init__()
        num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        in_channels = pooled_channels(input_shape, in_features)
        self.num_classes = num_classes
        self.pooler = MultiLevelRoIAlign(
            in_features, {f: s.stride for f, s in input_shape.items()}, pooler_size,
            sampling_ratio, aligned,
        )
        self.fc6 = nn.Linear(in_channels * pooler_size * pooler_size, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.box_pred = nn.Linear(fc_dim, (num_classes + 1) * 4)
        # Detectron's predictor init (fc6/fc7 keep PyTorch's default, as torchvision)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.box_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.box_pred.bias)
        self.matcher = MaxIoUMatcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(tuple(bbox_reg_weights))
        self.add_gt_as_proposals = add_gt_as_proposals
        self.box_loss_beta = box_loss_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_box_weight = loss_box_weight
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_box_size = min_box_size

    # ------------------------------------------------------------------ training targets
    def sample_rois(
        self, proposals: Sequence[Tensor], targets: Sequence[InstanceTargets]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Match proposals to ground truth, sample a balanced set and encode its targets.

        Args:
            proposals: one ``Tensor[P_i, 4]`` per image (detached RPN proposals).
            targets: one ``InstanceTargets`` per image (labels ``0..K-1``).

        Returns:
            per image: sampled ``rois [R_i, 4]``, ``roi_labels [R_i]`` (0 background, ``k + 1``
            class ``k``), ``matched_idxs [R_i]`` (into the image's targets) and
            ``box_targets [R_i, 4]``.
        """
        all_rois, all_labels, all_matched = [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target.boxes.to(props.dtype)  # [G, 4]
            if self.add_gt_as_proposals:
                props = torch.cat([props, gt_boxes], dim=0)  # [P + G, 4]
            if len(target) == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                labels = torch.zeros_like(matched)
            else:
                match = self.matcher(box_iou(gt_boxes, props))  # [P + G] in [0, G) or -1 / -2
                matched = match.clamp(min=0)
                labels = target.labels[matched].to(torch.int64) + 1
                labels[match == MaxIoUMatcher.BELOW_LOW_THRESHOLD] = 0
                labels[match == MaxIoUMatcher.BETWEEN_THRESHOLDS] = -1  # ignored by the sampler
            all_rois.append(props)
            all_labels.append(labels)
            all_matched.append(matched)

        pos_masks, neg_masks = self.sampler(all_labels)
        rois, roi_labels, matched_idxs, box_targets = [], [], [], []
        for i, target in enumerate(targets):
            keep = torch.nonzero(pos_masks[i] | neg_masks[i]).squeeze(1)  # [R_i] sorted
            sampled_rois = all_rois[i][keep]
            matched = all_matched[i][keep]  # [R_i] into the image's targets
            if len(target) == 0:
                box_targets.append(torch.zeros_like(sampled_rois))
            else:
                gt_boxes = target.boxes.to(sampled_rois.dtype)
                box_targets.append(self.box_coder.encode(gt_boxes[matched], sampled_rois))
            matched_idxs.append(matched)
            rois.append(sampled_rois)
            roi_labels.append(all_labels[i][keep])
        return rois, roi_labels, matched_idxs, box_targets

    # ------------------------------------------------------------------ head API
    def forward(
        self,
        features: Mapping[str, Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[InstanceTargets] | None = None,
    ) -> BoxHeadOutput:
        """Classify and regress RoIs.

        Args:
            features: pyramid levels by name, ``Tensor[B, C, H_l, W_l]``.
            proposals: one ``Tensor[P_i, 4]`` x1y1x2y2 per image (input pixels).
            image_sizes: ``(h, w)`` of each image before padding (kept for the signature of
                two-stage heads; clipping happens in ``predict``).
            targets: when given (training), proposals are matched and sampled first and the
                output carries the sampled RoIs and their targets.

        Returns:
            ``BoxHeadOutput``.
        """
        del image_sizes  # boxes are clipped in predict
        roi_labels = matched_idxs = box_targets = None
        rois = list(proposals)
        if targets is not None:
            rois, roi_labels, matched_idxs, box_targets = self.sample_rois(proposals, targets)
        x = self.pooler(features, rois)  # [R, C, S, S]
        x = x.flatten(1)  # [R, C * S * S]
        x = F.relu(self.fc6(x), inplace=True)  # [R, fc_dim]
        x = F.relu(self.fc7(x), inplace=True)
        return BoxHeadOutput(
            class_logits=self.cls_score(x),  # [R, K + 1]
            box_deltas=self.box_pred(x),  # [R, (K + 1) * 4]
            rois=rois,
            roi_labels=roi_labels,
            matched_idxs=matched_idxs,
            box_targets=box_targets,
        )

    def loss(self, raw: BoxHeadOutput) -> dict[str, Tensor]:
        """Softmax cross-entropy over the sampled RoIs and smooth-L1 on the positives.

        The box loss is summed over the positives' ground-truth class channel and divided by
        the number of sampled RoIs (torchvision's ``fastrcnn_loss``; mmdetection's L1 with
        ``avg_factor`` = sampled RoIs is the same normalisation). The targets were computed in
        ``forward`` and travel in ``raw``. Each term is multiplied by its weight
        (``loss_cls_weight``, ``loss_box_weight``).

        Returns:
            ``{"loss_cls": Tensor[], "loss_box": Tensor[]}``.
        """
        if raw.roi_labels is None or raw.box_targets is None:
            raise ValueError("BoxRoIHead.loss needs a BoxHeadOutput computed with targets")
        labels = torch.cat(raw.roi_labels, dim=0)  # [R]
        if labels.numel() == 0:
            zero = raw.class_logits.sum() * 0 + raw.box_deltas.sum() * 0
            return {"loss_cls": zero, "loss_box": zero}
        box_targets = torch.cat(raw.box_targets, dim=0)  # [R, 4]
        loss_cls = F.cross_entropy(raw.class_logits.float(), labels)
        pos = torch.nonzero(labels > 0).squeeze(1)  # [P]
        deltas = raw.box_deltas.reshape(labels.shape[0], -1, 4)  # [R, K + 1, 4]
        loss_box = F.smooth_l1_loss(
            deltas[pos, labels[pos]].float(),
            box_targets[pos].float(),
            beta=self.box_loss_beta,
            reduction="sum",
        ) / labels.numel()
        return {"loss_cls": self.loss_cls_weight * loss_cls,
                "loss_box": self.loss_box_weight * loss_box}

    @torch.no_grad()
    def predict(
        self, raw: BoxHeadOutput, image_sizes: Sequence[tuple[int, int]]
    ) -> list[InstancePredictions]:
        """Decode per class, clip, threshold, per-class NMS and keep the top detections.

        Args:
            raw: output of ``forward`` without targets.
            image_sizes: ``(h, w)`` of each image before padding; boxes are clipped to it.

        Returns:
            one ``InstancePredictions`` per image (no masks), labels ``0..K-1``, boxes in
            input pixels, ``image_size`` = that image's ``(h, w)``.
        """
        rois = torch.cat(raw.rois, dim=0)  # [R, 4]
        boxes = self.box_coder.decode(raw.box_deltas.float(), rois.float())  # [R, K + 1, 4]
        scores = F.softmax(raw.class_logits.float(), dim=-1)  # [R, K + 1]
        sizes = [r.shape[0] for r in raw.rois]
        predictions = []
        for boxes_i, scores_i, size in zip(boxes.split(sizes), scores.split(sizes), image_sizes):
            boxes_i = clip_boxes_to_image(boxes_i, tuple(size))
            classes = torch.arange(self.num_classes + 1, device=scores_i.device)
            classes = classes.view(1, -1).expand_as(scores_i)  # [R_i, K + 1]
            # drop the background column, then one candidate per (RoI, class)
            boxes_i = boxes_i[:, 1:].reshape(-1, 4)  # [R_i * K, 4]
            scores_i = scores_i[:, 1:].reshape(-1)  # [R_i * K]
            classes = classes[:, 1:].reshape(-1)
            keep = torch.nonzero(scores_i > self.score_thresh).squeeze(1)
            boxes_i, scores_i, classes = boxes_i[keep], scores_i[keep], classes[keep]
            keep = remove_small_boxes(boxes_i, self.min_box_size)
            boxes_i, scores_i, classes = boxes_i[keep], scores_i[keep], classes[keep]
            keep = batched_nms(boxes_i, scores_i, classes, self.nms_thresh)[
                : self.detections_per_img
            ]
            predictions.append(
                InstancePredictions(
                    boxes=boxes_i[keep],
                    scores=scores_i[keep],
                    labels=classes[keep] - 1,
                    image_size=(int(size[0]), int(size[1])),
                )
            )
        return predictions
