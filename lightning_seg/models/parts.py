"""How networks receive their parts: as callables of the shapes of the features they consume.

A network builds its backbone first, then each later part from the shapes of what feeds it
(``output_shape()``: ``{level: ShapeSpec(channels, stride)}``), so channels and strides are never
typed twice. In a YAML a part is its ``class_path`` with every argument but ``input_shape``
(LightningCLI turns it into a callable); dataset facts such as ``num_classes`` are filled from
the DataModule. In Python pass the class, a ``functools.partial`` of it, or a built module.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_seg.structures.specs import FeatureShapes

PartFactory = Callable[[FeatureShapes], nn.Module]


def build_part(part: PartFactory | nn.Module, input_shape: FeatureShapes) -> nn.Module:
    """``part`` itself when it is already a module, else ``part(input_shape)``."""
    return part if isinstance(part, nn.Module) else part(input_shape)
