"""Mask R-CNN mask branch: a small FCN on 14x14 RoI features giving a 28x28 mask per class.

He et al., "Mask R-CNN", ICCV 2017, section 3 and figure 4 (right): RoIAlign 14x14, four
3x3 convs with 256 channels and ReLU, a 2x2 stride-2 deconvolution with ReLU and a 1x1 conv
to ``K`` class masks. The loss is the mean per-pixel sigmoid binary cross-entropy on the
channel of the ground-truth class only (classes do not compete), with targets made by
cropping each positive RoI out of its matched ground-truth mask and resizing it to 28x28 with
RoIAlign (torchvision's ``project_masks_on_boxes``).

The head is its own module, passed to the detector, so that another mask head (RefineMask)
can replace it: its inputs are the features, the RoIs, their class labels and (in training)
the index of the ground-truth instance each RoI is matched to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from lightning_seg.ops.roi_align import MultiLevelRoIAlign, pooled_channels
from lightning_seg.structures import FeatureShapes, InstanceTargets
from lightning_seg.structures.dataset_info import require_fact


@dataclass
class MaskHeadOutput:
    """Raw output of ``MaskRoIHead.forward``.

    Attributes:
        mask_logits: ``Tensor[N, K, M, M]`` per-class mask logits of all RoIs of the batch.
        rois: one ``Tensor[N_i, 4]`` x1y1x2y2 per image (input pixels), in the order of
            ``mask_logits``.
        labels: one ``Tensor[N_i]`` int64 per image, contiguous class ``0..K-1`` of each RoI
            (ground-truth class in training, predicted class at inference).
        matched_idxs: one ``Tensor[N_i]`` int64 per image, index of the ground-truth
            instance (in that image's ``InstanceTargets``) each RoI is matched to; None at
            inference.
    """

    mask_logits: Tensor
    rois: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor] | None = None


def crop_and_resize_masks(
    gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, mask_size: int, aligned: bool = False
) -> Tensor:
    """Crop each RoI out of its matched ground-truth mask and resize it (RoIAlign).

    Args:
        gt_masks: ``Tensor[G, H, W]`` bool/uint8/float masks of one image.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 RoIs in pixels of that image.
        matched_idxs: ``Tensor[N]`` int64 index into ``gt_masks`` of each RoI.
        mask_size: ``M`` of the ``M x M`` targets.
        aligned: half-pixel-correct RoIAlign (detectron2); False equals torchvision's
            ``project_masks_on_boxes``.

    Returns:
        ``Tensor[N, M, M]`` float soft targets in ``[0, 1]``.
    """
    rois = torch.cat([matched_idxs.to(boxes.dtype)[:, None], boxes], dim=1)  # [N, 5]
    masks = gt_masks[:, None].to(rois.dtype)  # [G, 1, H, W]
    # sampling_ratio 0: adaptive (ceil(bin size) samples), as both torchvision and detectron2
    return roi_align(masks, rois, (mask_size, mask_size), 1.0, 0, aligned)[:, 0]


class MaskRoIHead(nn.Module):
    """Mask branch of Mask R-CNN (per-class 28x28 masks from 14x14 RoI features).

    A network receives the head as a callable of its neck's shapes (YAML: ``class_path:
    MaskRoIHead`` with the arguments below except ``input_shape``; ``num_classes`` is filled
    from the dataset).

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck (its ``output_shape()``).
        num_classes: ``K``, number of object classes (no background channel).
        in_features: levels to pool from, finest first (P2..P5; P6 is not pooled).
        pooler_size: RoIAlign output side (14).
        sampling_ratio: RoIAlign bilinear samples per bin side (2).
        aligned: half-pixel-correct RoIAlign for the features (paper); torchvision: False.
        conv_dims: output channels of the 3x3 convs (four of 256).
        target_aligned: half-pixel-correct RoIAlign when cropping the ground-truth masks
            (detectron2); torchvision: False.
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_classes: int | None = None,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        pooler_size: int = 14,
        sampling_ratio: int = 2,
        aligned: bool = True,
        conv_dims: Sequence[int] = (256, 256, 256, 256),
        target_aligned: bool = True,
    ) -> None:
        super().__init__()
        num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        self.num_classes = num_classes
        self.target_aligned = target_aligned
        self.pooler = MultiLevelRoIAlign(
            in_features, {f: s.stride for f, s in input_shape.items()}, pooler_size,
            sampling_ratio, aligned,
        )
        convs = []
        channels = pooled_channels(input_shape, in_features)
        for dim in conv_dims:
            convs += [nn.Conv2d(channels, dim, 3, padding=1), nn.ReLU(inplace=True)]
            channels = dim
        self.convs = nn.Sequential(*convs)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.mask_logits = nn.Conv2d(channels, num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # Detectron's predictor init: logits start near 0 (loss ln 2) instead of torchvision's
        # kaiming init, whose large initial logits give mask losses of several nats
        nn.init.normal_(self.mask_logits.weight, std=0.001)

    @property
    def mask_size(self) -> int:
        """Side ``M`` of the predicted masks (twice the pooler size)."""
        return 2 * self.pooler.output_size

    def forward(
        self,
        features: Mapping[str, Tensor],
        rois: Sequence[Tensor],
        labels: Sequence[Tensor],
        matched_idxs: Sequence[Tensor] | None = None,
    ) -> MaskHeadOutput:
        """Predict per-class mask logits for the given RoIs.

        Args:
            features: pyramid levels by name, ``Tensor[B, C, H_l, W_l]``.
            rois: one ``Tensor[N_i, 4]`` x1y1x2y2 per image: the positive sampled RoIs in
                training, the detected boxes at inference (input pixels).
            labels: one ``Tensor[N_i]`` int64 per image, contiguous classes ``0..K-1``.
            matched_idxs: in training, one ``Tensor[N_i]`` per image: index of the matched
                ground-truth instance.

        Returns:
            ``MaskHeadOutput`` with ``mask_logits`` ``Tensor[sum N_i, K, 2S, 2S]``.
        """
        x = self.pooler(features, rois)  # [N, C, S, S]
        x = self.convs(x)  # [N, 256, S, S]
        x = F.relu(self.deconv(x), inplace=True)  # [N, 256, 2S, 2S]
        return MaskHeadOutput(
            mask_logits=self.mask_logits(x),  # [N, K, 2S, 2S]
            rois=list(rois),
            labels=list(labels),
            matched_idxs=None if matched_idxs is None else list(matched_idxs),
        )

    def loss(self, raw: MaskHeadOutput, targets: Sequence[InstanceTargets]) -> dict[str, Tensor]:
        """Mean per-pixel BCE on the ground-truth class channel of each positive RoI.

        Args:
            raw: output of ``forward`` called with ``matched_idxs``.
            targets: the images' instance targets (``masks`` required).

        Returns:
            ``{"loss_mask": Tensor[]}``; ``mask_logits.sum() * 0`` when there is no RoI.
        """
        if raw.matched_idxs is None:
            raise ValueError("MaskRoIHead.loss needs matched_idxs: call forward with them")
        mask_targets = []
        for target, rois, idxs in zip(targets, raw.rois, raw.matched_idxs):
            if rois.shape[0] == 0:
                continue
            if target.masks is None:
                raise ValueError(
                    "MaskRoIHead.loss needs InstanceTargets.masks; load the dataset with masks"
                )
            mask_targets.append(
                crop_and_resize_masks(
                    target.masks, rois, idxs, raw.mask_logits.shape[-1], self.target_aligned
                )
            )
        if not mask_targets:
            return {"loss_mask": raw.mask_logits.sum() * 0}
        mask_targets = torch.cat(mask_targets, dim=0)  # [N, M, M]
        labels = torch.cat(raw.labels, dim=0)  # [N]
        index = torch.arange(labels.shape[0], device=labels.device)
        logits = raw.mask_logits[index, labels]  # [N, M, M] the GT class channel only
        loss = F.binary_cross_entropy_with_logits(logits.float(), mask_targets.float())
        return {"loss_mask": loss}

    def predict(self, raw: MaskHeadOutput) -> list[Tensor]:
        """Mask probabilities of each RoI's own class.

        Returns:
            one ``Tensor[N_i, 1, M, M]`` float per image (sigmoid of the label's channel).
        """
        labels = torch.cat(raw.labels, dim=0)  # [N]
        index = torch.arange(labels.shape[0], device=labels.device)
        probs = raw.mask_logits[index, labels][:, None].float().sigmoid()  # [N, 1, M, M]
        return list(probs.split([r.shape[0] for r in raw.rois], dim=0))
