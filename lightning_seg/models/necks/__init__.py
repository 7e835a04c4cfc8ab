"""Necks: built from their backbone's shapes, they expose ``output_shape()`` in turn."""

from lightning_seg.models.necks.fpn import FPN

__all__ = ["FPN"]
