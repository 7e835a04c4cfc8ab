"""RefineMask (Zhang et al., CVPR 2021) as ``MaskRCNN`` parts: builders and official weights.

RefineMask is Mask R-CNN with another mask head (``RefineMaskHead``) and a semantic head on P2
(``ForegroundSemanticHead``); the RPN and the box head are Mask R-CNN's. ``MaskRCNN`` runs the
semantic head, adds its loss and passes its output to the mask head, so the network is written
part by part in ``experiments/models/refinemask_r50_fpn.yaml``; ``refinemask_resnet_fpn`` builds
the same network in Python (test ``test_refinemask_yaml_equals_builder``).

The detector follows the official COCO config (zhanggang001/RefineMask @ 633ed2b,
``configs/refinemask/coco/r50-refinemask-1x.py``) where it differs from our Mask R-CNN defaults:
box head losses weighted 2 (cross-entropy and L1), L1 box losses (``box_loss_beta=0``) in the RPN
and the box head, 1000 RPN proposals per image in training, adaptive RoIAlign sampling
(``sampling_ratio=0``). ``map_official_refinemask_state_dict`` renames the official (mmdetection
2.3) checkpoints' keys to this model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.models.heads.box_head import BoxRoIHead
from lightning_seg.models.heads.refine_mask import RefineMaskHead
from lightning_seg.models.heads.refine_mask_semantic import ForegroundSemanticHead
from lightning_seg.models.heads.rpn import RPN
from lightning_seg.models.necks.fpn import FPN
from lightning_seg.models.parts import PartFactory
from lightning_seg.models.weights import load_checkpoint_file, load_mapped_weights

LEVELS = ("p2", "p3", "p4", "p5")

#: ``RefineMaskHead`` / ``ForegroundSemanticHead`` arguments of the official "faster-better"
#: variant (``r50-refinemask-1x-faster-better.py``: ``SimpleRefineMaskHead``).
FASTER_BETTER_MASK_HEAD = {
    "semantic_mask": False,
    "semantic_out_conv": False,
    "semantic_sampling_ratio": 1,
    "fusion_global_pool": True,
    "guides_after_upsample": False,
    "class_agnostic_last_stage": True,
    "last_stage_upsample_logits": True,
    "stage_loss_weights": (0.5, 0.75, 0.75, 1.0),
}
FASTER_BETTER_SEMANTIC_HEAD = {"with_logits": False}


def refinemask_resnet_fpn(
    num_classes: int,
    depth: int = 50,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    frozen_bn: bool | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    faster_better: bool = False,
    rpn: PartFactory | None = None,
    box_head: PartFactory | None = None,
    mask_head: PartFactory | None = None,
    semantic_head: PartFactory | None = None,
    **options,
) -> MaskRCNN:
    """RefineMask with a ResNet-FPN backbone and the official COCO configuration.

    Equal to ``experiments/models/refinemask_r50_fpn.yaml`` (and, with ``faster_better``, to
    ``refinemask_r50_fpn_faster_better.yaml``).

    Args:
        num_classes: ``K`` object classes.
        depth: ResNet depth.
        weights_backbone: torchvision ``ResNet{depth}_Weights`` member (``"IMAGENET1K_V1"``) or
            None for random init.
        trainable_backbone_layers: ResNet stages trained, counted from the top (3 = the
            official ``frozen_stages=1``); with pretrained weights only, as Mask R-CNN.
        frozen_bn: frozen BatchNorm; None: frozen when pretrained (official ``norm_eval``).
        fpn_channels: width of the pyramid (256); the heads' widths stay official.
        anchor_sizes: one anchor size per level P2..P6.
        aspect_ratios: anchor ``h / w`` ratios.
        faster_better: the official "faster-better" variant (``FASTER_BETTER_*`` arguments).
        rpn, box_head, mask_head, semantic_head: replace a part (a callable of the neck's
            shapes).
        **options: ``MaskRCNN`` arguments.
    """
    pretrained = weights_backbone is not None
    backbone = ResNetBackbone(
        depth=depth,
        weights=weights_backbone,
        frozen_bn=pretrained if frozen_bn is None else frozen_bn,
        freeze_at=5 - trainable_backbone_layers if pretrained else 0,
    )
    mask_options = dict(FASTER_BETTER_MASK_HEAD) if faster_better else {}
    semantic_options = dict(FASTER_BETTER_SEMANTIC_HEAD) if faster_better else {}
    return MaskRCNN(
        backbone,
        neck=partial(FPN, out_channels=fpn_channels),
        rpn=rpn or partial(RPN, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                           post_nms_top_n_train=1000, box_loss_beta=0.0),
        box_head=box_head or partial(
            BoxRoIHead, num_classes=num_classes, in_features=LEVELS, sampling_ratio=0,
            box_loss_beta=0.0, loss_cls_weight=2.0, loss_box_weight=2.0,
        ),
        mask_head=mask_head or partial(
            RefineMaskHead, num_classes=num_classes, in_features=LEVELS, **mask_options
        ),
        semantic_head=semantic_head or partial(ForegroundSemanticHead, **semantic_options),
        **options,
    )


def refinemask_r50_fpn(num_classes: int, weights_backbone: str | None = None, **kwargs) -> MaskRCNN:
    """RefineMask R50-FPN (official COCO configuration); see ``refinemask_resnet_fpn``."""
    return refinemask_resnet_fpn(num_classes, depth=50, weights_backbone=weights_backbone, **kwargs)


# ---------------------------------------------------------------------- official weights
def _stage_key_map(prefix: str, num_stages: int, num_dilations: int) -> dict[str, str]:
    """Official ``stages.{s}.*`` (``SFMStage`` / ``SimpleSFMStage``) -> ``RefineStage`` names."""
    renames = {}
    for s in range(num_stages):
        src, dst = f"{prefix}stages.{s}.", f"mask_head.stages.{s}."
        pairs = {
            "semantic_transform_in": "semantic_in",
            "semantic_transform_out": "semantic_out",
            "instance_logits": "logits",
            "fuse_conv.0": "reduce",
            "fuse_conv.1.merge_conv.conv": "fusion.merge",
            "fuse_transform_out": "out",
        }
        for d in range(num_dilations):
            pairs[f"fuse_conv.1.dilation_conv_{d + 1}.conv"] = f"fusion.branches.{d}"
        for a, b in pairs.items():
            for p in ("weight", "bias"):
                renames[f"{src}{a}.{p}"] = f"{dst}{b}.{p}"
    return renames


def map_official_refinemask_state_dict(
    state_dict: Mapping[str, Tensor],
    num_stages: int = 3,
    num_dilations: int = 3,
    fpn_in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
) -> dict[str, Tensor]:
    """Rename an official RefineMask checkpoint (mmdetection 2.3 ``MaskRCNN`` with
    ``RefineRoIHead`` or ``SimpleRefineRoIHead``) to the keys of ``refinemask_resnet_fpn``.

    Layout:

    - ``backbone.*`` (mmdetection's ResNet has torchvision's names) -> ``backbone.*``;
    - ``neck.lateral_convs.{i}.conv`` / ``neck.fpn_convs.{i}.conv`` ->
      ``neck.lateral_convs.c{i+2}`` / ``neck.output_convs.c{i+2}``;
    - ``rpn_head.rpn_conv / rpn_cls / rpn_reg`` -> ``rpn.head.conv / objectness_logits /
      box_deltas`` (same anchor order: ratios 0.5, 1, 2 at one scale);
    - ``roi_head.bbox_head.shared_fcs.{0,1}`` -> ``box_head.fc6 / fc7``; ``fc_cls`` (``K + 1``
      rows, background **last**) -> ``box_head.cls_score`` (background **first**);
      ``fc_reg`` (``4K`` rows, no background) -> ``box_head.box_pred`` (``4(K + 1)`` rows,
      zero rows for the background, which is never decoded);
    - ``roi_head.mask_head.semantic_convs.{i}.conv`` / ``semantic_logits`` ->
      ``semantic_head.convs.{2i}`` / ``semantic_head.logits``;
    - ``roi_head.mask_head.instance_convs.{i}.conv`` -> ``mask_head.instance_convs.{2i}``;
      ``stages.{s}.*`` -> ``mask_head.stages.{s}.*`` (``semantic_transform_in/out`` ->
      ``semantic_in/out``, ``instance_logits`` -> ``logits``, ``fuse_conv.0`` -> ``reduce``,
      ``fuse_conv.1.dilation_conv_{d}.conv`` -> ``fusion.branches.{d-1}``,
      ``fuse_conv.1.merge_conv.conv`` -> ``fusion.merge``, ``fuse_transform_out`` -> ``out``);
      ``final_instance_logits`` -> ``mask_head.final_logits``; the faster-better head's
      ``stage_instance_logits.{s}`` -> ``mask_head.stages.{s}.logits`` and, for the last one,
      ``mask_head.final_logits``.

    A ``{"state_dict": ...}`` checkpoint is unwrapped. Keys that match nothing are returned
    unchanged (loading reports them as unexpected).

    Args:
        state_dict: the official weights (or the checkpoint dict holding them).
        num_stages: refinement stages of the checkpoint (3 in every official config).
        num_dilations: SFM branches (3: dilations 1, 3, 5).
        fpn_in_features: our FPN's ``in_features``.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    mh = "roi_head.mask_head."
    renames: dict[str, str] = {}
    for p in ("weight", "bias"):
        for i, f in enumerate(fpn_in_features):
            renames[f"neck.lateral_convs.{i}.conv.{p}"] = f"neck.lateral_convs.{f}.{p}"
            renames[f"neck.fpn_convs.{i}.conv.{p}"] = f"neck.output_convs.{f}.{p}"
        renames[f"rpn_head.rpn_conv.{p}"] = f"rpn.head.conv.{p}"
        renames[f"rpn_head.rpn_cls.{p}"] = f"rpn.head.objectness_logits.{p}"
        renames[f"rpn_head.rpn_reg.{p}"] = f"rpn.head.box_deltas.{p}"
        renames[f"roi_head.bbox_head.shared_fcs.0.{p}"] = f"box_head.fc6.{p}"
        renames[f"roi_head.bbox_head.shared_fcs.1.{p}"] = f"box_head.fc7.{p}"
        renames[f"roi_head.bbox_head.fc_cls.{p}"] = f"box_head.cls_score.{p}"
        renames[f"roi_head.bbox_head.fc_reg.{p}"] = f"box_head.box_pred.{p}"
        for i in range(8):
            renames[f"{mh}semantic_convs.{i}.conv.{p}"] = f"semantic_head.convs.{2 * i}.{p}"
            renames[f"{mh}instance_convs.{i}.conv.{p}"] = f"mask_head.instance_convs.{2 * i}.{p}"
        renames[f"{mh}semantic_logits.{p}"] = f"semantic_head.logits.{p}"
        renames[f"{mh}final_instance_logits.{p}"] = f"mask_head.final_logits.{p}"
        for s in range(num_stages + 1):
            dst = "mask_head.final_logits" if s == num_stages else f"mask_head.stages.{s}.logits"
            renames[f"{mh}stage_instance_logits.{s}.{p}"] = f"{dst}.{p}"
    renames.update(_stage_key_map(mh, num_stages, num_dilations))

    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out[renames.get(key, key)] = value

    # box classifier: mmdetection puts the background last, we put it first
    for p in ("weight", "bias"):
        key = f"box_head.cls_score.{p}"
        if key in out:
            value = out[key]
            out[key] = torch.cat([value[-1:], value[:-1]], dim=0)
        key = f"box_head.box_pred.{p}"
        if key in out:
            value = out[key]  # [4K, ...] class-specific deltas without a background class
            out[key] = torch.cat([value.new_zeros((4, *value.shape[1:])), value], dim=0)
    return out


def load_official_refinemask(
    model: MaskRCNN,
    state_dict: Mapping[str, Tensor] | str | Path,
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load an official RefineMask checkpoint (a state dict or a ``.pth`` path) into ``model``.

    The model must have the checkpoint's structure (``refinemask_resnet_fpn`` with its class
    count; ``faster_better=True`` for the faster-better checkpoint). Numerical parity with
    mmdetection's outputs is not claimed: its anchors are not rounded, ours are (torchvision's).

    Returns:
        ``(missing_keys, unexpected_keys)``; with ``strict`` a mismatch raises ``KeyError``.
    """
    if isinstance(state_dict, (str, Path)):
        state_dict = load_checkpoint_file(state_dict, "RefineMask weights")
    num_stages = len(model.mask_head.stages) if hasattr(model.mask_head, "stages") else 3
    mapped = map_official_refinemask_state_dict(state_dict, num_stages=num_stages)
    return load_mapped_weights(model, mapped, strict, "official RefineMask weights")
