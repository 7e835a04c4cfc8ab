"""Semantic segmentation task: cross-entropy with ignore index, dataset-level mIoU, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lightning_seg.structures import Batch, DatasetInfo, default_palette
from lightning_seg.tasks.base import BaseTask, LRSchedulerCallable, OptimizerCallable, default_optimizer
from lightning_seg.visualize import hstack, overlay_labels, to_numpy, to_uint8_image


class SemanticSegmentationTask(BaseTask):
    """Trains any network mapping ``Tensor[B, 3, H, W]`` to logits ``Tensor[B, K, H, W]``.

    Train: ``loss_ce`` (pixel-wise cross-entropy, ``ignore_index`` excluded, optional class
    weights). Validation/test: mIoU, per-class IoU, pixel accuracy and frequency-weighted IoU
    from a dataset-level confusion matrix (exact under DDP). Predict: per image a
    ``Tensor[H, W]`` label map at the original image size.

    Args:
        model: the segmentation network (FCN, U-Net, DeepLab...).
        num_classes: number of classes K (linked from the DataModule).
        info: dataset facts (linked from the DataModule): default ignore index, class names
            and palette.
        ignore_index: label of void pixels; None takes ``info.ignore_index`` (else 255).
        class_names: names for per-class logging; None takes ``info.class_names``.
        class_weights: optional per-class cross-entropy weights (e.g. median-frequency balancing).
        palette: RGB colour per class for overlays; None takes ``info.palette``.
        optimizer: optimizer callable.
        scheduler: LR scheduler callable.
        scheduler_interval: ``"epoch"`` or ``"step"``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        info: DatasetInfo | None = None,
        ignore_index: int | None = None,
        class_names: list[str] | None = None,
        class_weights: list[float] | None = None,
        palette: list[tuple[int, int, int]] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, scheduler_monitor="val/mIoU")
        self.save_task_hyperparameters()
        from lightning_seg.metrics.semantic import SegmentationMetrics

        self.model = model
        self.num_classes = num_classes
        if info is not None and info.num_classes != num_classes:
            raise ValueError(f"info has {info.num_classes} classes, num_classes is {num_classes}")
        if ignore_index is None:
            ignore_index = info.ignore_index if info is not None else 255
        self.ignore_index = ignore_index
        self.class_names = class_names or (info.class_names if info else [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {num_classes} classes")
        self.palette = palette or (info.palette if info else default_palette(num_classes))
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def loss(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss_ce": ...}`` for logits ``Tensor[B, K, H, W]`` and labels ``Tensor[B, H, W]``."""
        if logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"model output {tuple(logits.shape[-2:])} differs from the label size "
                f"{tuple(target.shape[-2:])}: semantic models must return input-size logits"
            )
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return {"loss_ce": logits.sum() * 0}
        if int(target[valid].max()) >= self.num_classes or int(target[valid].min()) < 0:
            raise ValueError(
                f"label values must be in [0, {self.num_classes - 1}] or {self.ignore_index} "
                f"(ignore); got {int(target[valid].min())}..{int(target[valid].max())}. "
                f"Check the dataset's num_classes / ignore_index."
            )
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        return {"loss_ce": loss}

    def _step(self, batch: Batch, stage: str):
        if batch.semantic is None:
            raise ValueError("the batch has no semantic labels: use a DataModule with task='semantic'")
        logits = self.model(batch.images)
        total = self.log_losses(self.loss(logits, batch.semantic), stage, len(batch))
        return total, logits

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, logits = self._step(batch, "val")
        preds = logits.argmax(1)
        self.val_metrics.update(preds, batch.semantic)
        return preds

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, logits = self._step(batch, "test")
        preds = logits.argmax(1)
        self.test_metrics.update(preds, batch.semantic)
        return preds

    def log_metrics(self, result: dict, stage: str) -> None:
        self.log(f"{stage}/mIoU", result["mIoU"], prog_bar=True)
        self.log(f"{stage}/score", result["mIoU"])
        self.log(f"{stage}/pixel_acc", result["pixel_acc"])
        self.log(f"{stage}/fwIoU", result["fwIoU"])
        for name, iou in zip(self.class_names, result["IoU"].tolist()):
            if not np.isnan(iou):
                self.log(f"{stage}/IoU/{name}", iou)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Tensor]:
        """Per image, ``Tensor[h, w]`` int64 labels at the original image size."""
        logits = self.model(batch.images)
        out = []
        for i, (h, w) in enumerate(batch.image_sizes):
            lg = logits[i : i + 1, :, :h, :w]
            orig = batch.meta[i].orig_size
            if tuple(orig) != (h, w):
                lg = F.interpolate(lg, size=tuple(orig), mode="bilinear", align_corners=False)
            out.append(lg.argmax(1)[0])
        return out

    def render_predictions(self, batch: Batch, outputs: Tensor, max_images: int) -> list[Tensor]:
        """Per image: ``[image | ground truth overlay | prediction overlay]``."""
        pictures = []
        for i in range(min(max_images, len(batch))):
            size = batch.image_sizes[i]
            image = to_uint8_image(batch.images[i], size)
            h, w = size
            panels = [image]
            if batch.semantic is not None:
                panels.append(overlay_labels(image, batch.semantic[i, :h, :w], self.palette, self.ignore_index))
            panels.append(overlay_labels(image, outputs[i, :h, :w], self.palette, self.ignore_index))
            pictures.append(hstack(panels))
        return pictures

    def mask_layers(self, batch: Batch, outputs: Tensor, i: int):
        """Prediction and ground-truth label maps; void pixels get the value ``num_classes``."""
        h, w = batch.image_sizes[i]
        layers = {"prediction": outputs[i, :h, :w].cpu()}
        if batch.semantic is not None:
            gt = batch.semantic[i, :h, :w].cpu().clone()
            gt[gt == self.ignore_index] = self.num_classes
            layers["ground_truth"] = gt
        names = {k: name for k, name in enumerate(self.class_names)} | {self.num_classes: "void"}
        return to_uint8_image(batch.images[i], (h, w)), layers, names

    def write_predictions(self, batch: Batch, outputs: list[Tensor], output_dir: Path) -> None:
        """Write ``labels/<stem>.png`` (class indices) and ``overlays/<stem>.png`` per image."""
        (output_dir / "labels").mkdir(parents=True, exist_ok=True)
        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        for i, labels in enumerate(outputs):
            stem = Path(batch.meta[i].file_name).stem
            arr = labels.cpu().numpy()
            mode_arr = arr.astype(np.uint8) if self.num_classes <= 256 else arr.astype(np.uint16)
            Image.fromarray(mode_arr).save(output_dir / "labels" / f"{stem}.png")
            h, w = batch.image_sizes[i]
            image = to_uint8_image(batch.images[i], (h, w))
            if tuple(labels.shape) != (h, w):
                image = F.interpolate(image[None].float(), size=tuple(labels.shape), mode="bilinear",
                                      align_corners=False)[0].round().to(torch.uint8)
            overlay = overlay_labels(image, labels.cpu(), self.palette, self.ignore_index)
            Image.fromarray(to_numpy(overlay)).save(output_dir / "overlays" / f"{stem}.png")
