"""Semantic segmentation task: dataset-level mIoU, overlays, label PNGs (the loss is the network's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lightning_seg.structures import Batch, DatasetInfo, SemanticPredictions
from lightning_seg.tasks.base import (
    BaseTask,
    LRSchedulerCallable,
    OptimizerCallable,
    default_optimizer,
)
from lightning_seg.visualize import hstack, overlay_labels, to_numpy, to_uint8_image


class SemanticSegmentationTask(BaseTask):
    """Trains any semantic network (``SemanticSegmentor`` contract: loss terms in training,
    ``SemanticPredictions`` in eval).

    Validation/test: mIoU, per-class IoU, pixel accuracy and frequency-weighted IoU from a
    dataset-level confusion matrix (exact under DDP), in the frame of the batch's label maps.
    Predict: per image a ``Tensor[H, W]`` label map at the original image size.

    Args:
        model: the segmentation network (FCN, U-Net, DeepLab...).
        num_classes: number of classes K (filled from the DataModule).
        info: dataset facts (filled from the DataModule): ignore index, class names, palette.
        optimizer: optimizer callable.
        scheduler: LR scheduler callable.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        max_nonfinite_steps: consecutive non-finite steps that stop the run (``BaseTask``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        info: DatasetInfo | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, "val/mIoU", max_nonfinite_steps)
        self.save_task_hyperparameters()
        from lightning_seg.metrics.semantic import SegmentationMetrics

        self.set_class_facts(num_classes, info)
        num_classes = self.num_classes
        self.ignore_index = self.info.ignore_index
        self.class_names = list(self.info.class_names)
        self.palette = self.info.palette
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index=self.ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index=self.ignore_index)

    def update_metrics(self, metric, batch: Batch, predictions: SemanticPredictions) -> None:
        if batch.semantic is None:
            raise ValueError("the batch has no semantic labels: use a DataModule with task='semantic'")
        metric.update(predictions.labels(), batch.semantic)

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
        predictions = self.model(batch)
        return [predictions.original(i) for i in range(len(batch))]

    def render_predictions(self, batch: Batch, outputs: SemanticPredictions, max_images: int) -> list[Tensor]:
        """Per image: ``[image | ground truth overlay | prediction overlay]``."""
        labels = outputs.labels()
        pictures = []
        for i in range(min(max_images, len(batch))):
            size = batch.image_sizes[i]
            image = to_uint8_image(batch.images[i], size)
            h, w = size
            panels = [image]
            if batch.semantic is not None:
                panels.append(overlay_labels(image, batch.semantic[i, :h, :w], self.palette, self.ignore_index))
            panels.append(overlay_labels(image, labels[i, :h, :w], self.palette, self.ignore_index))
            pictures.append(hstack(panels))
        return pictures

    def mask_layers(self, batch: Batch, outputs: SemanticPredictions, i: int):
        """Prediction and ground-truth label maps; void pixels get the value ``num_classes``."""
        h, w = batch.image_sizes[i]
        layers = {"prediction": outputs.labels()[i, :h, :w].cpu()}
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
