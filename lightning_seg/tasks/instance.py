"""Instance segmentation task: multi-part detector losses, COCO box / mask / boundary AP, overlays."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lightning_seg.structures import Batch, DatasetInfo, InstancePredictions, InstanceTargets
from lightning_seg.tasks.base import (
    BaseTask,
    LRSchedulerCallable,
    OptimizerCallable,
    default_optimizer,
)
from lightning_seg.visualize import draw_instances, hstack, to_numpy


def rescale_targets(targets: InstanceTargets, size: tuple[int, int]) -> InstanceTargets:
    """Map targets from their image frame to ``size`` (boxes scaled, masks nearest-resized)."""
    h, w = targets.image_size
    if (h, w) == tuple(size):
        return targets
    sy, sx = size[0] / h, size[1] / w
    boxes = targets.boxes * targets.boxes.new_tensor([sx, sy, sx, sy])
    masks = targets.masks
    if masks is not None:
        masks = F.interpolate(masks[None].float(), size=tuple(size), mode="nearest")[0] > 0.5
    keypoints = targets.keypoints
    if keypoints is not None:
        keypoints = keypoints * keypoints.new_tensor([sx, sy, 1.0])
    return InstanceTargets(boxes=boxes, labels=targets.labels, image_size=tuple(size), masks=masks,
                           iscrowd=targets.iscrowd, keypoints=keypoints, track_ids=targets.track_ids)


def _label_map(instances: InstancePredictions | InstanceTargets, score_thresh: float = 0.0) -> Tensor:
    """Paint instance masks into one ``Tensor[H, W]`` class map (class ``c`` -> ``c + 1``)."""
    h, w = instances.image_size
    out = torch.zeros(h, w, dtype=torch.int64)
    if instances.masks is None or len(instances) == 0:
        return out
    scores = getattr(instances, "scores", None)
    order = torch.argsort(scores) if scores is not None else torch.arange(len(instances))
    for j in order.tolist():
        if scores is not None and float(scores[j]) < score_thresh:
            continue
        out[instances.masks[j] > 0.5] = int(instances.labels[j]) + 1
    return out


class InstanceSegmentationTask(BaseTask):
    """Trains an instance segmenter (Mask R-CNN, RefineMask, YOLACT...): loss terms in training,
    ``list[InstancePredictions]`` at the original image size in eval mode.

    Validation predicts at the original image size and scores COCO box / mask AP (and boundary
    AP) against the targets mapped to that size (masks nearest-resized when the validation
    transform resized the image). For numbers equal to the official evaluation, run
    ``lseg predict`` and ``lseg-eval coco`` on the written results JSON and the original
    annotation file.

    Args:
        model: the detector.
        num_classes: K thing classes (filled from the DataModule).
        info: dataset facts (class names, category ids for results files, palette).
        iou_types: COCO evaluation types during validation/test (``bbox``, ``segm``, ``boundary``).
        optimizer: optimizer callable (paper: SGD lr 0.02 momentum 0.9 wd 1e-4 at 16 images).
        scheduler: LR scheduler callable (paper: steps at 8/11 of 12 epochs, ``interval: step``
            with warm-up recommended).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        vis_score_thresh: minimum score drawn in prediction pictures.
        per_class_ap: also log the AP of every class (``val/<type>/AP/<class>``, -1 for a class
            absent from the data; a per-class table in W&B); turn off for datasets with very
            many classes (LVIS).
        max_nonfinite_steps: consecutive non-finite steps that stop the run (``BaseTask``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        info: DatasetInfo | None = None,
        iou_types: tuple[str, ...] = ("bbox", "segm", "boundary"),
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        vis_score_thresh: float = 0.3,
        max_nonfinite_steps: int = 10,
        per_class_ap: bool = True,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, "val/score", max_nonfinite_steps)
        self.save_task_hyperparameters()
        from lightning_seg.metrics.coco import COCOEvaluator

        self.set_class_facts(num_classes, info)
        self.iou_types = tuple(iou_types)
        self.vis_score_thresh = vis_score_thresh
        self.per_class_ap = per_class_ap
        per_class = {"per_class": per_class_ap, "class_names": list(self.info.class_names)}
        self.val_metrics = COCOEvaluator(iou_types=self.iou_types, category_ids=self.info.category_ids, **per_class)
        self.test_metrics = COCOEvaluator(iou_types=self.iou_types, category_ids=self.info.category_ids, **per_class)
        # COCO results per output folder: two prediction writers (the defaults' and a user's) must
        # not share one list, or the second writes an empty file
        self._results: dict[str, list[dict]] = {}

    def update_metrics(self, metric, batch: Batch, predictions: list[InstancePredictions]) -> None:
        if batch.instances is None:
            raise ValueError("the batch has no instance targets: use a DataModule with task='instance'")
        targets = [rescale_targets(t, m.orig_size) for t, m in zip(batch.instances, batch.meta)]
        metric.update(predictions, targets, [m.image_id for m in batch.meta])

    def log_metrics(self, result: dict, stage: str) -> None:
        for key, value in result.items():
            self.log(f"{stage}/{key}", float(value))
        main = "segm/AP" if "segm/AP" in result else "bbox/AP"
        if main in result:
            self.log(f"{stage}/score", float(result[main]), prog_bar=True)

    def render_predictions(self, batch: Batch, outputs: list[InstancePredictions], max_images: int) -> list[Tensor]:
        """Per image: ``[ground truth | prediction]`` drawn on the original-size image."""
        pictures = []
        for i in range(min(max_images, len(batch))):
            pred = outputs[i]
            image = self.original_image(batch, i)
            panels = []
            if batch.instances is not None:
                gt = rescale_targets(batch.instances[i], pred.image_size)
                panels.append(draw_instances(image, gt, self.info.class_names, self.info.palette))
            panels.append(draw_instances(image, pred, self.info.class_names, self.info.palette,
                                         score_thresh=self.vis_score_thresh))
            pictures.append(hstack(panels))
        return pictures

    def mask_layers(self, batch: Batch, outputs: list[InstancePredictions], i: int):
        """Class label maps (0 = background, class ``c`` -> ``c + 1``) of the predictions above
        ``vis_score_thresh`` (higher scores painted last) and of the ground truth."""
        pred = outputs[i].to("cpu")
        layers = {"prediction": _label_map(pred, self.vis_score_thresh)}
        if batch.instances is not None:
            layers["ground_truth"] = _label_map(rescale_targets(batch.instances[i], pred.image_size).to("cpu"))
        names = {0: "background"} | {c + 1: n for c, n in enumerate(self.info.class_names)}
        return self.original_image(batch, i), layers, names

    def write_predictions(self, batch: Batch, outputs: list[InstancePredictions], output_dir: Path) -> None:
        """Write ``overlays/<stem>.png`` and collect COCO results records for ``results.json``."""
        from lightning_seg.metrics.coco import predictions_to_coco_results

        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        image_ids = [m.image_id for m in batch.meta]
        results = self._results.setdefault(str(output_dir), [])
        results.extend(predictions_to_coco_results(outputs, image_ids, self.info.category_ids))
        for i, pred in enumerate(outputs):
            image = self.original_image(batch, i)
            picture = draw_instances(image, pred, self.info.class_names, self.info.palette,
                                     score_thresh=self.vis_score_thresh)
            stem = Path(batch.meta[i].file_name).stem
            Image.fromarray(to_numpy(picture)).save(output_dir / "overlays" / f"{stem}.png")

    def finish_predictions(self, output_dir: Path) -> None:
        """Write the COCO results JSON (``results.json``) gathered over the predict run."""
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(output_dir / "results.json", "w") as f:
            json.dump(self._results.pop(str(output_dir), []), f)
