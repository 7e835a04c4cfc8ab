"""Losses of semantic networks: each returns a dict of named, already-weighted terms.

A semantic network calls ``criterion(logits, batch)`` in training; swapping the loss (class
weights, U-Net's border weights) is a YAML change of the network's ``criterion``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.losses.unet_weight_map import unet_weight_map
from lightning_seg.structures import Batch


def _check_labels(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Bool mask of the labelled pixels; a clear error for labels outside ``0..K-1``."""
    valid = target != ignore_index
    if bool(valid.any()):
        lo, hi = int(target[valid].min()), int(target[valid].max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"label values must be in [0, {num_classes - 1}] or {ignore_index} (ignore); got "
                f"{lo}..{hi}. Check the dataset's num_classes / ignore_index."
            )
    return valid


class CrossEntropyLoss(nn.Module):
    """Pixel-wise softmax cross-entropy over the labelled pixels: ``{"loss_ce": ...}``.

    Args:
        ignore_index: label of void pixels (filled from the dataset).
        class_weights: optional per-class weights (e.g. median-frequency balancing).
        loss_weight: multiplier of the term.
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.ignore_index = 255 if ignore_index is None else int(ignore_index)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)
        self.loss_weight = loss_weight

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Args:
            logits: ``Tensor[B, K, H, W]`` in the frame of ``batch.semantic``.
            batch: its ``semantic`` labels ``Tensor[B, H, W]``.
        """
        target = self._target(logits, batch)
        valid = _check_labels(target, logits.shape[1], self.ignore_index)
        if self.class_weights is not None and self.class_weights.numel() != logits.shape[1]:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} entries for {logits.shape[1]} classes"
            )
        if not bool(valid.any()):
            return {"loss_ce": logits.sum() * 0}
        loss = F.cross_entropy(logits.float(), target, weight=self.class_weights,
                               ignore_index=self.ignore_index)
        return {"loss_ce": loss * self.loss_weight}

    @staticmethod
    def _target(logits: Tensor, batch: Batch) -> Tensor:
        if batch.semantic is None:
            raise ValueError("the batch has no semantic labels: use a DataModule with task='semantic'")
        if logits.shape[-2:] != batch.semantic.shape[-2:]:
            raise ValueError(
                f"logits {tuple(logits.shape[-2:])} differ from the label size "
                f"{tuple(batch.semantic.shape[-2:])}: semantic networks must return input-size logits"
            )
        return batch.semantic


def connected_components(mask: Tensor, max_iters: int = 10_000) -> Tensor:
    """4-connected components of a bool map by iterative label propagation.

    Args:
        mask: ``Tensor[H, W]`` bool.

    Returns:
        ``Tensor[H, W]`` int64: 0 outside ``mask``, one id > 0 per component (ids are not
        consecutive).
    """
    h, w = mask.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32, device=mask.device).view(1, 1, h, w)
    labels = labels * mask
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool, device=mask.device)
    for _ in range(max_iters):
        padded = F.pad(labels, (1, 1, 1, 1))
        windows = F.unfold(padded, 3)[:, cross.flatten()]  # [1, 5, H*W]
        grown = windows.amax(dim=1).view(1, 1, h, w) * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[0, 0].to(torch.int64)


class BorderWeightedCrossEntropy(CrossEntropyLoss):
    """U-Net's weighted cross-entropy (Ronneberger et al., MICCAI 2015, eq. 1-2).

    Each pixel's loss is multiplied by ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``
    (``unet_weight_map``), which gives the thin background gaps between touching objects a large
    weight. Objects come from ``batch.instances`` masks when the batch has them, else from the
    4-connected components of ``object_classes`` in the label map. The map is computed per
    image on the fly (brute-force distances: meant for the paper's small cell images; precompute
    offline for large ones). The sum of weighted pixel losses is divided by the sum of weights.

    Args:
        ignore_index: label of void pixels (filled from the dataset).
        class_weights: optional per-class weights, multiplied in.
        loss_weight: multiplier of the term.
        w0: border weight (10 in the paper).
        sigma: border width in pixels (about 5 in the paper).
        balance_classes: the ``w_c`` term (inverse foreground / background frequency).
        object_classes: classes whose connected regions are objects; None: the dataset's thing
            classes when it has stuff classes too, else every class but 0 (the paper's cells on
            background).
        thing_classes: the dataset's thing classes (filled from the dataset).
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        loss_weight: float = 1.0,
        w0: float = 10.0,
        sigma: float = 5.0,
        balance_classes: bool = True,
        object_classes: Sequence[int] | None = None,
        thing_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(ignore_index, class_weights, loss_weight)
        self.thing_classes = None if thing_classes is None else [int(c) for c in thing_classes]
        self.w0 = w0
        self.sigma = sigma
        self.balance_classes = balance_classes
        self.object_classes = None if object_classes is None else [int(c) for c in object_classes]

    def instance_map(self, batch: Batch, i: int, num_classes: int) -> Tensor:
        """``Tensor[H, W]`` int64 object ids (0 background) of image ``i`` in the batch frame."""
        h_pad, w_pad = batch.semantic.shape[-2:]
        out = torch.zeros(h_pad, w_pad, dtype=torch.int64, device=batch.semantic.device)
        if batch.instances is not None and batch.instances[i].masks is not None:
            masks = batch.instances[i].masks
            h, w = masks.shape[-2:]
            for k in range(masks.shape[0]):
                out[:h, :w][masks[k].to(out.device)] = k + 1
            return out
        labels = batch.semantic[i]
        classes = self.object_classes
        if classes is None and self.thing_classes is not None and len(self.thing_classes) < num_classes:
            classes = self.thing_classes
        if classes is None:
            classes = list(range(1, num_classes))
        offset = 0
        for c in classes:
            comp = connected_components(labels == c)
            out = torch.where(comp > 0, comp + offset, out)
            offset += labels.numel()
        return out

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        target = self._target(logits, batch)
        valid = _check_labels(target, logits.shape[1], self.ignore_index)
        if not bool(valid.any()):
            return {"loss_ce": logits.sum() * 0}
        pixel = F.cross_entropy(logits.float(), target, weight=self.class_weights,
                                ignore_index=self.ignore_index, reduction="none")  # [B, H, W]
        with torch.no_grad():
            weights = torch.stack([
                unet_weight_map(self.instance_map(batch, i, logits.shape[1]), self.w0, self.sigma,
                                self.balance_classes).to(pixel.device)
                for i in range(logits.shape[0])
            ]) * valid  # [B, H, W]
        loss = (pixel * weights).sum() / weights.sum().clamp(min=1e-12)
        return {"loss_ce": loss * self.loss_weight}
