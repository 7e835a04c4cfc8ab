"""Keypoint / landmark task: heatmap or regression losses, PCK / PCKh / NME / OKS AP, skeletons.

The network is a top-down keypoint network (``StackedHourglass``, ``TopDownPoseNet``): loss
terms in training (``loss_heatmap_s0``... per stack), one ``KeypointPredictions`` per sample in
the frame of the image on disk in eval mode (flip test inside the network). Validation maps the
targets back to that frame too (``targets_to_original_frame``: the inverse of the sample's crop)
and scores what the dataset calls for (``metrics``). ``lseg predict`` writes a COCO keypoint
results JSON (``results.json``) that ``lseg-eval coco --iou-type keypoints`` scores against the
dataset's annotation file, and pictures of the crops with their skeletons.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from lightning_seg.metrics.coco_records import keypoints_to_coco
from lightning_seg.metrics.topdown import METRICS, TopDownKeypointMetrics
from lightning_seg.models.postprocess.keypoints import targets_to_original_frame
from lightning_seg.ops.affine import apply_affine
from lightning_seg.structures import Batch, DatasetInfo, KeypointPredictions
from lightning_seg.structures.dataset_info import default_palette, require_fact
from lightning_seg.tasks.base import (
    BaseTask,
    LRSchedulerCallable,
    OptimizerCallable,
    default_optimizer,
)
from lightning_seg.visualize import draw_skeleton, hstack, to_numpy, to_uint8_image

#: The ``{stage}/score`` of each headline metric (higher is better: NME is negated).
_HEADLINE = {"pck": "pck", "pckh": "pckh", "nme": "nme", "oks": "oks/AP"}


class KeypointTask(BaseTask):
    """Trains a top-down keypoint network and scores it as its dataset calls for.

    Args:
        model: the network (``StackedHourglass``, ``TopDownPoseNet``).
        num_keypoints: K (filled from the DataModule).
        info: dataset facts (keypoint names, skeleton, sigmas, category id for results files).
        metrics: any of ``"pck"`` (PCK@``pck_alpha`` of the box), ``"pckh"`` (MPII),
            ``"nme"`` (faces), ``"oks"`` (COCO keypoint AP); the first is the headline,
            logged as ``{stage}/score`` (``-nme`` for NME, so that higher is better).
        pck_alpha: PCK threshold (0.2).
        pckh_alpha: PCKh threshold (0.5).
        nme_failure_thresh: NME's AUC / failure-rate threshold (0.08 on 300-W, 0.10 WFLW).
        optimizer: optimizer callable (Newell et al.: RMSprop lr 2.5e-4).
        scheduler: LR scheduler callable, or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        vis_score_thresh: keypoints scored below it are not drawn in pictures.
        oks_nms_thresh: ``lseg predict`` results from person detections go through OKS NMS at
            this threshold per image (0.9, SimpleBaseline / mmpose; keypoints scored above 0.2
            count); None keeps every detection. Crops of ground-truth boxes are never
            suppressed.
        max_nonfinite_steps: consecutive non-finite steps that stop the run (``BaseTask``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_keypoints: int | None = None,
        info: DatasetInfo | None = None,
        metrics: Sequence[str] = ("pck",),
        pck_alpha: float = 0.2,
        pckh_alpha: float = 0.5,
        nme_failure_thresh: float = 0.08,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        vis_score_thresh: float = 0.2,
        oks_nms_thresh: float | None = 0.9,
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__(model, optimizer, scheduler, scheduler_interval, "val/score", max_nonfinite_steps)
        self.save_task_hyperparameters()
        num_keypoints = int(require_fact(num_keypoints, "num_keypoints", type(self).__name__))
        self.num_keypoints = num_keypoints
        self.info = info or DatasetInfo(["instance"], keypoint_names=[str(k) for k in range(num_keypoints)])
        if self.info.num_keypoints != num_keypoints:
            raise ValueError(f"info has {self.info.num_keypoints} keypoints, num_keypoints is {num_keypoints}")
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if not metrics or unknown:
            raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
        self.metric_names = metrics
        self.vis_score_thresh = vis_score_thresh
        self.oks_nms_thresh = oks_nms_thresh
        self.colors = default_palette(num_keypoints)

        def make() -> TopDownKeypointMetrics:
            return TopDownKeypointMetrics(
                metrics, num_keypoints, pck_alpha, pckh_alpha, nme_failure_thresh,
                kpt_sigmas=self.info.keypoint_sigmas or None, keypoint_names=self.info.keypoint_names,
            )

        self.val_metrics = make()
        self.test_metrics = make()
        # per output folder (two prediction writers must not share one list): the results and,
        # per result, (keypoints, area, from a detection) for OKS NMS
        self._pending: dict[str, tuple[list[dict], list[tuple[Tensor, float, bool]]]] = {}

    @property
    def num_classes(self) -> int:
        """Instance categories of the dataset (one for people or faces)."""
        return self.info.num_classes

    # ------------------------------------------------------------------ metrics
    def update_metrics(self, metric, batch: Batch, predictions: list[KeypointPredictions]) -> None:
        if batch.keypoints is None:
            raise ValueError("the batch has no keypoint targets: use a keypoint DataModule")
        targets = [targets_to_original_frame(t.to("cpu"), m) for t, m in zip(batch.keypoints, batch.meta)]
        metric.update([p.to("cpu") for p in predictions], targets, [m.image_id for m in batch.meta])

    def log_metrics(self, result: dict, stage: str) -> None:
        for key, value in result.items():
            self.log(f"{stage}/{key}", float(value))
        head = self.metric_names[0]
        value = result.get(_HEADLINE[head])
        if value is not None:
            score = -float(value) if head == "nme" else float(value)
            self.log(f"{stage}/score", score, prog_bar=True)

    # ------------------------------------------------------------------ pictures
    def _crop_points(self, pred: KeypointPredictions, batch: Batch, i: int) -> Tensor:
        """Predicted keypoints (original frame) moved into the sample's input frame."""
        kpts = pred.keypoints.detach().float().cpu().clone()
        crop = batch.meta[i].crop
        if crop is not None:
            kpts[..., :2] = apply_affine(kpts[..., :2].double(), crop.forward()).float()
        else:
            (h, w), (oh, ow) = batch.image_sizes[i], batch.meta[i].orig_size
            kpts[..., :2] *= kpts.new_tensor([w / ow, h / oh])
        return kpts

    def render_predictions(self, batch: Batch, outputs: list[KeypointPredictions], max_images: int) -> list[Tensor]:
        """Per sample: ``[ground truth | prediction | heatmaps]`` on the network's input crop,
        keypoints in per-keypoint colours joined by the skeleton."""
        pictures = []
        skeleton = [tuple(p) for p in self.info.skeleton]
        for i in range(min(max_images, len(batch))):
            image = to_uint8_image(batch.images[i], batch.image_sizes[i])
            panels = []
            if batch.keypoints is not None:
                panels.append(draw_skeleton(image, batch.keypoints[i].keypoints, skeleton, self.colors))
            pred = self._crop_points(outputs[i], batch, i)
            panels.append(draw_skeleton(image, pred, skeleton, self.colors, self.vis_score_thresh))
            heatmaps = outputs[i].heatmaps
            if heatmaps is not None:
                panels.append(self._heatmap_panel(image, heatmaps[0]))
            pictures.append(hstack(panels))
        return pictures

    def _heatmap_panel(self, image: Tensor, heatmaps: Tensor) -> Tensor:
        """The maximum over keypoints of the heatmaps, upsampled and blended over the image."""
        peak = heatmaps.detach().float().cpu().amax(0).clamp(0, 1)[None, None]  # [1, 1, h, w]
        peak = torch.nn.functional.interpolate(peak, size=image.shape[1:], mode="bilinear",
                                               align_corners=False)[0]
        red = torch.stack([peak[0], torch.zeros_like(peak[0]), torch.zeros_like(peak[0])]) * 255
        return (image.float() * 0.5 + red * 0.5).clamp(0, 255).to(torch.uint8)

    # ------------------------------------------------------------------ predict
    def write_predictions(self, batch: Batch, outputs: list[KeypointPredictions], output_dir: Path) -> None:
        """Collect COCO keypoint results and write ``overlays/<image>_<n>.png`` of each crop."""
        (output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        results, nms_rows = self._pending.setdefault(str(output_dir), ([], []))
        category = int(self.info.category_ids[0]) if self.info.category_ids else 1
        skeleton = [tuple(p) for p in self.info.skeleton]
        for i, pred in enumerate(outputs):
            meta = batch.meta[i]
            coco = keypoints_to_coco(pred.keypoints, labelled_only=False)  # [N, K, 3]
            targets = batch.keypoints[i] if batch.keypoints is not None else None
            for n in range(len(pred)):
                record = {
                    "image_id": int(meta.image_id),
                    "category_id": category,
                    "keypoints": [round(float(v), 3) for v in coco[n].reshape(-1)],
                    "score": float(pred.scores[n]),
                }
                if targets is not None and targets.ids is not None and int(targets.ids[n]) >= 0:
                    record["annotation_id"] = int(targets.ids[n])
                results.append(record)
                detected = targets is not None and targets.scores is not None
                box = pred.boxes[n] if pred.boxes is not None else torch.zeros(4)
                area = float((box[2] - box[0]) * (box[3] - box[1]))
                nms_rows.append((pred.keypoints[n].detach().cpu(), area, detected))
            image = to_uint8_image(batch.images[i], batch.image_sizes[i])
            picture = draw_skeleton(image, self._crop_points(pred, batch, i), skeleton, self.colors,
                                    self.vis_score_thresh)
            stem = f"{Path(meta.file_name).stem}_{len(results):06d}"
            Image.fromarray(to_numpy(picture)).save(output_dir / "overlays" / f"{stem}.png")

    def finish_predictions(self, output_dir: Path) -> None:
        """Write the COCO keypoint results JSON (``results.json``), after OKS NMS of the
        results from detections (``oks_nms_thresh``)."""
        output_dir.mkdir(parents=True, exist_ok=True)
        results, nms_rows = self._pending.pop(str(output_dir), ([], []))
        keep = self._oks_nms_keep(results, nms_rows)
        with open(output_dir / "results.json", "w") as f:
            json.dump([r for r, k in zip(results, keep) if k], f)

    def _oks_nms_keep(self, results: list[dict], nms_rows: list[tuple[Tensor, float, bool]]) -> list[bool]:
        """Which results survive OKS NMS (per image, among results from detections)."""
        from lightning_seg.ops.keypoints import oks_nms

        keep = [True] * len(results)
        if self.oks_nms_thresh is None or not self.info.keypoint_sigmas:
            return keep
        groups: dict[int, list[int]] = {}
        for j, (record, (_, _, detected)) in enumerate(zip(results, nms_rows)):
            if detected:
                groups.setdefault(record["image_id"], []).append(j)
        for rows in groups.values():
            if len(rows) < 2:
                continue
            kpts = torch.stack([nms_rows[j][0] for j in rows])  # [N, K, 3]
            areas = torch.tensor([nms_rows[j][1] for j in rows])
            scores = torch.tensor([results[j]["score"] for j in rows])
            kept = set(oks_nms(kpts, scores, areas, self.info.keypoint_sigmas, self.oks_nms_thresh).tolist())
            for i, j in enumerate(rows):
                keep[j] = i in kept
        return keep
