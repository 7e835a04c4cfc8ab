"""Reusable blocks: conv-norm-act, atrous separable conv, ASPP, BatchNorm freezing."""

from lightning_seg.layers.aspp import ASPP, ImagePooling, SummedASPP
from lightning_seg.layers.conv import ConvNormAct, NativeBackwardConv2d, inplace_relu
from lightning_seg.layers.norm import freeze_batchnorm
from lightning_seg.layers.separable import SeparableConv2d

__all__ = [
    "ASPP",
    "ConvNormAct",
    "ImagePooling",
    "NativeBackwardConv2d",
    "SeparableConv2d",
    "SummedASPP",
    "freeze_batchnorm",
    "inplace_relu",
]
