"""Fully Convolutional Networks (Long, Shelhamer and Darrell, CVPR 2015): FCN-32s / 16s / 8s
with the real skip architecture.

Wiring (FCN-8s): ``score_fr`` (1x1 on fc7) -> ``upscore2`` (2x, transposed conv, bilinear init,
learned) + ``score_pool4`` (1x1 on pool4, zero-init) -> ``upscore_pool4`` (2x) + ``score_pool3``
(1x1 on pool3, zero-init) -> ``upscore`` (8x, transposed conv fixed to bilinear). FCN-16s stops
after the pool4 fusion and upsamples 16x; FCN-32s upsamples ``score_fr`` 32x.

Alignment: the backbone uses "same" padding (conv1_1 pad 1 instead of the Caffe model's 100),
so when the input is a multiple of 32 every map is exactly 2x the next one and no crop offsets
are needed; ``forward`` pads the (normalised) input with zeros at the bottom/right to the next
multiple of ``size_divisibility`` and crops the logits back to the input size. A transposed
conv with kernel ``2f``, stride ``f`` and padding ``f / 2`` initialised bilinearly equals
``F.interpolate(..., align_corners=False)`` away from the border.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone
from lightning_seg.models.detectors.semantic import SemanticSegmentor
from lightning_seg.models.preprocess import ImagePreprocessor

_VARIANTS = {"32s": 32, "16s": 16, "8s": 8}


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights of a transposed conv doing per-channel bilinear upsampling.

    Returns:
        ``Tensor[channels, channels, k, k]``: a bilinear filter on the diagonal, zeros elsewhere
        (classes do not mix), as FCN's ``upsample_filt``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]  # Tensor[k, k]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt
    return weight


def bilinear_upsample_layer(channels: int, factor: int, trainable: bool = True) -> nn.ConvTranspose2d:
    """``ConvTranspose2d(kernel 2f, stride f, padding f/2)`` initialised to bilinear upsampling.

    Shapes:
        ``Tensor[B, C, H, W] -> Tensor[B, C, f * H, f * W]`` for even ``factor`` (and 2).
    """
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, 2 * factor))
    layer.weight.requires_grad_(trainable)
    return layer


class FCN(SemanticSegmentor):
    """FCN-32s / 16s / 8s on any backbone that gives stride-8, 16 and 32 features.

    Args:
        backbone: e.g. ``VGGBackbone(out_features=("pool3", "pool4", "fc7"))`` or
            ``ResNetBackbone(out_features=("c3", "c4", "c5"))``.
        num_classes: K, including background.
        variant: ``"32s"``, ``"16s"`` or ``"8s"`` (how many skips are fused).
        in_features: names of the stride-8, stride-16 and stride-32 features
            (``("pool3", "pool4", "fc7")`` for VGG, ``("c3", "c4", "c5")`` for ResNet).
        score_init_std: std of the normal init of ``score_fr``; 0 zero-initialises it as the
            paper does.
        pool4_scale: multiplier of pool4 before its score layer (1 for the paper's staged
            training; the "at-once" reference model uses 0.01).
        pool3_scale: same for pool3 (0.0001 in the "at-once" model).
        trainable_final_upsample: learn the last upsampling (the paper fixes it to bilinear;
            the 2x upsamplings are initialised bilinear and learned).
        size_divisibility: inputs are zero-padded to a multiple of this (the largest stride).
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
        variant: str = "8s",
        in_features: Sequence[str] = ("pool3", "pool4", "fc7"),
        score_init_std: float = 0.0,
        pool4_scale: float = 1.0,
        pool3_scale: float = 1.0,
        trainable_final_upsample: bool = False,
        size_divisibility: int = 32,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, criterion, preprocessor, inference_window,
                         inference_stride)
        num_classes = self.num_classes
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {list(_VARIANTS)}, got {variant!r}")
        in_features = tuple(in_features)
        if len(in_features) != 3:
            raise ValueError(f"in_features needs the stride-8, 16 and 32 feature names, got {in_features}")
        strides = [backbone.strides.get(f) for f in in_features]
        if strides != [8, 16, 32]:
            raise ValueError(
                f"FCN needs features at strides 8, 16, 32; backbone gives {dict(zip(in_features, strides))} "
                f"(a ResNet backbone must have output_stride=32 and out_features containing c3, c4, c5)"
            )
        self.backbone = backbone
        self.variant = variant
        self.in_features = in_features
        self.pool4_scale = pool4_scale
        self.pool3_scale = pool3_scale
        self.size_divisibility = size_divisibility
        k = num_classes
        c3, c4, c5 = (backbone.out_channels[f] for f in in_features)

        self.score_fr = nn.Conv2d(c5, k, 1)
        _init_score(self.score_fr, score_init_std)
        final_factor = _VARIANTS[variant]
        self.upscore2: nn.Module | None = None
        self.score_pool4: nn.Module | None = None
        self.upscore_pool4: nn.Module | None = None
        self.score_pool3: nn.Module | None = None
        if final_factor <= 16:
            self.upscore2 = bilinear_upsample_layer(k, 2)
            self.score_pool4 = nn.Conv2d(c4, k, 1)
            _init_score(self.score_pool4, 0.0)
        if final_factor <= 8:
            self.upscore_pool4 = bilinear_upsample_layer(k, 2)
            self.score_pool3 = nn.Conv2d(c3, k, 1)
            _init_score(self.score_pool3, 0.0)
        self.upscore = bilinear_upsample_layer(k, final_factor, trainable=trainable_final_upsample)

    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images (any H, W) -> ``Tensor[B, K, H, W]`` logits."""
        h, w = x.shape[-2:]
        d = self.size_divisibility
        ph, pw = (d - h % d) % d, (d - w % d) % d
        x = F.pad(x, (0, pw, 0, ph))
        feats = self.backbone(x)
        f3, f4, f5 = (feats[n] for n in self.in_features)
        score = self.score_fr(f5)  # Tensor[B, K, H/32, W/32]
        if self.upscore2 is not None and self.score_pool4 is not None:
            score = self.upscore2(score) + self.score_pool4(f4 * self.pool4_scale)  # Tensor[B, K, H/16, W/16]
        if self.upscore_pool4 is not None and self.score_pool3 is not None:
            score = self.upscore_pool4(score) + self.score_pool3(f3 * self.pool3_scale)  # Tensor[B, K, H/8, W/8]
        score = self.upscore(score)  # Tensor[B, K, H + ph, W + pw]
        return score[:, :, :h, :w]


def _init_score(conv: nn.Conv2d, std: float) -> None:
    if std > 0:
        nn.init.normal_(conv.weight, std=std)
    else:
        nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def fcn8s_vgg16(num_classes: int, weights: str | None = None, variant: str = "8s") -> FCN:
    """FCN-8s (or ``variant`` 16s / 32s) with the paper's VGG16 (fc6/fc7 4096 wide).

    Args:
        num_classes: K including background.
        weights: torchvision ``VGG16_Weights`` member name for the backbone
            (``"IMAGENET1K_V1"``), or None for random init.
        variant: ``"8s"``, ``"16s"`` or ``"32s"``.
    """
    backbone = VGGBackbone(out_features=("pool3", "pool4", "fc7"), weights=weights)
    return FCN(backbone, num_classes, variant=variant)


def fcn8s_resnet50(num_classes: int, weights_backbone: str | None = None, variant: str = "8s") -> FCN:
    """FCN-8s on ResNet-50 c3 / c4 / c5 (the ResNet option)."""
    backbone = ResNetBackbone(depth=50, weights=weights_backbone, out_features=("c3", "c4", "c5"))
    return FCN(backbone, num_classes, variant=variant, in_features=("c3", "c4", "c5"), score_init_std=0.0)
