"""What every semantic network shares: preprocessing, the loss part and typed predictions.

A semantic network subclasses ``SemanticSegmentor`` and implements ``network_logits``
(normalised images to input-size logits); the base class gives it the contract of every
network in lightning_seg::

    model(batch)  (train mode)  -> {"loss_ce": ...}         the criterion's named terms
    model(batch)  (eval mode)   -> SemanticPredictions      logits + how to map them back
    model.logits(images)        -> Tensor[B, K, H, W]       plain images in [0, 1] to logits
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.losses.semantic import CrossEntropyLoss
from lightning_seg.models.postprocess.sliding_window import sliding_window_logits
from lightning_seg.models.preprocess import ImagePreprocessor
from lightning_seg.structures import Batch, SemanticPredictions
from lightning_seg.structures.dataset_info import require_fact


class SemanticSegmentor(nn.Module, ABC):
    """Base of FCN, U-Net and DeepLab (see the module docstring).

    Args:
        num_classes: K, including background (filled from the dataset).
        ignore_index: label of void pixels (filled from the dataset); used by the default
            criterion.
        criterion: the loss, ``criterion(logits, batch) -> dict`` of weighted terms; None:
            ``CrossEntropyLoss(ignore_index)``. U-Net's border-weighted loss is
            ``BorderWeightedCrossEntropy``.
        preprocessor: normalisation; None: ImageNet mean / std, no extra padding (each network
            pads as its architecture needs).
        inference_window: ``(h, w)`` of sliding-window inference in eval mode (usually the
            training crop): large images are run window by window and the logits averaged
            (``sliding_window_logits``); None runs the whole image at once.
        inference_stride: step between windows; None: two thirds of the window.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        criterion: nn.Module | None = None,
        preprocessor: ImagePreprocessor | None = None,
        inference_window: Sequence[int] | None = None,
        inference_stride: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.inference_window = None if inference_window is None else tuple(inference_window)
        if inference_stride is None and self.inference_window is not None:
            inference_stride = tuple(max(1, 2 * w // 3) for w in self.inference_window)
        self.inference_stride = None if inference_stride is None else tuple(inference_stride)
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        self.ignore_index = 255 if ignore_index is None else ignore_index
        self.criterion = criterion if criterion is not None else CrossEntropyLoss(self.ignore_index)
        self.preprocessor = preprocessor or ImagePreprocessor()

    @abstractmethod
    def network_logits(self, x: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` normalised images -> ``Tensor[B, K, H, W]`` logits."""

    def logits(self, images: Tensor) -> Tensor:
        """``Tensor[B, 3, H, W]`` images in ``[0, 1]`` -> ``Tensor[B, K, H, W]`` logits (the
        whole image at once: ``forward`` in eval mode applies ``inference_window``)."""
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return self.network_logits(self.preprocessor(images, sizes))

    def forward(self, batch: Batch) -> dict[str, Tensor] | SemanticPredictions:
        """Loss terms in training mode, ``SemanticPredictions`` in eval mode."""
        x = self.preprocessor(batch.images, batch.image_sizes)
        if not self.training and self.inference_window is not None:
            logits = sliding_window_logits(self.network_logits, x, self.inference_window,
                                           self.inference_stride, self.num_classes)
        else:
            logits = self.network_logits(x)  # [B, K, H', W'] (H', W': the batch's valid extent)
        h, w = batch.images.shape[-2:]
        if logits.shape[-2:] != (h, w):
            logits = _pad_to(logits, h, w)  # back to the collate's padded frame
        if self.training:
            return self.criterion(logits, batch)
        return SemanticPredictions(logits=logits, image_sizes=list(batch.image_sizes),
                                   orig_sizes=batch.orig_sizes)


def _pad_to(logits: Tensor, h: int, w: int) -> Tensor:
    """Crop or zero-pad ``Tensor[B, K, h', w']`` logits at the bottom/right to ``(h, w)``."""
    logits = logits[..., :h, :w]
    return F.pad(logits, (0, w - logits.shape[-1], 0, h - logits.shape[-2]))
