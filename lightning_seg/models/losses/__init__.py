"""Losses: modules and functions returning ``dict[str, Tensor]`` of named, weighted terms."""

from lightning_seg.models.losses.semantic import BorderWeightedCrossEntropy, CrossEntropyLoss

__all__ = ["BorderWeightedCrossEntropy", "CrossEntropyLoss"]
