"""What a feature map is, as data: heads are built from the shapes of their inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (w.r.t. the input image) of one feature level.

    Backbones and necks report one per output level (``output_shape()``); necks and heads take
    that mapping as their first argument, so a YAML never repeats channels or strides.
    """

    channels: int
    stride: int


FeatureShapes = Mapping[str, ShapeSpec]


def feature_shapes(channels: Mapping[str, int], strides: Mapping[str, int]) -> dict[str, ShapeSpec]:
    """``{level: ShapeSpec}`` from a module's ``out_channels`` and ``strides`` dicts."""
    if list(channels) != list(strides):
        raise ValueError(f"levels differ: channels {list(channels)}, strides {list(strides)}")
    return {name: ShapeSpec(int(channels[name]), int(strides[name])) for name in channels}


class FeatureShapesMixin:
    """``output_shape()`` for modules that set ``out_channels`` and ``strides`` dicts."""

    out_channels: dict[str, int]
    strides: dict[str, int]

    def output_shape(self) -> dict[str, ShapeSpec]:
        """``{level: ShapeSpec(channels, stride)}`` of every output level, finest first."""
        return feature_shapes(self.out_channels, self.strides)
