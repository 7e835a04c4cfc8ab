"""UPSNet's semantic head: one deformable-convolution subnet shared by the FPN levels.

Xiong et al., "UPSNet: A Unified Panoptic Segmentation Network", CVPR 2019, section 3.1 and
figure 2; numbers from the official code (uber-research/UPSNet @ aa8434e, the FCN head and the
COCO / Cityscapes experiment files):

* one subnet applied to each of P2..P5 (shared weights): ``num_layers`` 3x3 deformable
  convolutions (DCNv1: offsets from a plain 3x3 conv, zero-initialised) with ReLU and no
  normalisation; the second-to-last layer goes from the pyramid width to ``channels`` (COCO, 3
  layers: 256 -> 256, 256 -> 128, 128 -> 128; Cityscapes, 2 layers: 256 -> 128, 128 -> 128);
* each level bilinearly upsampled to P2 (x2, x4, x8), concatenated (4 x 128 = 512 channels) and
  classified by a 1x1 conv into all K classes (stuff and things, dataset order);
* loss: cross-entropy with ignore on the logits upsampled x4 to the input (``loss_semantic``);
  COCO adds the RoI semantic loss: RoIAlign of the 512-channel feature in every non-crowd
  ground-truth box to 28x28, the same classifier, cross-entropy against the semantic map cut out
  of the box and resized (nearest) to 28x28 (``loss_semantic_roi``, weight 0.2 x 0.2 = 0.04);
  computed here as the RoIAlign of the logits, the same numbers for boxes inside the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from lightning_seg.layers.deform import DeformConv2d
from lightning_seg.models.postprocess.panoptic import box_extents
from lightning_seg.structures import Batch, FeatureShapes
from lightning_seg.structures.dataset_info import require_fact


@dataclass
class SemanticHeadOutput:
    """Raw output of ``UPSNetSemanticHead.forward``.

    Attributes:
        logits: ``Tensor[B, K, H / s, W / s]`` class logits at the finest level's stride ``s``.
        features: ``Tensor[B, L * C, H / s, W / s]`` the concatenated level features (the input
            of the classifier, pooled by the RoI semantic loss).
        stride: ``s`` (4 for P2).
    """

    logits: Tensor
    features: Tensor
    stride: int


def fit_label_map(labels: Tensor, size: Sequence[int], fill: int) -> Tensor:
    """Crop or pad (bottom / right, with ``fill``) a ``Tensor[..., H, W]`` label map to ``size``."""
    h, w = int(size[0]), int(size[1])
    labels = labels[..., :h, :w]
    ph, pw = h - labels.shape[-2], w - labels.shape[-1]
    if ph or pw:
        labels = F.pad(labels, (0, pw, 0, ph), value=fill)
    return labels


def roi_semantic_targets(
    semantic: Tensor, boxes: Tensor, size: int, ignore_index: int
) -> Tensor:
    """The semantic map inside each box, resized to ``size x size`` by nearest neighbour.

    Args:
        semantic: ``Tensor[H, W]`` int64 labels of one image.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 in the pixels of ``semantic``.
        size: output side (28).
        ignore_index: label of the parts of a box outside the map.

    Returns:
        ``Tensor[N, size, size]`` int64.
    """
    extents = box_extents(boxes)  # [N, 4]
    h, w = semantic.shape
    out = semantic.new_full((boxes.shape[0], size, size), ignore_index)
    for i, (x0, y0, x1, y1) in enumerate(extents.tolist()):
        crop = semantic.new_full((y1 - y0, x1 - x0), ignore_index)
        xs, xe, ys, ye = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        if xe > xs and ye > ys:
            crop[ys - y0 : ye - y0, xs - x0 : xe - x0] = semantic[ys:ye, xs:xe]
        out[i] = F.interpolate(crop[None, None].double(), size=(size, size),
                               mode="nearest-exact")[0, 0].long()
    return out


class UPSNetSemanticHead(nn.Module):
    """Deformable FPN semantic head of UPSNet (a ``MaskRCNN`` ``semantic_head`` part).

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck.
        num_classes: K, every class of the dataset (stuff and things; filled from the data).
        ignore_index: label of void pixels (filled from the data).
        in_features: levels, finest first (P2..P5); all are upsampled to the first.
        num_layers: convolutions of the subnet (3 COCO, 2 Cityscapes; at least 2).
        channels: output width of the subnet (128).
        deformable: deformable 3x3 convolutions (paper); False: plain convolutions (ablation).
        loss_weight: weight of ``loss_semantic`` (0.2 COCO, 1.0 Cityscapes).
        roi_loss_weight: weight of ``loss_semantic_roi`` (0.04 COCO; 0 turns it off, as
            Cityscapes).
        roi_size: side of the RoI semantic grid (28, the mask size).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        num_layers: int = 3,
        channels: int = 128,
        deformable: bool = True,
        loss_weight: float = 0.2,
        roi_loss_weight: float = 0.04,
        roi_size: int = 28,
    ) -> None:
        super().__init__()
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        self.ignore_index = 255 if ignore_index is None else int(ignore_index)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"in_features {missing} are not neck levels {list(input_shape)}")
        widths = {input_shape[f].channels for f in in_features}
        if len(widths) != 1:
            raise ValueError(f"the levels {list(in_features)} must share one width, got {widths}")
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 (the official subnet), got {num_layers}")
        self.in_features = tuple(in_features)
        self.stride = input_shape[in_features[0]].stride
        self.loss_weight = loss_weight
        self.roi_loss_weight = roi_loss_weight
        self.roi_size = roi_size
        self.deformable = deformable
        width = widths.pop()
        layers = []
        for i in range(num_layers):
            out = channels if i >= num_layers - 2 else width
            conv = (DeformConv2d(width, out, 3, modulated=False) if deformable
                    else nn.Conv2d(width, out, 3, padding=1))
            nn.init.kaiming_normal_(conv.weight)  # the official init: fan-in, zero bias
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            width = out
        self.subnet = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels * len(in_features), self.num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: dict[str, Tensor]) -> SemanticHeadOutput:
        """Args:
            features: the pyramid, ``Tensor[B, C, H_l, W_l]`` per level.

        Returns:
            ``SemanticHeadOutput`` (logits and features at the first level's stride).
        """
        size = features[self.in_features[0]].shape[-2:]
        levels = []
        for name in self.in_features:
            x = self.subnet(features[name])  # [B, channels, H_l, W_l]
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            levels.append(x)
        feat = torch.cat(levels, dim=1)  # [B, L * channels, H_s, W_s]
        return SemanticHeadOutput(self.classifier(feat), feat, self.stride)

    def loss(self, raw: SemanticHeadOutput, batch: Batch) -> dict[str, Tensor]:
        """``loss_semantic`` (and ``loss_semantic_roi`` when its weight is not 0).

        Args:
            raw: output of ``forward``.
            batch: ``semantic`` labels (required) and, for the RoI loss, ``instances`` (boxes of
                the non-crowd instances).
        """
        if batch.semantic is None:
            raise ValueError(
                f"{type(self).__name__} needs batch.semantic (a panoptic DataModule gives it)"
            )
        logits = F.interpolate(raw.logits.float(), scale_factor=raw.stride, mode="bilinear",
                               align_corners=False)  # [B, K, H, W] the padded input frame
        target = fit_label_map(batch.semantic, logits.shape[-2:], self.ignore_index)
        valid = target != self.ignore_index
        if bool(valid.any()):
            bad = target[valid]
            if int(bad.min()) < 0 or int(bad.max()) >= self.num_classes:
                raise ValueError(
                    f"semantic labels {int(bad.min())}..{int(bad.max())} outside 0..{self.num_classes - 1} "
                    f"(ignore {self.ignore_index}): check num_classes / ignore_index"
                )
            loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        else:
            loss = logits.sum() * 0
        losses = {"loss_semantic": loss * self.loss_weight}
        if self.roi_loss_weight:
            losses["loss_semantic_roi"] = self.roi_loss(raw, batch) * self.roi_loss_weight
        return losses

    def roi_loss(self, raw: SemanticHeadOutput, batch: Batch) -> Tensor:
        """Cross-entropy of the classifier on the RoIAligned feature of every non-crowd
        ground-truth box. As the official code, the mean runs over every RoI pixel, void ones
        counting 0."""
        if batch.instances is None:
            raise ValueError(f"{type(self).__name__}: the RoI semantic loss needs batch.instances")
        boxes, targets = [], []
        for i, inst in enumerate(batch.instances):
            b = inst.boxes[~inst.iscrowd.to(inst.boxes.device)].to(raw.features.device)
            boxes.append(b.float())
            if b.shape[0]:
                targets.append(roi_semantic_targets(batch.semantic[i], b, self.roi_size,
                                                    self.ignore_index))
        if not targets:
            return raw.logits.sum() * 0
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1)
                          for i, b in enumerate(boxes)])  # [R, 5]
        # RoIAlign of the logits = the classifier on RoIAligned features: the 1x1 classifier is
        # linear and the bilinear weights of a sample inside the image sum to 1 (ground-truth
        # boxes are); K channels are pooled instead of L * C (cheaper, and so is the backward)
        logits = roi_align(raw.logits, rois.to(raw.logits.dtype), self.roi_size, 1.0 / raw.stride,
                           2, True).float()  # [R, K, roi, roi]
        pixel = F.cross_entropy(logits, torch.cat(targets), ignore_index=self.ignore_index,
                                reduction="none")  # [R, roi, roi]
        return pixel.mean()
