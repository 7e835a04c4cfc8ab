"""Networks and their parts: backbones, necks, heads, assigners, losses, post-processing."""

from lightning_seg.models.parts import PartFactory, build_part
from lightning_seg.models.preprocess import ImagePreprocessor

__all__ = ["ImagePreprocessor", "PartFactory", "build_part"]
