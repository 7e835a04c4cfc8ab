"""Normalisation helpers: freezing BatchNorm layers for fine-tuning with small batches."""

from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by ``FrozenBatchNorm2d`` (in place).

    Statistics and affine parameters are copied, so outputs in eval mode do not change; the
    frozen layers keep the same state-dict keys (minus ``num_batches_tracked``, which
    ``FrozenBatchNorm2d`` drops on load). Detectron2 does the same for frozen stages.

    Args:
        module: the module to convert; a bare ``nn.BatchNorm2d`` is returned converted.

    Returns:
        The converted module (the same object unless ``module`` itself was a BatchNorm).
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats and module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
