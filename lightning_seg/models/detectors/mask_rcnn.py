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

Crowd instances (``iscrowd``) are dropped from the targets before any matching: they give no
positives to the RPN or the RoI heads and no mask targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.heads.anchors import AnchorGenerator
from lightning_seg.models.heads.box_head import BoxRoIHead
from lightning_seg.models.heads.mask_head import MaskRoIHead
from lightning_seg.models.heads.rpn import RPN, RPNHead, rpn_key_map_from_torchvision
from lightning_seg.models.necks.fpn import FPN, fpn_key_map_from_torchvision
from lightning_seg.models.postprocess.masks import paste_masks_in_image
from lightning_seg.structures import InstancePredictions, InstanceTargets


class MaskRCNN(nn.Module):
    """Two-stage instance segmentation: RPN proposals, box head, parallel mask head.

    Args:
        backbone: exposes ``out_channels``/``strides``; ``forward(Tensor[B, 3, H, W]) ->
            {level: Tensor}`` on normalised images.
        neck: the FPN, ``forward(backbone features) -> {"p2": ..., "p6": ...}``.
        rpn: ``forward(features, image_sizes) -> raw``, ``loss(raw, targets)``,
            ``predict(raw, image_sizes) -> list[Tensor[R_i, 4]]``.
        box_head: ``BoxRoIHead`` (or a head with the same API).
        mask_head: ``MaskRoIHead`` or a replacement (RefineMask); None for Faster R-CNN.
        pixel_mean: per-channel mean of images in ``[0, 1]`` (ImageNet).
        pixel_std: per-channel std (ImageNet).
        size_divisibility: the normalised batch is zero-padded at the bottom/right to a
            multiple of this (32 for a 5-level FPN).
        mask_thresh: pasted mask probabilities ``>= mask_thresh`` are foreground (0.5).

    Train: ``forward(images, image_sizes, targets)`` in ``train()`` mode returns
    ``{"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}``.

    Eval: ``forward(images, image_sizes, orig_sizes=...)`` in ``eval()`` mode returns one
    ``InstancePredictions`` per image: boxes scaled from ``image_sizes`` to ``orig_sizes``
    (when given), masks pasted at that size and thresholded (bool ``Tensor[N, H, W]``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn: nn.Module,
        box_head: nn.Module,
        mask_head: nn.Module | None = None,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisibility: int = 32,
        mask_thresh: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.box_head = box_head
        self.mask_head = mask_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.size_divisibility = size_divisibility
        self.mask_thresh = mask_thresh

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Normalise, zero the padding, crop to the largest image and pad to the divisibility.

        Padding is zero *after* normalisation (as torchvision and detectron2), whatever the
        collate padded with.

        Args:
            images: ``Tensor[B, 3, H, W]`` float in ``[0, 1]``.
            image_sizes: ``(h, w)`` of each image before padding.

        Returns:
            ``Tensor[B, 3, H', W']`` with ``H' = ceil(max h / d) * d`` (same for W').
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be Tensor[B, 3, H, W], got {tuple(images.shape)}")
        if len(image_sizes) != images.shape[0]:
            raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {images.shape[0]}")
        max_h = max(int(h) for h, _ in image_sizes)
        max_w = max(int(w) for _, w in image_sizes)
        if max_h > images.shape[2] or max_w > images.shape[3]:
            raise ValueError(
                f"image_sizes up to ({max_h}, {max_w}) exceed the batch {tuple(images.shape[2:])}"
            )
        x = (images[:, :, :max_h, :max_w] - self.pixel_mean) / self.pixel_std
        for i, (h, w) in enumerate(image_sizes):
            x[i, :, int(h) :, :] = 0
            x[i, :, :, int(w) :] = 0
        d = self.size_divisibility
        pad_h = int(math.ceil(max_h / d) * d) - max_h
        pad_w = int(math.ceil(max_w / d) * d) - max_w
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    @staticmethod
    def _check_targets(targets: Sequence[InstanceTargets], num_images: int) -> None:
        if len(targets) != num_images:
            raise ValueError(f"{len(targets)} targets for a batch of {num_images} images")
        boxes = torch.cat([t.boxes for t in targets], dim=0)
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bool(bad.any()):
            sizes = [len(t) for t in targets]
            first = int(torch.nonzero(bad)[0])
            image = next(i for i in range(len(sizes)) if first < sum(sizes[: i + 1]))
            raise ValueError(
                f"image {image} of the batch has a box with non-positive width or height "
                f"{boxes[first].tolist()}; drop degenerate boxes in the dataset reader"
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[InstanceTargets] | None = None,
        orig_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[InstancePredictions]:
        """Losses in training mode, predictions in eval mode (see the class docstring).

        Args:
            images: ``Tensor[B, 3, H, W]`` float in ``[0, 1]``, zero-padded bottom/right.
            image_sizes: ``(h, w)`` of each image before padding.
            targets: per image ``InstanceTargets`` in the pixel frame of ``images``
                (training only; labels ``0..K-1``; masks needed with a mask head).
            orig_sizes: ``(H, W)`` to map each image's predictions to (eval only); default
                ``image_sizes``.
        """
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        x = self.preprocess(images, image_sizes)
        features = self.neck(self.backbone(x))
        rpn_raw = self.rpn(features, image_sizes)
        proposals = self.rpn.predict(rpn_raw, image_sizes)

        if self.training:
            if targets is None:
                raise ValueError("MaskRCNN in training mode needs targets (or call .eval())")
            self._check_targets(targets, images.shape[0])
            targets = [t.select(~t.iscrowd) for t in targets]
            losses = dict(self.rpn.loss(rpn_raw, targets))
            box_raw = self.box_head(features, proposals, image_sizes, targets)
            losses.update(self.box_head.loss(box_raw))
            if self.mask_head is not None:
                rois, labels, matched_idxs = box_raw.positives()
                mask_raw = self.mask_head(features, rois, labels, matched_idxs)
                losses.update(self.mask_head.loss(mask_raw, targets))
            return losses

        box_raw = self.box_head(features, proposals, image_sizes)
        detections = self.box_head.predict(box_raw, image_sizes)
        mask_probs = None
        if self.mask_head is not None:
            mask_raw = self.mask_head(
                features, [d.boxes for d in detections], [d.labels for d in detections]
            )
            mask_probs = self.mask_head.predict(mask_raw)
        return self.postprocess(detections, mask_probs, orig_sizes or image_sizes)

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
            h_out, w_out = int(size[0]), int(size[1])
            h_in, w_in = det.image_size
            scale = torch.tensor(
                [w_out / w_in, h_out / h_in, w_out / w_in, h_out / h_in],
                dtype=det.boxes.dtype,
                device=det.boxes.device,
            )
            boxes = det.boxes * scale  # [N, 4]
            masks = None
            if mask_probs is not None:
                soft = paste_masks_in_image(mask_probs[i].float(), boxes, (h_out, w_out))
                masks = soft >= self.mask_thresh  # [N, H, W] bool
            results.append(
                InstancePredictions(
                    boxes=boxes,
                    scores=det.scores,
                    labels=det.labels,
                    image_size=(h_out, w_out),
                    masks=masks,
                )
            )
        return results


class MaskRCNNResNetFPN(MaskRCNN):
    """Mask R-CNN with a ResNet-FPN backbone and the paper's defaults, built from arguments.

    A class rather than a builder function so that an experiment YAML can name it in
    ``class_path`` (LightningCLI instantiates classes) and ``num_classes`` is linked from the
    DataModule. The parts, attribute names and state-dict keys are those of ``MaskRCNN``.

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
        rpn_kwargs: extra ``RPN`` arguments (top-k, thresholds, ...).
        box_head_kwargs: extra ``BoxRoIHead`` arguments.
        mask_head_kwargs: extra ``MaskRoIHead`` arguments.
        with_mask: False builds Faster R-CNN (no mask head).
        pixel_mean, pixel_std, size_divisibility, mask_thresh: see ``MaskRCNN``.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 50,
        weights_backbone: str | None = None,
        trainable_backbone_layers: int = 3,
        frozen_bn: bool | None = None,
        aligned: bool = True,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_kwargs: dict | None = None,
        box_head_kwargs: dict | None = None,
        mask_head_kwargs: dict | None = None,
        with_mask: bool = True,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisibility: int = 32,
        mask_thresh: float = 0.5,
    ) -> None:
        pretrained = weights_backbone is not None
        if not 0 <= trainable_backbone_layers <= 5:
            raise ValueError(
                f"trainable_backbone_layers must be in 0..5, got {trainable_backbone_layers}"
            )
        backbone = ResNetBackbone(
            depth=depth,
            weights=weights_backbone,
            frozen_bn=pretrained if frozen_bn is None else frozen_bn,
            freeze_at=5 - trainable_backbone_layers if pretrained else 0,
        )
        neck = FPN(backbone.out_channels, backbone.strides, fpn_channels)
        levels = list(neck.strides)
        anchors = AnchorGenerator(
            sizes=[(s,) for s in anchor_sizes],
            aspect_ratios=[tuple(aspect_ratios)] * len(anchor_sizes),
            strides=[neck.strides[lvl] for lvl in levels],
        )
        rpn = RPN(
            RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            anchors,
            in_features=levels,
            **dict(rpn_kwargs or {}),
        )
        roi_levels = [lvl for lvl in levels if neck.strides[lvl] <= 32]  # P2..P5
        box_head = BoxRoIHead(
            fpn_channels, num_classes, neck.strides, in_features=roi_levels, aligned=aligned,
            **dict(box_head_kwargs or {}),
        )
        mask_head = None
        if with_mask:
            mask_kwargs = {"aligned": aligned, "target_aligned": aligned}
            mask_kwargs.update(mask_head_kwargs or {})
            mask_head = MaskRoIHead(
                fpn_channels, num_classes, neck.strides, in_features=roi_levels, **mask_kwargs
            )
        super().__init__(
            backbone, neck, rpn, box_head, mask_head, pixel_mean=pixel_mean, pixel_std=pixel_std,
            size_divisibility=size_divisibility, mask_thresh=mask_thresh,
        )


# ---------------------------------------------------------------------- builders
def mask_rcnn_r50_fpn(
    num_classes: int,
    weights_backbone: str | None = None,
    trainable_backbone_layers: int = 3,
    **kwargs,
) -> MaskRCNN:
    """Mask R-CNN R50-FPN with the paper's settings (``aligned=True`` RoIAlign).

    See ``MaskRCNNResNetFPN`` for the arguments.
    """
    return MaskRCNNResNetFPN(
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
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

            state_dict = MaskRCNN_ResNet50_FPN_Weights[str(state_dict)].get_state_dict(
                progress=False
            )
    mapped = map_torchvision_maskrcnn_state_dict(state_dict, keep_classes)
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise KeyError(
            f"torchvision Mask R-CNN weights do not fit this model: missing {missing[:8]} "
            f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
        )
    return missing, unexpected
