"""The DeepLab lineage: v1 "LargeFOV" (Chen et al., "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", ICLR 2015), v2 (Chen et al., "DeepLab: ... Atrous
Convolution, and Fully Connected CRFs", TPAMI 2017), v3 (Chen et al., "Rethinking Atrous
Convolution for Semantic Image Segmentation", 2017) and v3+ (Chen et al., "Encoder-Decoder with
Atrous Separable Convolution", ECCV 2018). The fully connected CRF of v1 / v2 is not included.

v1 LargeFOV: atrous VGG16 (output stride 8: pool4 / pool5 stride 1, conv5 dilated 2), fc6 3x3
with dilation 12 and 1024 channels, fc7 1x1 1024 (both in ``VGGBackbone``), fc8 1x1 to the
classes (``DeepLabV1``). v2: atrous ResNet-101 (output stride 8), ASPP-L: four 3x3 branches at
rates 6 / 12 / 18 / 24 whose class scores are summed (``DeepLabV2``, ``SummedASPP``). Both
upsample the stride-8 scores bilinearly to the input; the papers trained on labels
subsampled by 8 and upsampled only at test time, and v2's multi-scale inputs (MSC) are not
included.

v3: atrous backbone (output stride 16 or 8) -> ASPP -> optional 3x3 convs -> 1x1 classifier ->
bilinear upsampling to the input size. v3+: the ASPP output is upsampled 4x (to the stride-4
feature), concatenated with a 1x1-reduced (48 channels) low-level feature, refined by two 3x3
(separable) convs, classified and upsampled 4x.

Torchvision's ``deeplabv3_resnet50`` is ``DeepLabV3(ResNetBackbone(50, output_stride=8),
aspp_rates=(12, 24, 36), num_head_convs=1, dropout=0.5)``; ``load_torchvision_deeplabv3`` maps
its weights (key table in ``convert_torchvision_deeplabv3_state_dict``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.layers.aspp import ASPP, SummedASPP
from lightning_seg.layers.conv import ConvNormAct, NormLayer
from lightning_seg.layers.separable import SeparableConv2d
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone
from lightning_seg.models.backbones.xception import XceptionBackbone
from lightning_seg.models.detectors.semantic import SemanticSegmentor
from lightning_seg.models.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)



class DeepLabV1(SemanticSegmentor):
    """DeepLab v1: an atrous backbone whose last feature is already a classifier's input (fc7 of
    the LargeFOV VGG16), a ``1x1`` score layer (fc8), logits upsampled bilinearly to the input.

    Args:
        backbone: e.g. ``VGGBackbone(output_stride=8, pool_kernel_size=3, fc6_kernel_size=3,
            fc6_dilation=12, fc_channels=1024, out_features=("fc7",))`` (LargeFOV).
        num_classes: K, including background.
        in_feature: backbone level fed to the score layer (``"fc7"``).
        ignore_index: label of void pixels (filled from the dataset); for the default criterion.
        criterion: the loss part (``SemanticSegmentor``); None: cross-entropy.
        preprocessor: normalisation (``SemanticSegmentor``); None: ImageNet mean / std.
        inference_window, inference_stride: sliding-window inference (``SemanticSegmentor``).

    The score layer is initialised from N(0, 0.01^2) with zero bias, as the paper's fc8.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        in_feature: str = "fc7",
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        if in_feature not in backbone.out_channels:
            raise ValueError(f"backbone has no feature {in_feature!r}; it gives {list(backbone.out_channels)}")
        self.backbone = backbone
        self.in_feature = in_feature
        self.classifier = nn.Conv2d(backbone.out_channels[in_feature], self.num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images -> ``Tensor[B, K, H, W]`` logits."""
        feature = self.backbone(x)[self.in_feature]  # Tensor[B, C, H/8, W/8]
        logits = self.classifier(feature)  # Tensor[B, K, H/8, W/8]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV2(SemanticSegmentor):
    """DeepLab v2: atrous backbone + ASPP whose branches' class scores are summed
    (``SummedASPP``), logits upsampled bilinearly to the input.

    Args:
        backbone: e.g. ``ResNetBackbone(depth=101, output_stride=8, out_features=("c5",))``
            (frozen BatchNorm in the paper, which trains with ImageNet weights and batch 10).
        num_classes: K, including background.
        in_feature: backbone level fed to ASPP (``"c5"`` ResNet, ``"pool5"`` VGG).
        aspp_rates: atrous rates of the branches (ASPP-L: 6, 12, 18, 24; ASPP-S: 2, 4, 8, 12).
        branch_channels: None: each branch is one ``3x3`` conv to the scores (ResNet-101 model);
            1024: fc6 / fc7 / fc8 branches (VGG-16 model).
        dropout: dropout inside fc6 / fc7 branches.
        ignore_index, criterion, preprocessor, inference_window, inference_stride: as
            ``SemanticSegmentor``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        in_feature: str = "c5",
        aspp_rates: Sequence[int] = (6, 12, 18, 24),
        branch_channels: int | None = None,
        dropout: float = 0.5,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        if in_feature not in backbone.out_channels:
            raise ValueError(f"backbone has no feature {in_feature!r}; it gives {list(backbone.out_channels)}")
        self.backbone = backbone
        self.in_feature = in_feature
        self.aspp = SummedASPP(backbone.out_channels[in_feature], self.num_classes, tuple(aspp_rates),
                               branch_channels=branch_channels, dropout=dropout)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images -> ``Tensor[B, K, H, W]`` logits."""
        feature = self.backbone(x)[self.in_feature]  # Tensor[B, C, H/OS, W/OS]
        logits = self.aspp(feature)  # Tensor[B, K, H/OS, W/OS]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _default_rates(stride: int) -> tuple[int, ...]:
    """The paper's ASPP rates: (6, 12, 18) at output stride 16, doubled at 8."""
    return tuple(r * 16 // stride for r in (6, 12, 18))


class DeepLabV3(SemanticSegmentor):
    """DeepLab v3: atrous backbone + ASPP + classifier, logits upsampled to the input size.

    Args:
        backbone: a module with ``out_channels`` / ``strides`` dicts, e.g.
            ``ResNetBackbone(depth=50, output_stride=16, multi_grid=(1, 2, 4), out_features=("c5",))``.
        num_classes: K, including background.
        in_feature: backbone level fed to ASPP (``"c5"`` for ResNet, ``"out"`` for Xception).
        aspp_rates: atrous rates; None gives the paper's (6, 12, 18) at stride 16, scaled by
            ``16 / stride`` (i.e. (12, 24, 36) at output stride 8).
        aspp_channels: channels of the ASPP branches and of the head (256).
        aspp_separable: atrous separable ASPP branches.
        image_pooling: the ASPP image-level branch.
        num_head_convs: extra ``3x3`` conv + BN + ReLU layers after ASPP (0 in the paper,
            1 in torchvision's preset).
        dropout: dropout after the ASPP projection.
        norm_layer: normalisation constructor for ASPP and head.
        ignore_index: label of void pixels (filled from the dataset); for the default criterion.
        criterion: the loss part (``SemanticSegmentor``); None: cross-entropy.
        preprocessor: normalisation (``SemanticSegmentor``); None: ImageNet mean / std.
        inference_window, inference_stride: sliding-window inference (``SemanticSegmentor``).

    Inputs / outputs: the ``SemanticSegmentor`` contract (``model(batch)``; ``model.logits(images)``
    gives ``Tensor[B, K, H, W]`` logits for any H, W).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        in_feature: str = "c5",
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        aspp_separable: bool = False,
        image_pooling: bool = True,
        num_head_convs: int = 0,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        num_classes = self.num_classes
        if in_feature not in backbone.out_channels:
            raise ValueError(f"backbone has no feature {in_feature!r}; it gives {list(backbone.out_channels)}")
        self.backbone = backbone
        self.in_feature = in_feature
        rates = tuple(aspp_rates) if aspp_rates is not None else _default_rates(backbone.strides[in_feature])
        self.aspp = ASPP(
            backbone.out_channels[in_feature],
            aspp_channels,
            rates,
            separable=aspp_separable,
            image_pooling=image_pooling,
            dropout=dropout,
            norm_layer=norm_layer,
        )
        self.head_convs = nn.Sequential(
            *[ConvNormAct(aspp_channels, aspp_channels, 3, norm_layer=norm_layer) for _ in range(num_head_convs)]
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images -> ``Tensor[B, K, H, W]`` logits."""
        feature = self.backbone(x)[self.in_feature]  # Tensor[B, C, H/OS, W/OS]
        logits = self.classifier(self.head_convs(self.aspp(feature)))  # Tensor[B, K, H/OS, W/OS]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3Plus(SemanticSegmentor):
    """DeepLab v3+: DeepLab v3 encoder + a decoder on the stride-4 feature.

    Args:
        backbone: gives ``in_feature`` (stride 16 or 8) and ``low_level_feature`` (stride 4).
        num_classes: K, including background.
        in_feature: backbone level fed to ASPP (``"c5"`` ResNet, ``"out"`` Xception).
        low_level_feature: stride-4 level (``"c2"`` ResNet, ``"low_level"`` Xception).
        low_level_channels: channels of the 1x1 reduction of the low-level feature (48).
        decoder_channels: channels of the ``3x3`` decoder convs (256).
        num_decoder_convs: ``3x3`` decoder convs (2, the paper's best in its Table 2).
        separable: atrous separable convs in ASPP and decoder (the paper's best model).
        aspp_rates: as in ``DeepLabV3`` (None: (6, 12, 18) at stride 16, doubled at 8).
        aspp_channels: ASPP channels (256).
        image_pooling: ASPP image-level branch.
        dropout: dropout after the ASPP projection.
        norm_layer: normalisation constructor.
        ignore_index: label of void pixels (filled from the dataset); for the default criterion.
        criterion: the loss part (``SemanticSegmentor``); None: cross-entropy.
        preprocessor: normalisation (``SemanticSegmentor``); None: ImageNet mean / std.
        inference_window, inference_stride: sliding-window inference (``SemanticSegmentor``).

    Inputs / outputs: the ``SemanticSegmentor`` contract (``model(batch)``; ``model.logits(images)``
    gives ``Tensor[B, K, H, W]`` logits for any H, W).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        in_feature: str = "c5",
        low_level_feature: str = "c2",
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        num_decoder_convs: int = 2,
        separable: bool = True,
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        image_pooling: bool = True,
        dropout: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        num_classes = self.num_classes
        for name in (in_feature, low_level_feature):
            if name not in backbone.out_channels:
                raise ValueError(f"backbone has no feature {name!r}; it gives {list(backbone.out_channels)}")
        self.backbone = backbone
        self.in_feature = in_feature
        self.low_level_feature = low_level_feature
        rates = tuple(aspp_rates) if aspp_rates is not None else _default_rates(backbone.strides[in_feature])
        self.aspp = ASPP(
            backbone.out_channels[in_feature],
            aspp_channels,
            rates,
            separable=separable,
            image_pooling=image_pooling,
            dropout=dropout,
            norm_layer=norm_layer,
        )
        self.low_level_reduce = ConvNormAct(
            backbone.out_channels[low_level_feature], low_level_channels, 1, norm_layer=norm_layer
        )
        if num_decoder_convs < 1:
            raise ValueError(f"num_decoder_convs must be >= 1, got {num_decoder_convs}")
        convs: list[nn.Module] = []
        c_in = aspp_channels + low_level_channels
        for _ in range(num_decoder_convs):
            if separable:
                convs.append(SeparableConv2d(c_in, decoder_channels, 3, norm_layer=norm_layer))
            else:
                convs.append(ConvNormAct(c_in, decoder_channels, 3, norm_layer=norm_layer))
            c_in = decoder_channels
        self.decoder = nn.Sequential(*convs)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images -> ``Tensor[B, K, H, W]`` logits."""
        feats = self.backbone(x)
        low = self.low_level_reduce(feats[self.low_level_feature])  # Tensor[B, 48, H/4, W/4]
        high = self.aspp(feats[self.in_feature])  # Tensor[B, 256, H/OS, W/OS]
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([high, low], dim=1)))  # Tensor[B, K, H/4, W/4]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- torchvision weights


def convert_torchvision_deeplabv3_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename the keys of torchvision's ``deeplabv3_resnet50/101`` to this module's layout.

    =====================================  ==========================================
    torchvision                            ours
    =====================================  ==========================================
    ``backbone.<resnet key>``              ``backbone.<resnet key>`` (same names)
    ``classifier.0.convs.0.{0,1}``         ``aspp.branches.0.{conv,norm}`` (1x1)
    ``classifier.0.convs.{1,2,3}.{0,1}``   ``aspp.branches.{1,2,3}.{conv,norm}`` (atrous)
    ``classifier.0.convs.4.{1,2}``         ``aspp.pooling.conv.{conv,norm}``
    ``classifier.0.project.{0,1}``         ``aspp.project.{conv,norm}``
    ``classifier.{1,2}``                   ``head_convs.0.{conv,norm}``
    ``classifier.4``                       ``classifier``
    ``aux_classifier.*``                   (dropped, returned as ignored)
    =====================================  ==========================================

    Returns:
        ``(converted, ignored)``: the renamed state dict and the keys that have no counterpart.
    """
    converted: dict[str, Tensor] = {}
    ignored: list[str] = []
    conv_norm = {"0": "conv", "1": "norm"}
    for key, value in state_dict.items():
        parts = key.split(".")
        new: str | None = None
        if parts[0] == "backbone":
            new = key
        elif parts[:2] == ["classifier", "0"] and parts[2] == "convs":
            branch, sub, rest = parts[3], parts[4], parts[5:]
            if branch == "4":  # image pooling: 0 = AdaptiveAvgPool2d, 1 = conv, 2 = BN
                new = ".".join(["aspp.pooling.conv", {"1": "conv", "2": "norm"}[sub], *rest])
            else:
                new = ".".join(["aspp.branches", branch, conv_norm[sub], *rest])
        elif parts[:3] == ["classifier", "0", "project"]:
            new = ".".join(["aspp.project", conv_norm[parts[3]], *parts[4:]])
        elif parts[0] == "classifier" and parts[1] in ("1", "2"):
            new = ".".join(["head_convs.0", {"1": "conv", "2": "norm"}[parts[1]], *parts[2:]])
        elif parts[0] == "classifier" and parts[1] == "4":
            new = ".".join(["classifier", *parts[2:]])
        if new is None:
            ignored.append(key)
        else:
            converted[new] = value
    return converted, ignored


@dataclass
class LoadReport:
    """What ``load_torchvision_deeplabv3`` did.

    Attributes:
        loaded: our keys that received a tensor.
        missing: our keys the checkpoint did not provide (kept at their init).
        unexpected: checkpoint keys with no place in our model (e.g. ``aux_classifier.*``).
        shape_mismatch: our keys skipped because shapes differ (e.g. the classifier when
            fine-tuning to another number of classes).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")

        return (
            f"loaded {len(self.loaded)} tensors; missing {len(self.missing)} [{few(self.missing)}]; "
            f"unexpected {len(self.unexpected)} [{few(self.unexpected)}]; "
            f"shape mismatch {len(self.shape_mismatch)} [{few(self.shape_mismatch)}]"
        )


def load_torchvision_deeplabv3(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = False
) -> LoadReport:
    """Load torchvision ``deeplabv3_resnet*`` weights into ``DeepLabV3`` (or the encoder of
    ``DeepLabV3Plus``: backbone and, when shapes agree, ASPP).

    To fine-tune to another number of classes, build the model with the new ``num_classes``:
    the classifier is reported as a shape mismatch and keeps its init. Torchvision's ASPP is
    not separable: with ``aspp_separable=True`` its branches are reported missing.

    Args:
        model: the destination model.
        state_dict: ``torchvision.models.segmentation.deeplabv3_resnet50(...).state_dict()`` or
            a downloaded checkpoint of it.
        strict: raise ``KeyError`` (with the summary) unless every key of ``model`` was loaded.

    Returns:
        A ``LoadReport`` (also logged at warning level when anything is missing or mismatched).
    """
    converted, ignored = convert_torchvision_deeplabv3_state_dict(state_dict)
    own = model.state_dict()
    report = LoadReport(unexpected=list(ignored))
    to_load: dict[str, Tensor] = {}
    for key, value in converted.items():
        if key not in own:
            if not key.endswith("num_batches_tracked"):
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append(key)
        else:
            to_load[key] = value
    report.loaded = sorted(to_load)
    report.missing = sorted(
        k for k in own if k not in to_load and k not in report.shape_mismatch and not k.endswith("num_batches_tracked")
    )
    if strict and (report.missing or report.shape_mismatch or report.unexpected):
        raise KeyError(f"torchvision DeepLabV3 checkpoint does not match the model: {report.summary()}")
    model.load_state_dict(to_load, strict=False)
    if report.missing or report.shape_mismatch or report.unexpected:
        log.warning("load_torchvision_deeplabv3: %s", report.summary())
    return report


# --------------------------------------------------------------------------- builders


def deeplabv1_largefov_vgg16(num_classes: int, weights: str | None = None) -> DeepLabV1:
    """DeepLab v1 LargeFOV as in the paper: VGG16 at output stride 8 (3x3 poolings, pool4 /
    pool5 stride 1, conv5 dilated 2), fc6 3x3 dilation 12 with 1024 channels, fc7 1x1 1024
    (ImageNet fc6 / fc7 decimated into them when ``weights`` is given), fc8 to the classes.

    Args:
        num_classes: K including background.
        weights: torchvision ``VGG16_Weights`` member name (``"IMAGENET1K_V1"``) or None.
    """
    backbone = VGGBackbone(
        out_features=("fc7",), output_stride=8, pool_kernel_size=3, fc6_kernel_size=3,
        fc6_dilation=12, fc_channels=1024, weights=weights,
    )
    return DeepLabV1(backbone, num_classes)


def deeplabv2_resnet101(num_classes: int, weights_backbone: str | None = None, frozen_bn: bool = True) -> DeepLabV2:
    """DeepLab v2 ResNet-101 with ASPP-L (rates 6, 12, 18, 24), output stride 8 (every res5 block
    at rate 4), frozen BN.

    Args:
        num_classes: K including background.
        weights_backbone: torchvision ``ResNet101_Weights`` member name or None.
        frozen_bn: freeze the backbone's BatchNorm (the paper; turn off from scratch).
    """
    backbone = ResNetBackbone(depth=101, weights=weights_backbone, out_features=("c5",), output_stride=8,
                              multi_grid=(1, 1, 1), frozen_bn=frozen_bn)
    return DeepLabV2(backbone, num_classes)


def deeplabv3_resnet50(
    num_classes: int, output_stride: int = 16, weights_backbone: str | None = None, frozen_bn: bool = False
) -> DeepLabV3:
    """DeepLab v3 on ResNet-50 as in the paper: multi-grid (1, 2, 4), rates (6, 12, 18) at
    output stride 16 (doubled at 8), no extra head conv.

    Args:
        num_classes: K including background.
        output_stride: 16 (training in the paper) or 8.
        weights_backbone: torchvision ``ResNet50_Weights`` member name (``"IMAGENET1K_V1"``) or None.
        frozen_bn: freeze the backbone's BatchNorm.
    """
    backbone = ResNetBackbone(
        depth=50,
        weights=weights_backbone,
        out_features=("c5",),
        output_stride=output_stride,
        multi_grid=(1, 2, 4),
        frozen_bn=frozen_bn,
    )
    return DeepLabV3(backbone, num_classes)


def deeplabv3plus_resnet50(
    num_classes: int,
    output_stride: int = 16,
    weights_backbone: str | None = None,
    separable: bool = True,
    frozen_bn: bool = False,
) -> DeepLabV3Plus:
    """DeepLab v3+ on ResNet-50 (c2 low-level feature, multi-grid (1, 2, 4))."""
    backbone = ResNetBackbone(
        depth=50,
        weights=weights_backbone,
        out_features=("c2", "c5"),
        output_stride=output_stride,
        multi_grid=(1, 2, 4),
        frozen_bn=frozen_bn,
    )
    return DeepLabV3Plus(backbone, num_classes, in_feature="c5", low_level_feature="c2", separable=separable)


def deeplabv3plus_xception(
    num_classes: int,
    output_stride: int = 16,
    middle_repeats: int = 16,
    width_multiplier: float = 1.0,
    weights_path: str | None = None,
) -> DeepLabV3Plus:
    """DeepLab v3+ on aligned Xception-65 (the paper's best model), separable ASPP and decoder."""
    backbone = XceptionBackbone(
        output_stride=output_stride,
        middle_repeats=middle_repeats,
        width_multiplier=width_multiplier,
        weights_path=weights_path,
    )
    return DeepLabV3Plus(backbone, num_classes, in_feature="out", low_level_feature="low_level", separable=True)
