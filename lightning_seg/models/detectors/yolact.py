"""YOLACT and YOLACT++ (Bolya et al., "YOLACT: Real-time Instance Segmentation", ICCV 2019;
"YOLACT++: Better Real-time Instance Segmentation", TPAMI 2020): wiring of backbone, FPN,
protonet, prediction head and the optional semantic and mask re-scoring heads.

Defaults are the official configs (dbolya/yolact @ 902073d, ``data/config.py``); the maths lives
in the parts (``models/heads/yolact.py``, ``models/assigners/yolact_matcher.py``,
``models/losses/yolact.py``, ``models/postprocess/yolact.py``, ``ops/fast_nms.py``).

Input size: the official model sees every image squashed to 550 x 550 (no aspect ratio kept), a
data transform of its pipeline. Here too the resize is a data transform (the experiments'
``data/coco_instance_550.yaml``: ``Resize(550, 550)``), so that the network stays a plain
function of the batch it is given (any size, padded batches of unequal images included) and
augmentation and resizing stay in one place, as for the other networks. Predictions are mapped
back to each image's size on disk (``SampleMeta.orig_size``): boxes scaled, masks upsampled
straight from the prototypes to that size (as the official ``postprocess``), so squashing costs
no resolution in the output. Anchor scales are in input pixels: for 400 / 700 px inputs use
``yolact_anchor_scales(400)`` (the builders do).

Class indices: ``InstanceTargets.labels`` / ``InstancePredictions.labels`` are ``0..K-1``; the
class logits have ``K + 1`` outputs with background at 0.

Training targets pass one ``TargetFilter``: boxes with a side below ``min_box_size`` (4 px, as
the official augmentation drops boxes of at most 4 px at 550) are dropped and counted
(``target_filter.counts``, logged at 1, 10, 100... drops). Crowd instances are kept as crowd
regions: anchors lying mostly inside one become neutral (``YolactMatcher``), and they give no
positives, masks or semantic targets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.models.assigners.target_filter import TargetFilter
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.heads.yolact import (
    MaskIoUHead,
    ProtoNet,
    YolactAnchors,
    YolactHead,
    YolactHeadOutput,
    YolactSemanticHead,
    yolact_anchor_scales,
)
from lightning_seg.models.necks.fpn import FPN
from lightning_seg.models.parts import PartFactory, build_part
from lightning_seg.models.postprocess.yolact import (
    NMS_MODES,
    YolactDetections,
    assemble_masks,
    detect,
    masks_to_frame,
)
from lightning_seg.models.preprocess import ImagePreprocessor
from lightning_seg.models.weights import load_checkpoint_file, load_mapped_weights
from lightning_seg.structures import Batch, InstancePredictions

log = logging.getLogger("lightning_seg.models")

#: the official normalisation (``MEANS`` / ``STD`` of ``data/config.py``, RGB, images in [0, 1])
YOLACT_PIXEL_MEAN = (123.68 / 255, 116.78 / 255, 103.94 / 255)
YOLACT_PIXEL_STD = (58.40 / 255, 57.12 / 255, 57.38 / 255)


class Yolact(nn.Module):
    """One-stage instance segmentation with prototypes and per-anchor mask coefficients.

    Parts, each built from the shapes of what feeds it (YAML: one ``class_path`` each)::

        backbone(images)        -> {"c3", "c4", "c5"}          backbone.output_shape()
        neck(backbone shapes)   -> FPN P3..P7                  neck.output_shape()
        protonet(neck shapes)   -> ProtoNet: k prototypes at stride 4   {"protos": ShapeSpec(k, 4)}
        head(neck + protonet shapes) -> YolactHead: boxes, classes, k coefficients; num_classes from data
        semantic_head(shapes)   -> YolactSemanticHead or None (training only)
        mask_iou_head           -> MaskIoUHead or None (YOLACT++ mask re-scoring)

    Args:
        backbone: module with ``output_shape()``.
        neck: the FPN.
        protonet: the prototype branch (its ``loss`` is the mask loss).
        head: the prediction head (its ``loss``: class and box terms).
        semantic_head: auxiliary semantic loss on P3, or None.
        mask_iou_head: YOLACT++'s mask re-scoring network, or None.
        preprocessor: normalisation; None: the official mean / std, no padding.
        nms: ``"fast"`` (per-class Fast NMS, the paper), ``"cross_class"`` or ``"standard"``
            (``torchvision.ops.batched_nms``, the paper's ablation).
        conf_thresh: anchors whose best class score is at most this are no candidates (0.05).
        nms_iou_thresh: NMS IoU threshold (0.5).
        nms_top_k: candidates per class entering Fast NMS (200).
        max_detections: detections per image (100).
        mask_thresh: upsampled mask probabilities above this are foreground (0.5).
        mask_rescoring: with a ``mask_iou_head``, a detection's score becomes its class score
            times its predicted mask IoU (YOLACT++ ranks masks by it; the official code keeps the
            class score for box AP, here both use the re-scored one).
        min_box_size: training boxes with a side below this (input pixels) are dropped and
            counted (4).

    Train (``train()``): ``forward(batch)`` returns ``{"loss_cls", "loss_box", "loss_mask"}``
    plus ``"loss_semantic"`` / ``"loss_mask_iou"`` with those heads, each already weighted and
    normalised; ``batch.instances`` in the frame of ``batch.images`` with masks.

    Eval (``eval()``): ``forward(batch)`` returns one ``InstancePredictions`` per image in the
    frame of ``batch.meta[i].orig_size`` (bool masks).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: PartFactory,
        protonet: PartFactory,
        head: PartFactory,
        semantic_head: PartFactory | None = None,
        mask_iou_head: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        nms: str = "fast",
        conf_thresh: float = 0.05,
        nms_iou_thresh: float = 0.5,
        nms_top_k: int = 200,
        max_detections: int = 100,
        mask_thresh: float = 0.5,
        mask_rescoring: bool = True,
        min_box_size: float = 4.0,
    ) -> None:
        super().__init__()
        if nms not in NMS_MODES:
            raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
        self.backbone = backbone
        self.neck = build_part(neck, backbone.output_shape())
        shapes = self.neck.output_shape()
        self.protonet = build_part(protonet, shapes)
        self.head = build_part(head, {**shapes, **self.protonet.output_shape()})
        self.semantic_head = None if semantic_head is None else build_part(semantic_head, shapes)
        self.mask_iou_head = mask_iou_head
        if self.protonet.num_prototypes != self.head.num_prototypes:
            raise ValueError(
                f"the protonet makes {self.protonet.num_prototypes} prototypes but the head "
                f"predicts {self.head.num_prototypes} coefficients: set num_prototypes alike"
            )
        self.preprocessor = preprocessor or ImagePreprocessor(YOLACT_PIXEL_MEAN, YOLACT_PIXEL_STD)
        self.nms = nms
        self.conf_thresh = conf_thresh
        self.nms_iou_thresh = nms_iou_thresh
        self.nms_top_k = nms_top_k
        self.max_detections = max_detections
        self.mask_thresh = mask_thresh
        self.mask_rescoring = mask_rescoring
        self.target_filter = TargetFilter(drop_crowd=False, min_size=min_box_size)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def features(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]
                 ) -> tuple[dict[str, Tensor], Tensor, tuple[int, int]]:
        """The pyramid, the prototypes and the ``(H, W)`` of the normalised, padded input of a
        batch (``images`` in ``[0, 1]``, padded)."""
        x = self.preprocessor(images, image_sizes)
        features = self.neck(self.backbone(x))
        return features, self.protonet(features), (int(x.shape[-2]), int(x.shape[-1]))

    def forward(self, batch: Batch) -> dict[str, Tensor] | list[InstancePredictions]:
        """Losses in training mode, predictions in eval mode (see the class docstring)."""
        image_sizes = [(int(h), int(w)) for h, w in batch.image_sizes]
        features, protos, input_size = self.features(batch.images, image_sizes)
        raw = self.head(features, input_size)
        if self.training:
            return self.losses(features, protos, raw, batch)
        detections, mask_probs = self.detect(raw, protos)
        return self.postprocess(detections, mask_probs, input_size, image_sizes, batch.orig_sizes)

    def losses(self, features: dict[str, Tensor], protos: Tensor, raw: YolactHeadOutput,
               batch: Batch) -> dict[str, Tensor]:
        """Every loss term (see the class docstring)."""
        if batch.instances is None:
            raise ValueError(
                f"{type(self).__name__} in training mode needs batch.instances (a DataModule "
                f"with task='instance'), or call .eval() to predict"
            )
        targets = self.target_filter(batch.instances)
        assignment = self.head.match(raw, targets)
        losses = self.head.loss(raw, assignment, targets)
        mask_losses, samples = self.protonet.loss(protos, raw.coeffs, assignment, targets, raw.input_size)
        losses.update(mask_losses)
        if self.semantic_head is not None:
            losses.update(self.semantic_head.loss(self.semantic_head(features), targets, raw.input_size))
        if self.mask_iou_head is not None:
            losses.update(self.mask_iou_head.loss(samples, assignment.num_pos))
        return losses

    def detect(self, raw: YolactHeadOutput, protos: Tensor) -> tuple[YolactDetections, Tensor]:
        """Fixed-size detections in the input frame and their cropped mask probabilities at
        prototype resolution (``Tensor[B, D, h, w]``)."""
        boxes, probs = self.head.decode(raw)
        dets = detect(boxes, probs, raw.coeffs, self.conf_thresh, self.nms_iou_thresh,
                      self.nms_top_k, self.max_detections, self.nms)
        masks = assemble_masks(protos, dets.coeffs, dets.boxes, raw.input_size, self.protonet.crop_padding)
        if self.mask_iou_head is not None and self.mask_rescoring:
            b, d = dets.labels.shape
            iou = self.mask_iou_head.predict(masks.flatten(0, 1), dets.labels.flatten()).reshape(b, d)
            dets.scores = dets.scores * iou.float()
        return dets, masks

    def postprocess(
        self,
        detections: YolactDetections,
        mask_probs: Tensor,
        input_size: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        out_sizes: Sequence[tuple[int, int]],
    ) -> list[InstancePredictions]:
        """Per image, the valid detections mapped from its region of the input to ``out_sizes``:
        boxes scaled and clipped, masks upsampled and thresholded."""
        results = []
        for i, (image_size, out) in enumerate(zip(image_sizes, out_sizes)):
            out = (int(out[0]), int(out[1]))
            keep = detections.valid[i]
            boxes = scale_boxes(detections.boxes[i][keep], image_size, out)
            masks = masks_to_frame(mask_probs[i][keep], input_size, image_size, out) > self.mask_thresh
            results.append(InstancePredictions(
                boxes=boxes, scores=detections.scores[i][keep].float(),
                labels=detections.labels[i][keep], image_size=out, masks=masks,
            ))
        return results


def scale_boxes(boxes: Tensor, from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """``Tensor[N, 4]`` boxes mapped from one frame to another and clipped to it."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    scaled = boxes.float() * boxes.new_tensor([sx, sy, sx, sy]).float()
    limit = boxes.new_tensor([to_size[1], to_size[0], to_size[1], to_size[0]]).float()
    return torch.minimum(scaled.clamp(min=0), limit)


# ---------------------------------------------------------------------- builders
def yolact_resnet_fpn(
    num_classes: int,
    depth: int = 101,
    input_size: int = 550,
    num_prototypes: int = 32,
    plus: bool = False,
    weights_backbone: str | None = None,
    frozen_bn: bool | None = None,
    square_anchors: bool | None = None,
    masks_to_train: int | None = None,
    fpn_channels: int = 256,
    with_semantic: bool = True,
    backbone_options: Mapping | None = None,
    **options,
) -> Yolact:
    """YOLACT (or, ``plus=True``, YOLACT++) on a ResNet-FPN with the official settings.

    The same network as ``experiments/models/yolact_r{50,101}.yaml`` and
    ``yolact_plus_r{50,101}.yaml`` (test ``test_yolact_yaml_equals_builder``).

    Args:
        num_classes: ``K`` object classes (no background).
        depth: ResNet depth (50 / 101; 18 / 34 for tests).
        input_size: the square input side the anchors are scaled for (400 / 550 / 700).
        num_prototypes: ``k`` (32).
        plus: YOLACT++: DCNv2 in C3-C5 (every block on R50, every 3rd on R101), 3 scales x 3
            ratios of true rectangles per location, mask re-scoring head.
        weights_backbone: torchvision ``ResNet{depth}_Weights`` member name, or None.
        frozen_bn: frozen BatchNorm in the backbone; None: frozen when pretrained (the official
            training freezes it below 6 images per device).
        square_anchors: the v1 anchor quirk (``YolactAnchors``); None: True for YOLACT, False
            for YOLACT++ (as the official configs).
        masks_to_train: positives per image in the mask loss; None: 100 (300 at 700 px).
        fpn_channels: width of the pyramid, the heads and the protonet (256).
        with_semantic: the auxiliary semantic loss (official: on).
        backbone_options: further ``ResNetBackbone`` arguments (e.g. ``num_blocks``).
        **options: ``Yolact`` arguments (``nms``, ``max_detections``, ...).
    """
    pretrained = weights_backbone is not None
    deform = {}
    if plus:
        deform = {"deform_stages": ("c3", "c4", "c5"), "deform_interval": 3 if depth >= 101 else 1}
    backbone = ResNetBackbone(
        depth=depth, weights=weights_backbone, out_features=("c3", "c4", "c5"),
        frozen_bn=pretrained if frozen_bn is None else frozen_bn, **deform, **(backbone_options or {}),
    )
    anchors = YolactAnchors(
        scales=yolact_anchor_scales(input_size, num_scales=3 if plus else 1),
        aspect_ratios=(1.0, 0.5, 2.0),
        square_anchors=(not plus) if square_anchors is None else square_anchors,
    )
    return Yolact(
        backbone,
        neck=partial(FPN, out_channels=fpn_channels, in_features=("c3", "c4", "c5"), extra_levels="conv",
                     num_extra_levels=2, upsample_mode="bilinear", output_relu=True, init="xavier_uniform"),
        protonet=partial(ProtoNet, num_prototypes=num_prototypes, channels=fpn_channels,
                         masks_to_train=masks_to_train or (300 if input_size >= 700 else 100)),
        head=partial(YolactHead, num_classes=num_classes, anchors=anchors, channels=fpn_channels),
        semantic_head=partial(YolactSemanticHead, num_classes=num_classes) if with_semantic else None,
        mask_iou_head=MaskIoUHead(num_classes) if plus else None,
        **options,
    )


def yolact_r50(num_classes: int, input_size: int = 550, **kwargs) -> Yolact:
    """YOLACT-R50 (paper: 28.2 mask AP, 42.5 fps at 550 on a Titan Xp)."""
    return yolact_resnet_fpn(num_classes, depth=50, input_size=input_size, **kwargs)


def yolact_r101(num_classes: int, input_size: int = 550, **kwargs) -> Yolact:
    """YOLACT-R101 ("yolact_base"; paper: 29.8 mask AP at 550, 31.2 at 700)."""
    return yolact_resnet_fpn(num_classes, depth=101, input_size=input_size, **kwargs)


def yolact_plus_r50(num_classes: int, input_size: int = 550, **kwargs) -> Yolact:
    """YOLACT++-R50 (paper: 34.1 mask AP)."""
    return yolact_resnet_fpn(num_classes, depth=50, input_size=input_size, plus=True, **kwargs)


def yolact_plus_r101(num_classes: int, input_size: int = 550, **kwargs) -> Yolact:
    """YOLACT++-R101 (paper: 34.6 mask AP)."""
    return yolact_resnet_fpn(num_classes, depth=101, input_size=input_size, plus=True, **kwargs)


# ---------------------------------------------------------------------- official weights
def map_official_yolact_state_dict(
    state_dict: Mapping[str, Tensor], keep_classes: Sequence[int] | None = None
) -> dict[str, Tensor]:
    """Rename an official YOLACT / YOLACT++ checkpoint (``yolact_base_54_800000.pth``,
    ``yolact_plus_resnet50_54_800000.pth``, ...) to this implementation's keys.

    Layout (official -> ours)::

        backbone.layers.{i}.*                       -> backbone.layer{i+1}.*
        backbone.layers.{i}.{j}.conv2.conv_offset_mask.*  (DCNv2) -> backbone.layer{i+1}.{j}.conv2.offset.*
        fpn.lat_layers.{r}.* / fpn.pred_layers.{r}.*  -> neck.lateral_convs.c{5-r}.* / neck.output_convs.c{5-r}.*
                                                       (the official FPN stores its convs coarsest first)
        fpn.downsample_layers.{i}.*                 -> neck.extra_convs.{i}.*
        proto_net.{n}.*                             -> protonet.layers.{n}.*
        prediction_layers.0.upfeature.0.*           -> head.upfeature.0.*
        prediction_layers.0.{bbox,conf,mask}_layer.* -> head.{box,class,coeff}_layer.*
        semantic_seg_conv.*                         -> semantic_head.conv.*
        maskiou_net.maskiou_net.{n}.*               -> mask_iou_head.layers.{n}.*

    The official DCNv2 splits its 27 offset-branch outputs as 18 offsets then 9 mask logits, the
    layout ``DeformConv2d`` uses. Keys that match nothing are returned unchanged, so that loading
    reports them as unexpected.

    Args:
        state_dict: the official weights.
        keep_classes: official class indices (1-based, 0 is background; COCO's 80 classes in
            category-id order) to keep, in our contiguous order; None keeps all.

    Returns:
        a new state dict for a ``Yolact`` from ``yolact_resnet_fpn``.
    """
    rules = [
        (r"^backbone\.layers\.(\d+)\.(\d+)\.conv2\.conv_offset_mask\.",
         lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.conv2.offset."),
        (r"^backbone\.layers\.(\d+)\.", lambda m: f"backbone.layer{int(m[1]) + 1}."),
        (r"^fpn\.lat_layers\.(\d+)\.", lambda m: f"neck.lateral_convs.c{5 - int(m[1])}."),
        (r"^fpn\.pred_layers\.(\d+)\.", lambda m: f"neck.output_convs.c{5 - int(m[1])}."),
        (r"^fpn\.downsample_layers\.(\d+)\.", lambda m: f"neck.extra_convs.{m[1]}."),
        (r"^proto_net\.(\d+)\.", lambda m: f"protonet.layers.{m[1]}."),
        (r"^prediction_layers\.0\.upfeature\.", lambda m: "head.upfeature."),
        (r"^prediction_layers\.0\.bbox_layer\.", lambda m: "head.box_layer."),
        (r"^prediction_layers\.0\.conf_layer\.", lambda m: "head.class_layer."),
        (r"^prediction_layers\.0\.mask_layer\.", lambda m: "head.coeff_layer."),
        (r"^semantic_seg_conv\.", lambda m: "semantic_head.conv."),
        (r"^maskiou_net\.maskiou_net\.", lambda m: "mask_iou_head.layers."),
    ]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, repl in rules:
            match = re.match(pattern, key)
            if match:
                new_key = repl(match) + key[match.end():]
                break
        out[new_key] = value
    if keep_classes is not None and "head.class_layer.weight" in out:
        _select_classes(out, [int(c) for c in keep_classes])
    return out


def _select_classes(state: dict[str, Tensor], keep: Sequence[int]) -> None:
    """Keep the rows of ``keep`` classes (1-based) in the class-dependent layers, in place."""
    boxes = state["head.box_layer.weight"].shape[0] // 4  # anchors per location A
    k1 = state["head.class_layer.weight"].shape[0] // boxes  # K_official + 1
    bad = [c for c in keep if not 1 <= c < k1]
    if bad:
        raise ValueError(f"keep_classes {bad} outside the official classes 1..{k1 - 1}")
    cls = torch.tensor([0, *keep])
    rows = (torch.arange(boxes)[:, None] * k1 + cls[None]).reshape(-1)  # [A * (K + 1)]
    for p in ("weight", "bias"):
        state[f"head.class_layer.{p}"] = state[f"head.class_layer.{p}"][rows]
        for name in ("semantic_head.conv", "mask_iou_head.layers.10"):
            if f"{name}.{p}" in state:
                state[f"{name}.{p}"] = state[f"{name}.{p}"][cls[1:] - 1]


def load_official_yolact(
    model: Yolact,
    state_dict: Mapping[str, Tensor] | str | Path,
    keep_classes: Sequence[int] | None = None,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load official YOLACT / YOLACT++ weights (a state dict or a ``.pth`` path) into ``model``.

    Build the model to match the checkpoint: ``yolact_r101`` for ``yolact_base``,
    ``yolact_r50`` for ``yolact_resnet50``, ``yolact_r101(input_size=700)`` for
    ``yolact_im700``, ``yolact_plus_r101`` / ``yolact_plus_r50`` for YOLACT++, with
    ``num_classes=80`` (or ``len(keep_classes)``). Then ``model.eval()`` evaluates it and
    training fine-tunes it.

    Args:
        model: the network.
        state_dict: the weights or the checkpoint path.
        keep_classes: see ``map_official_yolact_state_dict``.
        strict: raise when keys are missing or unexpected (``num_batches_tracked`` ignored).

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = load_checkpoint_file(state_dict, "YOLACT weights")
    mapped = map_official_yolact_state_dict(state_dict, keep_classes)
    own = model.state_dict()
    wrong = [k for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(
            f"official YOLACT weights do not fit this model: {len(wrong)} shapes differ, e.g. "
            f"{wrong[0]} {tuple(mapped[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}; build "
            f"the model of the checkpoint (depth, plus, num_classes / keep_classes, num_prototypes)"
        )
    return load_mapped_weights(model, mapped, strict, "official YOLACT weights")
