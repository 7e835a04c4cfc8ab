"""RefineMask's semantic head: fine-grained features and a foreground mask on P2.

Zhang et al., "RefineMask: Towards High-Quality Instance Segmentation with Fine-Grained
Features", CVPR 2021, section 3.1. Official implementation: zhanggang001/RefineMask @ 633ed2b
(``RefineMaskHead.semantic_convs`` / ``semantic_logits`` and ``RefineRoIHead``): on the finest
pyramid level (P2, stride 4), four 3x3 convolutions with 256 channels and ReLU (no norm) give the
fine-grained semantic features; a 1x1 convolution gives **one** class-agnostic foreground logit
per pixel. Its target is the union of the image's ground-truth instance masks, zero-padded like
the batch and resized bilinearly to the feature map (``>= 0.5``); the loss is the mean binary
cross-entropy over the padded map, weight 1.

It is a ``MaskRCNN`` part (``semantic_head``): ``MaskRCNN`` runs it on the pyramid, adds its loss
terms and hands its output to the mask head (``RefineMaskHead``) as ``semantic=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.structures import Batch, FeatureShapes


@dataclass
class SemanticHeadOutput:
    """Raw output of ``ForegroundSemanticHead.forward``.

    Attributes:
        features: ``Tensor[B, C, H_s, W_s]`` fine-grained semantic features.
        logits: ``Tensor[B, 1, H_s, W_s]`` foreground logits, or None for a head without them
            (RefineMask's "faster-better" variant).
        stride: input pixels per feature pixel (4 on P2).
    """

    features: Tensor
    logits: Tensor | None
    stride: int


def foreground_target(batch: Batch, size: tuple[int, int], stride: int, thresh: float = 0.5) -> Tensor:
    """Union of each image's non-crowd instance masks, at the resolution of a feature map.

    The union is placed at the top left of a zero canvas of ``size * stride`` pixels (the
    padded input), resized bilinearly (``align_corners=False``) to ``size`` and thresholded, as
    the official ``RefineRoIHead._mask_forward_train`` does.

    Args:
        batch: a batch whose ``instances`` have masks.
        size: ``(H_s, W_s)`` of the feature map.
        stride: input pixels per feature pixel.
        thresh: a resized value ``>= thresh`` is foreground.

    Returns:
        ``Tensor[B, H_s, W_s]`` float32 in ``{0, 1}``.
    """
    if batch.instances is None:
        raise ValueError("the semantic head's loss needs batch.instances (task='instance' data)")
    height, width = size[0] * stride, size[1] * stride
    canvas = batch.images.new_zeros(len(batch), 1, height, width)  # [B, 1, H, W]
    for i, target in enumerate(batch.instances):
        if len(target) == 0:
            continue
        if target.masks is None:
            raise ValueError(
                "ForegroundSemanticHead.loss needs InstanceTargets.masks; load the dataset with masks"
            )
        keep = ~target.iscrowd.to(target.masks.device)
        union = target.masks[keep].any(dim=0)  # [h, w]
        h, w = min(union.shape[0], height), min(union.shape[1], width)
        canvas[i, 0, :h, :w] = union[:h, :w].to(canvas.dtype)
    resized = F.interpolate(canvas, size=tuple(size), mode="bilinear", align_corners=False)
    return (resized[:, 0] >= thresh).to(torch.float32)  # [B, H_s, W_s]


class ForegroundSemanticHead(nn.Module):
    """Fine-grained semantic features and class-agnostic foreground logits on one level.

    A network receives the head as a callable of its neck's shapes (YAML: ``class_path:
    ForegroundSemanticHead`` with the arguments below except ``input_shape``).

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck (its ``output_shape()``).
        in_feature: the level it runs on (P2, the finest).
        num_convs: 3x3 convolutions (4).
        conv_dim: their channels (256), the channels of ``SemanticHeadOutput.features``.
        with_logits: predict the foreground map and train it (official); False is the
            "faster-better" variant (features only, no semantic loss).
        loss_weight: weight of ``loss_semantic`` (1.0).
        target_thresh: the resized union of masks is foreground where ``>= target_thresh``.
        logits_init_std: None: kaiming-normal init of the logits conv (official, as every conv
            here; initial logits of several units); a number: normal init with that std.
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        in_feature: str = "p2",
        num_convs: int = 4,
        conv_dim: int = 256,
        with_logits: bool = True,
        loss_weight: float = 1.0,
        target_thresh: float = 0.5,
        logits_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if in_feature not in input_shape:
            raise ValueError(
                f"ForegroundSemanticHead in_feature {in_feature!r} is not among the neck's levels "
                f"{list(input_shape)}"
            )
        self.in_feature = in_feature
        self.stride = int(input_shape[in_feature].stride)
        self.conv_dim = conv_dim
        self.loss_weight = loss_weight
        self.target_thresh = target_thresh
        layers: list[nn.Module] = []
        channels = input_shape[in_feature].channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            channels = conv_dim
        self.convs = nn.Sequential(*layers)
        self.logits = nn.Conv2d(channels, 1, 1) if with_logits else None
        for module in self.modules():  # official: kaiming normal (fan_out), zero bias
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if logits_init_std is not None and self.logits is not None:
            nn.init.normal_(self.logits.weight, std=logits_init_std)

    @property
    def out_channels(self) -> int:
        return self.conv_dim

    def forward(self, features: Mapping[str, Tensor]) -> SemanticHeadOutput:
        """Run on ``features[in_feature]`` (``Tensor[B, C, H_s, W_s]``)."""
        x = self.convs(features[self.in_feature])  # [B, conv_dim, H_s, W_s]
        logits = None if self.logits is None else self.logits(x)  # [B, 1, H_s, W_s]
        return SemanticHeadOutput(features=x, logits=logits, stride=self.stride)

    def loss(self, raw: SemanticHeadOutput, batch: Batch) -> dict[str, Tensor]:
        """Mean BCE of the foreground logits against the union of the instance masks.

        Returns:
            ``{"loss_semantic": Tensor[]}``, or ``{}`` for a head without logits.
        """
        if raw.logits is None:
            return {}
        target = foreground_target(batch, tuple(raw.logits.shape[-2:]), raw.stride,
                                   self.target_thresh)
        loss = F.binary_cross_entropy_with_logits(raw.logits[:, 0].float(), target.to(raw.logits.device))
        return {"loss_semantic": self.loss_weight * loss}
