"""Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017): wiring of backbone, FPN, RPN and RoI heads.

Configured alike (``mask_rcnn_r50_fpn_torchvision_compat``) this model gives the same
detections and masks as torchvision's ``maskrcnn_resnet50_fpn`` with mapped weights
(``load_torchvision_maskrcnn``; test ``tests/models/test_maskrcnn_torchvision.py``). The
paper defaults differ from torchvision's in one place: RoIAlign uses ``aligned=True`` (the
paper / detectron2 half-pixel convention; torchvision's pooler uses ``aligned=False``), and
mask targets are cropped with the same aligned RoIAlign.

Class indices: ``InstanceTargets.labels`` and ``InstancePredictions.labels`` are contiguous
``0..K-1``; the box classifier uses index 0 for background internally (``k + 1`` = class
``k``), the mask head has ``K`` channels (no background).

Crowd instances (``iscrowd``) and degenerate boxes are dropped from the targets once, before
any matching (``TargetFilter``): they give no positives to the RPN or the RoI heads and no mask
targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.models.assigners.target_filter import TargetFilter
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.heads.box_head import BoxRoIHead
from lightning_seg.models.heads.mask_head import MaskRoIHead
from lightning_seg.models.heads.rpn import RPN, rpn_key_map_from_torchvision
from lightning_seg.models.necks.fpn import FPN, fpn_key_map_from_torchvision
from lightning_seg.models.parts import PartFactory, build_part
from lightning_seg.models.postprocess.masks import paste_masks_in_image
from lightning_seg.models.preprocess import ImagePreprocessor, box_scale
from lightning_seg.models.weights import load_checkpoint_file, load_mapped_weights, torchvision_weights
from lightning_seg.structures import Batch, InstancePredictions


class MaskRCNN(nn.Module):
    """Two-stage instance segmentation: RPN proposals, box head, parallel mask head.

    Every part is an argument, built from the shapes of what feeds it, so that a YAML names each
    with ``class_path`` and swapping one (RefineMask's mask head for this one) is a YAML change::

        backbone(images)            -> {"c2": ..., "c5": ...}      backbone.output_shape()
        neck(backbone shapes)       -> FPN                         neck.output_shape()
        rpn(neck shapes)            -> RPN
        box_head(neck shapes)       -> BoxRoIHead                   num_classes from the dataset
        mask_head(neck shapes)      -> MaskRoIHead or None          num_classes from the dataset

    Args:
        backbone: module with ``output_shape()``; ``forward(Tensor[B, 3, H, W]) -> {level:
            Tensor}`` on normalised images.
        neck: the FPN (a callable of the backbone's shapes, or a module).
        rpn: ``forward(features, image_sizes) -> raw``, ``loss(raw, targets)``,
            ``predict(raw, image_sizes) -> list[Tensor[R_i, 4]]``.
        box_head: ``BoxRoIHead`` (or a head with the same API).
        mask_head: ``MaskRoIHead`` or a replacement (RefineMask); None for Faster R-CNN.
        semantic_head: an optional dense head on the pyramid (RefineMask's foreground head,
            UPSNet's semantic head): ``forward(features) -> raw``, ``loss(raw, batch) -> dict``
            (its terms join the losses); a mask head with ``uses_semantic = True`` receives its
            output as ``semantic=``.
        preprocessor: normalisation and padding; None: ImageNet mean/std, size divisibility
            32 (a 5-level FPN).
        mask_thresh: pasted mask probabilities ``>= mask_thresh`` are foreground (0.5).
        drop_crowd: leave crowd instances out of training targets (no positives, no mask
            targets), as Detectron's COCO models.
        min_box_size: training boxes with a side below this (pixels) are dropped (counted in
            ``target_filter.counts`` and logged).

    Train (``train()`` mode): ``forward(batch)`` returns ``{"loss_rpn_cls", "loss_rpn_box",
    "loss_cls", "loss_box", "loss_mask"}``, each already weighted; ``batch.instances`` are in
    the pixel frame of ``batch.images`` (labels ``0..K-1``).

    Eval (``eval()`` mode): ``forward(batch)`` returns one ``InstancePredictions`` per image
    in the frame of ``batch.meta[i].orig_size``: boxes scaled, masks pasted at that size and
    thresholded (bool ``Tensor[N, H, W]``).

    Class indices: the box classifier uses index 0 for background internally (``k + 1`` =
    class ``k``), the mask head has ``K`` channels (no background).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: PartFactory,
        rpn: PartFactory,
        box_head: PartFactory,
        mask_head: PartFactory | None = None,
        semantic_head: PartFactory | None = None,
        preprocessor: ImagePreprocessor | None = None,
        mask_thresh: float = 0.5,
        drop_crowd: bool = True,
        min_box_size: float = 1e-2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = build_part(neck, backbone.output_shape())
        shapes = self.neck.output_shape()
        self.rpn = build_part(rpn, shapes)
        self.box_head = build_part(box_head, shapes)
        self.mask_head = None if mask_head is None else build_part(mask_head, shapes)
        self.semantic_head = None if semantic_head is None else build_part(semantic_head, shapes)
        self.preprocessor = preprocessor or ImagePreprocessor(size_divisibility=32)
        self.mask_thresh = mask_thresh
        self.target_filter = TargetFilter(drop_crowd=drop_crowd, min_size=min_box_size)

    @property
    def num_classes(self) -> int:
        return self.box_head.num_classes

    def features(self, batch: Batch) -> dict[str, Tensor]:
        """Pyramid features of the normalised, padded batch."""
        return self.neck(self.backbone(self.preprocessor(batch.images, batch.image_sizes)))

    def forward(self, batch: Batch) -> dict[str, Tensor] | list[InstancePredictions]:
        """Losses in training mode, predictions in eval mode (see the class docstring)."""
        image_sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        features = self.features(batch)
        semantic = None if self.semantic_head is None else self.semantic_head(features)
        if self.training:
            return self.losses(features, semantic, batch, image_sizes)
        detections, mask_probs = self.detect(features, semantic, image_sizes)
        return self.postprocess(detections, mask_probs, batch.orig_sizes)

    def losses(
        self,
        features: dict[str, Tensor],
        semantic,
        batch: Batch,
        image_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Every loss term: RPN, box head, mask head and (when present) semantic head."""
        if batch.instances is None:
            raise ValueError(
                f"{type(self).__name__} in training mode needs batch.instances (a DataModule "
                f"with task='instance'), or call .eval() to predict"
            )
        targets = self.target_filter(batch.instances)
        rpn_raw = self.rpn(features, image_sizes)
        proposals = self.rpn.predict(rpn_raw, image_sizes)
        losses = dict(self.rpn.loss(rpn_raw, targets))
        box_raw = self.box_head(features, proposals, image_sizes, targets)
        losses.update(self.box_head.loss(box_raw))
        if self.semantic_head is not None:
            losses.update(self.semantic_head.loss(semantic, batch))
        if self.mask_head is not None:
            rois, labels, matched_idxs = box_raw.positives()
            mask_raw = self.mask_head(features, rois, labels, matched_idxs, **self._mask_extra(semantic))
            losses.update(self.mask_head.loss(mask_raw, targets))
        return losses

    def detect(
        self, features: dict[str, Tensor], semantic, image_sizes: Sequence[tuple[int, int]]
    ) -> tuple[list[InstancePredictions], list[Tensor] | None]:
        """Detections in the input frame and, with a mask head, their mask probabilities
        (per image ``Tensor[N_i, 1, M, M]``, to paste into the boxes)."""
        proposals = self.rpn.predict(self.rpn(features, image_sizes), image_sizes)
        box_raw = self.box_head(features, proposals, image_sizes)
        detections = self.box_head.predict(box_raw, image_sizes)
        mask_probs = None
        if self.mask_head is not None:
            mask_raw = self.mask_head(
                features, [d.boxes for d in detections], [d.labels for d in detections],
                **self._mask_extra(semantic),
            )
            mask_probs = self.mask_head.predict(mask_raw)
        return detections, mask_probs

    def _mask_extra(self, semantic) -> dict:
        """What the mask head takes besides the RoIs: the semantic head's output for a mask head
        that declares ``uses_semantic = True`` (RefineMask's fine-grained features)."""
        return {"semantic": semantic} if getattr(self.mask_head, "uses_semantic", False) else {}

    def postprocess(
        self,
        detections: Sequence[InstancePredictions],
        mask_probs: Sequence[Tensor] | None,
        out_sizes: Sequence[tuple[int, int]],
    ) -> list[InstancePredictions]:
        """Scale boxes to ``out_sizes``, paste and threshold the masks there.

        Args:
            detections: per image, boxes in the frame of its ``image_size``.
            mask_probs: per image ``Tensor[N_i, 1, M, M]`` probabilities, or None.
            out_sizes: ``(H, W)`` of the frame to map each image to.
        """
        results = []
        for i, (det, size) in enumerate(zip(detections, out_sizes)):
            size = (int(size[0]), int(size[1]))
            boxes = det.boxes * box_scale(det.image_size, size, det.boxes)  # [N, 4]
            masks = None
            if mask_probs is not None:
                soft = paste_masks_in_image(mask_probs[i].float(), boxes, size)
                masks = soft >= self.mask_thresh  # [N, H, W] bool
            results.append(
                InstancePredictions(
                    boxes=boxes, scores=det.scores, labels=det.labels, image_size=size, masks=masks
                )
            )
        return results


# ---------------------------------------------------------------------- builders
def mask_rcnn_resnet_fpn(
    num_classes: int,
    depth: int = 50,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    frozen_bn: bool | None = None,
    aligned: bool = True,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    with_mask: bool = True,
    rpn: PartFactory | None = None,
    box_head: PartFactory | None = None,
    mask_head: PartFactory | None = None,
    **options,
) -> MaskRCNN:
    """Mask R-CNN with a ResNet-FPN backbone and the paper's defaults.

    The same network as ``experiments/models/mask_rcnn_r50_fpn.yaml`` (test
    ``test_maskrcnn_yaml_equals_builder``).

    Args:
        num_classes: ``K`` object classes (no background).
        depth: ResNet depth (18/34 for tests, 50/101 for real runs).
        weights_backbone: torchvision ``ResNet{depth}_Weights`` member name
            (e.g. ``"IMAGENET1K_V1"``), or None for random init.
        trainable_backbone_layers: ResNet stages trained counted from the top (0..5; 3 trains
            ``layer2``..``layer4``, freezing the stem and ``layer1``). As torchvision, it only
            applies with pretrained weights; a randomly initialised backbone trains all 5.
        frozen_bn: frozen BatchNorm in the backbone; None: frozen when pretrained (as
            torchvision).
        aligned: half-pixel-correct RoIAlign in both heads and for the mask targets (paper);
            False for torchvision parity.
        fpn_channels: width of the pyramid (256).
        anchor_sizes: one anchor size per level P2..P6.
        aspect_ratios: anchor ``h / w`` ratios on every level.
        with_mask: False builds Faster R-CNN (no mask head).
        rpn, box_head, mask_head: replace a part (a callable of the neck's shapes, e.g.
            ``functools.partial(RPN, post_nms_top_n_test=500)``); ``num_classes`` is passed to
            the heads here.
        **options: ``MaskRCNN`` arguments (``preprocessor``, ``mask_thresh``, ...).
    """
    pretrained = weights_backbone is not None
    if not 0 <= trainable_backbone_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}")
    backbone = ResNetBackbone(
        depth=depth,
        weights=weights_backbone,
        frozen_bn=pretrained if frozen_bn is None else frozen_bn,
        freeze_at=5 - trainable_backbone_layers if pretrained else 0,
    )
    levels = ("p2", "p3", "p4", "p5")
    return MaskRCNN(
        backbone,
        neck=partial(FPN, out_channels=fpn_channels),
        rpn=rpn or partial(RPN, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios),
        box_head=box_head or partial(BoxRoIHead, num_classes=num_classes, in_features=levels,
                                     aligned=aligned),
        mask_head=None if not with_mask else mask_head or partial(
            MaskRoIHead, num_classes=num_classes, in_features=levels, aligned=aligned,
            target_aligned=aligned,
        ),
        **options,
    )


def mask_rcnn_r50_fpn(
    num_classes: int,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    **kwargs,
) -> MaskRCNN:
    """Mask R-CNN R50-FPN with the paper's settings (``aligned=True`` RoIAlign).

    See ``mask_rcnn_resnet_fpn`` for the arguments.
    """
    return mask_rcnn_resnet_fpn(
        num_classes,
        depth=50,
        weights_backbone=weights_backbone,
        trainable_backbone_layers=trainable_backbone_layers,
        **kwargs,
    )


def mask_rcnn_r50_fpn_torchvision_compat(
    num_classes: int,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    **kwargs,
) -> MaskRCNN:
    """Mask R-CNN R50-FPN configured like torchvision's ``maskrcnn_resnet50_fpn``.

    Same as ``mask_rcnn_r50_fpn`` but with ``aligned=False`` RoIAlign (features and mask
    targets), which is torchvision's choice; every other default already equals
    torchvision's (RPN 2000/2000 train and 1000/1000 test proposals, NMS 0.7, box head 512
    RoIs at 25%, score 0.05, NMS 0.5, 100 detections). ``num_classes`` excludes the
    background (torchvision's ``num_classes`` minus one).
    """
    kwargs.setdefault("aligned", False)
    return mask_rcnn_r50_fpn(num_classes, weights_backbone, trainable_backbone_layers, **kwargs)


# ---------------------------------------------------------------------- torchvision weights
def map_torchvision_maskrcnn_state_dict(
    state_dict: Mapping[str, Tensor],
    keep_classes: Sequence[int] | None = None,
    fpn_in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
) -> dict[str, Tensor]:
    """Rename a torchvision ``maskrcnn_resnet50_fpn`` state dict to this model's keys.

    Layout: ``backbone.body.*`` -> ``backbone.*``; ``backbone.fpn.*`` -> ``neck.*``;
    ``rpn.head.*`` -> ``rpn.head.*`` (renamed convs); ``roi_heads.box_head.fc6/fc7`` ->
    ``box_head.fc6/fc7``; ``roi_heads.box_predictor.{cls_score,bbox_pred}`` ->
    ``box_head.{cls_score,box_pred}``; ``roi_heads.mask_head.{i}.0`` (or the old
    ``mask_fcn{i+1}``) -> ``mask_head.convs.{2i}``; ``roi_heads.mask_predictor.conv5_mask`` ->
    ``mask_head.deconv``; ``mask_fcn_logits`` -> ``mask_head.mask_logits`` without
    torchvision's background channel 0. Keys that match nothing are returned unchanged, so
    that loading reports them as unexpected.

    Args:
        state_dict: torchvision Mask R-CNN weights.
        keep_classes: torchvision class indices (1-based, 0 is background) to keep, in our
            contiguous order; e.g. the COCO category ids of a ``DatasetInfo`` for the
            torchvision COCO checkpoint (whose index is the COCO category id). None keeps all
            ``K`` classes in order.
        fpn_in_features: our FPN's ``in_features``.

    Returns:
        a new state dict for ``MaskRCNN`` built by ``mask_rcnn_r50_fpn*``.
    """
    renames = {
        **fpn_key_map_from_torchvision(fpn_in_features, "backbone.fpn.", "neck."),
        **rpn_key_map_from_torchvision("rpn.", "rpn."),
    }
    for fc in ("fc6", "fc7"):
        for p in ("weight", "bias"):
            renames[f"roi_heads.box_head.{fc}.{p}"] = f"box_head.{fc}.{p}"
    for p in ("weight", "bias"):
        renames[f"roi_heads.box_predictor.cls_score.{p}"] = f"box_head.cls_score.{p}"
        renames[f"roi_heads.box_predictor.bbox_pred.{p}"] = f"box_head.box_pred.{p}"
        renames[f"roi_heads.mask_predictor.conv5_mask.{p}"] = f"mask_head.deconv.{p}"
        renames[f"roi_heads.mask_predictor.mask_fcn_logits.{p}"] = f"mask_head.mask_logits.{p}"
        for i in range(8):
            renames[f"roi_heads.mask_head.{i}.0.{p}"] = f"mask_head.convs.{2 * i}.{p}"
            renames[f"roi_heads.mask_head.mask_fcn{i + 1}.{p}"] = f"mask_head.convs.{2 * i}.{p}"

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key in renames:
            new_key = renames[key]
        elif key.startswith("backbone.body."):
            new_key = "backbone." + key[len("backbone.body.") :]
        else:
            new_key = key
        out[new_key] = value

    # class rows: box classifier keeps background row 0, the mask head has no background
    if "box_head.cls_score.weight" in out:
        num_tv = out["box_head.cls_score.weight"].shape[0]  # K_tv + 1
        classes = list(range(1, num_tv)) if keep_classes is None else [int(c) for c in keep_classes]
        bad = [c for c in classes if not 1 <= c < num_tv]
        if bad:
            raise ValueError(f"keep_classes {bad} outside torchvision's classes 1..{num_tv - 1}")
        rows = torch.tensor([0, *classes])
        box_rows = (rows[:, None] * 4 + torch.arange(4)).reshape(-1)  # [(K + 1) * 4]
        for p in ("weight", "bias"):
            out[f"box_head.cls_score.{p}"] = out[f"box_head.cls_score.{p}"][rows]
            out[f"box_head.box_pred.{p}"] = out[f"box_head.box_pred.{p}"][box_rows]
            if f"mask_head.mask_logits.{p}" in out:
                out[f"mask_head.mask_logits.{p}"] = out[f"mask_head.mask_logits.{p}"][rows[1:]]
    return out


def load_torchvision_maskrcnn(
    model: MaskRCNN,
    state_dict: Mapping[str, Tensor] | str | Path,
    keep_classes: Sequence[int] | None = None,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load torchvision Mask R-CNN weights (a state dict, a checkpoint path, or the name of
    a ``MaskRCNN_ResNet50_FPN_Weights`` member such as ``"COCO_V1"``, downloaded by
    torchvision) into ``model``.

    Args:
        model: a ``MaskRCNN`` from ``mask_rcnn_r50_fpn*`` (class count matching
            ``keep_classes`` or torchvision's ``num_classes - 1``).
        state_dict: the weights, a ``.pth`` path, or a weights-enum member name.
        keep_classes: see ``map_torchvision_maskrcnn_state_dict``.
        strict: raise when keys are missing or unexpected (buffers such as
            ``num_batches_tracked`` are ignored).

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    if isinstance(state_dict, (str, Path)):
        path = Path(state_dict)
        if path.suffix in (".pth", ".pt", ".ckpt") or path.exists():
            state_dict = load_checkpoint_file(path, "Mask R-CNN weights")
        else:
            state_dict = torchvision_weights("maskrcnn_resnet50_fpn", str(state_dict))
    mapped = map_torchvision_maskrcnn_state_dict(state_dict, keep_classes)
    return load_mapped_weights(model, mapped, strict, "torchvision Mask R-CNN weights")
