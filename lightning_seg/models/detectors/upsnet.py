"""UPSNet (Xiong et al., "UPSNet: A Unified Panoptic Segmentation Network", CVPR 2019).

One ResNet-FPN feeds a Mask R-CNN instance head and a deformable-convolution semantic head; a
parameter-free panoptic head fuses their logits into stuff + instance + unknown channels and is
trained with its own pixel-wise loss. Defaults are the official COCO configuration
(uber-research/UPSNet @ aa8434e, ``upsnet_resnet50_coco_*.yaml``); ``experiments/`` holds it
and the Cityscapes one. Two things of the official network are not here: the global-average-
pooling context its COCO config adds to the FPN's top level (``fpn_with_gap``), and its
Caffe-converted ImageNet weights (torchvision's are used).

Class indices: the data's contiguous classes (things and stuff together, in the dataset's
order) everywhere outside the network: ``batch.instances`` labels, ``batch.semantic`` and the
predicted ``PanopticPredictions``. Inside, the box and mask heads classify the things only
(``len(thing_classes)`` classes, in ``thing_classes`` order), so UPSNet builds them with that
``num_classes`` whatever their part says, and maps labels both ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor, nn

from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.models.heads.box_head import BoxRoIHead
from lightning_seg.models.heads.mask_head import MaskRoIHead
from lightning_seg.models.heads.panoptic import UPSNetPanopticHead, thing_stuff_split
from lightning_seg.models.heads.rpn import RPN
from lightning_seg.models.heads.upsnet_semantic import SemanticHeadOutput, UPSNetSemanticHead
from lightning_seg.models.necks.fpn import FPN
from lightning_seg.models.parts import PartFactory
from lightning_seg.models.postprocess.panoptic import (
    class_agnostic_detections,
    resize_labels,
    upsample_semantic_logits,
)
from lightning_seg.models.preprocess import ImagePreprocessor
from lightning_seg.ops.labels import argmax_labels
from lightning_seg.structures import Batch, InstanceTargets, PanopticPredictions


def _thing_part(part: PartFactory | nn.Module, num_things: int, name: str) -> PartFactory | nn.Module:
    """The box / mask head part, built with ``num_classes = num_things``."""
    if isinstance(part, nn.Module):
        if getattr(part, "num_classes", num_things) != num_things:
            raise ValueError(
                f"UPSNet: the {name} classifies the things only: it needs num_classes="
                f"{num_things} (the thing classes), got {part.num_classes}"
            )
        return part
    return lambda shapes: part(shapes, num_classes=num_things)


def own_class_mask_logits(mask_raw) -> Tensor:
    """``Tensor[N, M, M]`` the mask logits of each RoI's own class (a ``MaskHeadOutput``)."""
    labels = torch.cat(mask_raw.labels, dim=0)  # [N]
    index = torch.arange(labels.shape[0], device=labels.device)
    return mask_raw.mask_logits[index, labels]


class UPSNet(MaskRCNN):
    """UPSNet: Mask R-CNN with a semantic head and a panoptic head on one backbone.

    Args:
        backbone: module with ``output_shape()``.
        neck: the FPN (a callable of the backbone's shapes, or a module).
        rpn: the RPN part.
        box_head: the box head part; built with ``num_classes = len(thing_classes)``.
        mask_head: the mask head part (``MaskRoIHead``); built likewise.
        semantic_head: ``UPSNetSemanticHead`` (or a head with its API: ``forward(features) ->
            SemanticHeadOutput``, ``loss(raw, batch)``), every class of the dataset.
        panoptic_head: ``UPSNetPanopticHead`` (fuses logits, has a loss) or
            ``HeuristicPanopticMerge`` (merges thresholded outputs, no loss); may be swapped
            after training (``model.panoptic_head = ...``).
        thing_classes: dataset class indices of things (filled from the data).
        stuff_classes: dataset class indices of stuff (filled from the data).
        preprocessor, mask_thresh, drop_crowd, min_box_size: as ``MaskRCNN``.

    Train (``train()``): needs ``batch.instances`` (with masks) and ``batch.semantic``
    (``task: panoptic`` DataModules give both); returns ``loss_rpn_cls``, ``loss_rpn_box``,
    ``loss_cls``, ``loss_box``, ``loss_mask``, ``loss_semantic`` (+ ``loss_semantic_roi``) and,
    with a panoptic head that has a loss, ``loss_panoptic``, each weighted.

    Eval (``eval()``): one ``PanopticPredictions`` per image at ``batch.meta[i].orig_size``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: PartFactory,
        rpn: PartFactory,
        box_head: PartFactory,
        mask_head: PartFactory,
        semantic_head: PartFactory,
        panoptic_head: nn.Module,
        thing_classes: Sequence[int] | None = None,
        stuff_classes: Sequence[int] | None = None,
        preprocessor: ImagePreprocessor | None = None,
        mask_thresh: float = 0.5,
        drop_crowd: bool = True,
        min_box_size: float = 1e-2,
    ) -> None:
        things, stuff = thing_stuff_split(thing_classes, stuff_classes, type(self).__name__)
        if mask_head is None or semantic_head is None:
            raise ValueError("UPSNet needs a mask_head and a semantic_head")
        super().__init__(
            backbone, neck, rpn, _thing_part(box_head, len(things), "box_head"),
            _thing_part(mask_head, len(things), "mask_head"), semantic_head, preprocessor,
            mask_thresh, drop_crowd, min_box_size,
        )
        self.panoptic_head = panoptic_head
        self._check_heads(things, stuff)
        num_classes = max(things + stuff) + 1
        lut = torch.full((num_classes,), -1, dtype=torch.int64)
        lut[torch.tensor(things)] = torch.arange(len(things))
        self.register_buffer("thing_ids", torch.tensor(things, dtype=torch.int64), persistent=False)
        self.register_buffer("thing_index", lut, persistent=False)
        self.stuff_classes = stuff

    def _check_heads(self, things: list[int], stuff: list[int]) -> None:
        num_classes = max(things + stuff) + 1
        sem_k = getattr(self.semantic_head, "num_classes", num_classes)
        if sem_k != num_classes:
            raise ValueError(f"UPSNet: the semantic head predicts {sem_k} classes, the data has "
                             f"{num_classes}")
        head = self.panoptic_head
        if list(head.thing_classes) != things or list(head.stuff_classes) != stuff:
            raise ValueError(
                f"UPSNet: the panoptic head's thing / stuff classes ({head.thing_classes}, "
                f"{head.stuff_classes}) differ from the network's ({things}, {stuff})"
            )

    @property
    def num_classes(self) -> int:
        """K, every class of the dataset (the box head has the things only)."""
        return int(self.thing_index.numel())

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> dict[str, Tensor] | list[PanopticPredictions]:
        """Losses in training mode, panoptic predictions in eval mode (class docstring)."""
        image_sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        features = self.features(batch)
        semantic = self.semantic_head(features)
        if self.training:
            return self.panoptic_losses(features, semantic, batch, image_sizes)
        return self.predict_panoptic(features, semantic, batch, image_sizes)

    def to_thing_labels(self, targets: InstanceTargets) -> InstanceTargets:
        """Instance targets with labels mapped from dataset classes to thing indices."""
        labels = self.thing_index[targets.labels.to(self.thing_index.device)]
        if bool((labels < 0).any()):
            bad = targets.labels[labels.to(targets.labels.device) < 0].unique().tolist()
            raise ValueError(
                f"UPSNet: instance labels {bad} are stuff classes (things: "
                f"{self.thing_ids.tolist()}); instances must be things"
            )
        return replace(targets, labels=labels.to(targets.labels.device))

    def panoptic_losses(
        self,
        features: dict[str, Tensor],
        semantic: SemanticHeadOutput,
        batch: Batch,
        image_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Mask R-CNN, semantic and panoptic loss terms."""
        if batch.instances is None or batch.semantic is None:
            raise ValueError(
                f"{type(self).__name__} in training mode needs batch.instances and batch.semantic "
                f"(a DataModule with task='panoptic'), or call .eval() to predict"
            )
        instances = [self.to_thing_labels(t) for t in batch.instances]
        losses = self.losses(features, semantic, replace(batch, instances=instances), image_sizes)
        if hasattr(self.panoptic_head, "loss"):
            losses.update(self._panoptic_loss(features, semantic, instances, batch, image_sizes))
        return losses

    def _panoptic_loss(
        self,
        features: dict[str, Tensor],
        semantic: SemanticHeadOutput,
        instances: Sequence[InstanceTargets],
        batch: Batch,
        image_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """The panoptic head's loss on a random part of the non-crowd ground-truth instances,
        their mask logits from the mask head (gradients reach it and the semantic head)."""
        head = self.panoptic_head
        device = semantic.logits.device
        boxes, labels, masks = [], [], []
        for t in instances:
            if t.masks is None:
                raise ValueError("UPSNet needs instance masks (InstanceTargets.masks)")
            wh = t.boxes[:, 2:] - t.boxes[:, :2]
            usable = ~t.iscrowd.to(wh.device) & (wh >= self.target_filter.min_size).all(1)
            t = t.select(usable)
            kept = head.sample_instances(len(t), t.boxes.device)
            boxes.append(t.boxes[kept].to(device).float())
            labels.append(t.labels[kept].to(device))
            masks.append(t.masks[kept].to(device))
        mask_raw = self.mask_head(features, boxes, labels, **self._mask_extra(semantic))
        mask_logits = own_class_mask_logits(mask_raw).split([b.shape[0] for b in boxes])
        return head.loss(
            semantic.logits, semantic.stride, boxes, [self.thing_ids[lab] for lab in labels],
            list(mask_logits), masks, batch.semantic, image_sizes,
        )

    @torch.no_grad()
    def predict_panoptic(
        self,
        features: dict[str, Tensor],
        semantic: SemanticHeadOutput,
        batch: Batch,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[PanopticPredictions]:
        """Detections, masks and semantic logits fused by the panoptic head, per image at its
        original size."""
        head = self.panoptic_head
        proposals = self.rpn.predict(self.rpn(features, image_sizes), image_sizes)
        box_raw = self.box_head(features, proposals, image_sizes)
        orig_sizes = [(int(h), int(w)) for h, w in batch.orig_sizes]
        extra = self._mask_extra(semantic)
        results = []
        if head.fuses_logits:
            detections = class_agnostic_detections(
                self.box_head, box_raw, image_sizes, head.score_thresh, head.nms_thresh,
                head.detections_per_img,
            )
            mask_raw = self.mask_head(features, [d.boxes for d in detections],
                                      [d.labels for d in detections], **extra)
            mask_logits = own_class_mask_logits(mask_raw).split([len(d) for d in detections])
            for i, det in enumerate(detections):
                logits = upsample_semantic_logits(semantic.logits[i], image_sizes[i],
                                                  semantic.stride)  # [K, h, w]
                det = replace(det, labels=self.thing_ids[det.labels])
                results.append(head.predict(logits, det, mask_logits[i], orig_sizes[i]))
            return results
        detections = self.box_head.predict(box_raw, image_sizes)
        mask_raw = self.mask_head(features, [d.boxes for d in detections],
                                  [d.labels for d in detections], **extra)
        instances = self.postprocess(detections, self.mask_head.predict(mask_raw), orig_sizes)
        for i, inst in enumerate(instances):
            logits = upsample_semantic_logits(semantic.logits[i], image_sizes[i], semantic.stride)
            semantic_map = resize_labels(argmax_labels(logits, 0), orig_sizes[i])
            results.append(head.predict(semantic_map,
                                        replace(inst, labels=self.thing_ids[inst.labels])))
        return results


# ---------------------------------------------------------------------- builders
def upsnet_resnet_fpn(
    thing_classes: Sequence[int],
    stuff_classes: Sequence[int],
    depth: int = 50,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    semantic_layers: int = 3,
    deformable: bool = True,
    semantic_loss_weight: float = 0.2,
    roi_loss_weight: float = 0.04,
    panoptic_loss_weight: float = 0.1,
    box_keep_fraction: float = 0.7,
    stuff_area_limit: int = 4096,
    ignore_index: int = 255,
    rpn: PartFactory | None = None,
    box_head: PartFactory | None = None,
    mask_head: PartFactory | None = None,
    semantic_head: PartFactory | None = None,
    panoptic_head: nn.Module | None = None,
    **options,
) -> UPSNet:
    """UPSNet with a ResNet-FPN backbone and the official COCO defaults.

    The same network as ``experiments/models/upsnet_r50_fpn.yaml`` (test
    ``test_yaml_equals_the_builder``). Cityscapes: ``semantic_layers=2,
    semantic_loss_weight=1.0, roi_loss_weight=0, panoptic_loss_weight=0.5,
    stuff_area_limit=2048``.

    Args:
        thing_classes: dataset class indices of things.
        stuff_classes: dataset class indices of stuff.
        depth: ResNet depth.
        weights_backbone: torchvision ``ResNet{depth}_Weights`` member name, or None.
        trainable_backbone_layers: as ``mask_rcnn_resnet_fpn`` (pretrained only).
        frozen_bn: frozen BatchNorm; None: frozen when pretrained.
        fpn_channels: pyramid width (256).
        anchor_sizes: one anchor size per level P2..P6.
        aspect_ratios: anchor ratios.
        semantic_layers: deformable convs of the semantic subnet (3 COCO, 2 Cityscapes).
        deformable: deformable (paper) or plain convs in the semantic head.
        semantic_loss_weight: weight of ``loss_semantic``.
        roi_loss_weight: weight of ``loss_semantic_roi`` (0: off).
        panoptic_loss_weight: weight of ``loss_panoptic``.
        box_keep_fraction: instances kept for the panoptic loss (< 1: unknown class on).
        stuff_area_limit: test: smallest stuff region, original pixels.
        ignore_index: void label of the semantic maps.
        rpn, box_head, mask_head, semantic_head, panoptic_head: replace a part.
        **options: ``UPSNet`` arguments (``preprocessor``, ...).
    """
    things, stuff = [int(c) for c in thing_classes], [int(c) for c in stuff_classes]
    num_classes = max(things + stuff) + 1
    pretrained = weights_backbone is not None
    backbone = ResNetBackbone(
        depth=depth, weights=weights_backbone, frozen_bn=pretrained if frozen_bn is None else frozen_bn,
        freeze_at=5 - trainable_backbone_layers if pretrained else 0,
    )
    levels = ("p2", "p3", "p4", "p5")
    return UPSNet(
        backbone,
        neck=partial(FPN, out_channels=fpn_channels),
        rpn=rpn or partial(RPN, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios),
        box_head=box_head or partial(BoxRoIHead, in_features=levels),
        mask_head=mask_head or partial(MaskRoIHead, in_features=levels),
        semantic_head=semantic_head or partial(
            UPSNetSemanticHead, num_classes=num_classes, ignore_index=ignore_index,
            in_features=levels, num_layers=semantic_layers, deformable=deformable,
            loss_weight=semantic_loss_weight, roi_loss_weight=roi_loss_weight,
        ),
        panoptic_head=panoptic_head or UPSNetPanopticHead(
            things, stuff, ignore_index, box_keep_fraction=box_keep_fraction,
            loss_weight=panoptic_loss_weight, stuff_area_limit=stuff_area_limit,
        ),
        thing_classes=things,
        stuff_classes=stuff,
        **options,
    )


def upsnet_r50_fpn(
    thing_classes: Sequence[int], stuff_classes: Sequence[int], weights_backbone: str | None = None,
    **kwargs,
) -> UPSNet:
    """UPSNet R50-FPN, the official COCO configuration (see ``upsnet_resnet_fpn``)."""
    return upsnet_resnet_fpn(thing_classes, stuff_classes, depth=50,
                             weights_backbone=weights_backbone, **kwargs)
