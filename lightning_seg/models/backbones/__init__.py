"""Backbones: each exposes ``output_shape()`` (channels and stride per level) and returns a
feature dict."""

from lightning_seg.models.backbones.hourglass import HourglassBackbone
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.backbones.vgg import VGGBackbone
from lightning_seg.models.backbones.xception import XceptionBackbone

__all__ = ["HourglassBackbone", "ResNetBackbone", "VGGBackbone", "XceptionBackbone"]
