"""Panoptic segmentation task: PQ / SQ / RQ in validation, panoptic pictures, COCO panoptic files.

Any network with the panoptic contract trains here (loss terms in training,
``list[PanopticPredictions]`` at the original image size in eval mode): UPSNet, and VPSNet's
per-frame outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from lightning_seg.structures import Batch, DatasetInfo, PanopticPredictions, PanopticTargets
from lightning_seg.tasks.base import (
    BaseTask,
    LRSchedulerCallable,
    OptimizerCallable,
    default_optimizer,
)
from lightning_seg.visualize import (
    draw_panoptic,
    hstack,
    panoptic_legend,
    to_numpy,
    vstack,
)

#: The PQ keys logged per stage (``{stage}/pq``, ``{stage}/sq_th``...); ``{stage}/score`` is PQ.
PQ_KEYS = ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st")


def target_at(target: PanopticTargets, image_size: tuple[int, int], size: tuple[int, int]
              ) -> PanopticTargets:
    """A batch's (padded) panoptic target cropped to its image and mapped to ``size`` (nearest
    neighbour when the transforms resized the image)."""
    h, w = int(image_size[0]), int(image_size[1])
    seg = target.segment_map[:h, :w]
    if tuple(seg.shape) != tuple(size):
        seg = F.interpolate(seg[None, None].double(), size=tuple(size), mode="nearest")[0, 0].long()
    return PanopticTargets(seg, target.ids, target.labels, target.isthing, target.iscrowd)


def ids_to_rgb(ids: Tensor) -> np.ndarray:
    """``Tensor[H, W]`` int64 segment ids -> ``uint8[H, W, 3]``, id = R + 256 G + 256^2 B (the
    COCO panoptic PNG encoding)."""
    a = ids.cpu().numpy().astype(np.int64)
    return np.stack([a % 256, a // 256 % 256, a // 65536], axis=-1).astype(np.uint8)


def segments_info(pred: PanopticPredictions, category_ids: list[int]) -> list[dict]:
    """COCO panoptic ``segments_info`` of a prediction (segments without a pixel left out)."""
    seg = pred.segment_map.cpu()
    out = []
    for sid, label in zip(pred.ids.tolist(), pred.labels.tolist()):
        ys, xs = torch.nonzero(seg == sid, as_tuple=True)
        if ys.numel() == 0:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        out.append({
            "id": int(sid), "category_id": int(category_ids[label]), "iscrowd": 0,
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            "area": int(ys.numel()),
        })
    return out


class PanopticSegmentationTask(BaseTask):
    """Trains a panoptic network; validation / test PQ, SQ and RQ over all, thing and stuff
    classes with panopticapi's rules (``PanopticQualityMetric``, exact under DDP).

    Predictions are compared at the original image size with the batch's panoptic targets
    (cropped to the image and resized by nearest neighbour when the validation transform
    resized it): without resizing the numbers equal ``lseg-eval panoptic`` on the files that
    ``lseg predict`` writes.

    ``lseg predict`` writes ``panoptic/<stem>.png`` (ids as R + 256 G + 256^2 B),
    ``panoptic.json`` (COCO panoptic: ``annotations`` with ``segments_info`` whose
    ``category_id`` is the dataset's id, ``categories``, ``images``) and ``overlays/<stem>.png``.

    Args:
        model: the panoptic network.
        num_classes: K, things and stuff (filled from the data).
        info: dataset facts (names, category ids, thing flags, palette; filled from the data).
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
        super().__init__(model, optimizer, scheduler, scheduler_interval, "val/score", max_nonfinite_steps)
        self.save_task_hyperparameters()
        from lightning_seg.metrics.panoptic import PanopticQualityMetric

        self.set_class_facts(num_classes, info, required_info=True)
        things, stuff = self.info.thing_classes, self.info.stuff_classes
        names = list(self.info.class_names)
        self.val_metrics = PanopticQualityMetric(things, stuff, class_names=names)
        self.test_metrics = PanopticQualityMetric(things, stuff, class_names=names)
        # JSON records per output folder (several prediction writers may run at once)
        self._records: dict[Path, tuple[list[dict], list[dict]]] = {}

    # ------------------------------------------------------------------ metrics
    def update_metrics(self, metric, batch: Batch, predictions: list[PanopticPredictions]) -> None:
        if batch.panoptic is None:
            raise ValueError("the batch has no panoptic targets: use a DataModule with task='panoptic'")
        targets = [target_at(t, s, p.image_size)
                   for t, s, p in zip(batch.panoptic, batch.image_sizes, predictions)]
        metric.update(predictions, targets)

    def log_metrics(self, result: dict, stage: str) -> None:
        for key in PQ_KEYS:
            self.log(f"{stage}/{key}", float(result[key]), prog_bar=key == "pq")
        self.log(f"{stage}/score", float(result["pq"]))

    # ------------------------------------------------------------------ pictures
    def _draw(self, image: Tensor, seg) -> Tensor:
        return draw_panoptic(image, seg.segment_map, seg.ids, seg.labels, seg.isthing,
                             self.info.palette)

    def render_predictions(self, batch: Batch, outputs: list[PanopticPredictions], max_images: int
                           ) -> list[Tensor]:
        """Per image: ``[image | ground truth | prediction]`` (a colour per segment, white
        outlines) over a legend of the classes present (things with their count)."""
        pictures = []
        for i in range(min(max_images, len(batch))):
            pred = outputs[i].to("cpu")
            image = self.original_image(batch, i)
            panels, labels, isthing = [image], [], []
            if batch.panoptic is not None:
                gt = target_at(batch.panoptic[i].to("cpu"), batch.image_sizes[i], pred.image_size)
                panels.append(self._draw(image, gt))
                labels += gt.labels.tolist()
                isthing += gt.isthing.tolist()
            panels.append(self._draw(image, pred))
            labels += pred.labels.tolist()
            isthing += pred.isthing.tolist()
            row = hstack(panels)
            legend = panoptic_legend(labels, isthing, self.info.class_names, self.info.palette,
                                     row.shape[2])
            pictures.append(vstack([row, legend]) if legend.shape[1] > 1 else row)
        return pictures

    def mask_layers(self, batch: Batch, outputs: list[PanopticPredictions], i: int):
        """Class maps of the prediction and the ground truth (void = ``num_classes``)."""
        pred = outputs[i].to("cpu")
        layers = {"prediction": self._class_map(pred)}
        if batch.panoptic is not None:
            gt = target_at(batch.panoptic[i].to("cpu"), batch.image_sizes[i], pred.image_size)
            layers["ground_truth"] = self._class_map(gt)
        names = dict(enumerate(self.info.class_names)) | {self.num_classes: "void"}
        return self.original_image(batch, i), layers, names

    def _class_map(self, seg) -> Tensor:
        """``Tensor[H, W]`` class per pixel (void and unknown ids: ``num_classes``)."""
        out = torch.full_like(seg.segment_map, self.num_classes)
        if len(seg.ids):
            ids, order = seg.ids.sort()
            pos = torch.searchsorted(ids, seg.segment_map).clamp(max=len(ids) - 1)
            found = ids[pos] == seg.segment_map
            out[found] = seg.labels[order[pos[found]]]
        return out

    # ------------------------------------------------------------------ prediction files
    def write_predictions(self, batch: Batch, outputs: list[PanopticPredictions], output_dir: Path
                          ) -> None:
        """Write ``panoptic/<stem>.png`` and ``overlays/<stem>.png``; keep the JSON records."""
        (output_dir / "panoptic").mkdir(parents=True, exist_ok=True)
        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        annotations, images = self._records.setdefault(Path(output_dir), ([], []))
        for i, pred in enumerate(outputs):
            pred = pred.to("cpu")
            meta = batch.meta[i]
            stem = Path(meta.file_name).stem
            Image.fromarray(ids_to_rgb(pred.segment_map)).save(output_dir / "panoptic" / f"{stem}.png")
            annotations.append({
                "image_id": meta.image_id, "file_name": f"{stem}.png",
                "segments_info": segments_info(pred, self.info.category_ids),
            })
            h, w = pred.image_size
            images.append({"id": meta.image_id, "file_name": Path(meta.file_name).name,
                                 "height": int(h), "width": int(w)})
            overlay = self._draw(self.original_image(batch, i), pred)
            Image.fromarray(to_numpy(overlay)).save(output_dir / "overlays" / f"{stem}.png")

    def finish_predictions(self, output_dir: Path) -> None:
        """Write ``panoptic.json`` (COCO panoptic format) for the whole predict run."""
        output_dir.mkdir(parents=True, exist_ok=True)
        annotations, images = self._records.pop(Path(output_dir), ([], []))
        categories = [
            {"id": int(cid), "name": name, "isthing": int(thing),
             "color": list(self.info.palette[k % len(self.info.palette)])}
            for k, (cid, name, thing) in enumerate(
                zip(self.info.category_ids, self.info.class_names, self.info.isthing))
        ]
        with open(output_dir / "panoptic.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
