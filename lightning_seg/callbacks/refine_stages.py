"""Per-stage mask quality of RefineMask on validation: which refinement stage helps where.

For every validation batch the callback takes the mask head's own output (a forward hook, no
extra computation), keeps the detections that overlap a ground-truth instance with box IoU
``>= iou_thresh`` (the positive RoIs), and compares each stage's mask (as inference uses it:
boundary overwrite applied) with that instance's mask cropped to the RoI at the stage's size:

- ``val/refine/s{k}_mask_iou``: mean mask IoU of the positive RoIs at stage ``k`` (size 14, 28,
  56, 112 by default);
- ``val/refine/s{k}_boundary_iou``: mean Boundary IoU (Cheng et al., CVPR 2021; the mask pixels
  within ``d = max(1, round(0.02 * diagonal))`` of the contour, ``metrics.boundary``);
- ``val/refine/s{k}_raw_mask_iou`` / ``_raw_boundary_iou`` for the stages whose mask is a
  boundary overwrite of the previous one: the stage's own mask before the overwrite.

A rise from one stage to the next in boundary IoU with a flat mask IoU is the paper's claim
(finer boundaries, same bodies).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchvision.ops import box_iou, roi_align

from lightning_seg.metrics.boundary import mask_to_boundary
from lightning_seg.structures import InstanceTargets


def _iou(pred: Tensor, target: Tensor) -> Tensor:
    """Per-row IoU of bool ``Tensor[N, S, S]`` masks (1 where both are empty)."""
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def stage_mask_ious(
    stage_logits: Sequence[Tensor],
    rois: Sequence[Tensor],
    targets: Sequence[InstanceTargets],
    iou_thresh: float = 0.5,
    dilation_ratio: float = 0.02,
    aligned: bool = True,
) -> list[tuple[Tensor, Tensor]]:
    """Mask IoU and Boundary IoU of every positive RoI at every stage.

    Args:
        stage_logits: per stage ``Tensor[N, 1, S_k, S_k]`` mask logits of all RoIs of the batch.
        rois: per image ``Tensor[N_i, 4]`` x1y1x2y2 (the rows of ``stage_logits``, in order).
        targets: per image ground truth in the frame of ``rois`` (masks required; crowd
            instances are not matched).
        iou_thresh: a RoI is positive when its best box IoU with a ground-truth box is at
            least this.
        dilation_ratio: Boundary IoU's ``d`` as a fraction of the mask diagonal.
        aligned: crop the ground-truth masks with aligned RoIAlign (as the mask head does).

    Returns:
        per stage ``(mask_iou Tensor[P], boundary_iou Tensor[P])`` over the ``P`` positives.
    """
    rows, crops = [], []  # crops: per image (positive RoIs [P_i, 5] into its masks, masks)
    offset = 0
    for boxes, target in zip(rois, targets):
        n = boxes.shape[0]
        keep_gt = ~target.iscrowd.to(boxes.device)
        if n and int(keep_gt.sum()) and target.masks is not None:
            gt_boxes = target.boxes.to(boxes)[keep_gt]
            best, idx = box_iou(boxes.float(), gt_boxes.float()).max(dim=1)  # [N_i]
            pos = torch.nonzero(best >= iou_thresh).squeeze(1)
            if pos.numel():
                masks = target.masks.to(boxes.device)[keep_gt][:, None].float()  # [G, 1, H, W]
                rows.append(pos + offset)
                matched = idx[pos].to(torch.float32)[:, None]  # [P_i, 1] mask of each RoI
                crops.append((torch.cat([matched, boxes[pos].float()], dim=1), masks))
        offset += n
    out = []
    if not rows:
        empty = torch.zeros(0)
        return [(empty, empty) for _ in stage_logits]
    rows_t = torch.cat(rows)
    for logits in stage_logits:
        size = int(logits.shape[-1])
        target = torch.cat([
            roi_align(masks, r, (size, size), 1.0, 0, aligned)[:, 0] >= 0.5 for r, masks in crops
        ])  # [P, S, S]
        pred = logits[rows_t.to(logits.device), 0].float() >= 0  # [P, S, S] probability >= 0.5
        target = target.to(pred.device)
        boundary_iou = _iou(mask_to_boundary(pred, dilation_ratio) & pred,
                            mask_to_boundary(target, dilation_ratio) & target)
        out.append((_iou(pred, target), boundary_iou))
    return out


class RefineStageMetrics(Callback):
    """Logs mask IoU and Boundary IoU of the positive RoIs per refinement stage on validation.

    Needs a network whose ``mask_head`` has ``refined_logits`` (``RefineMaskHead``); add it to
    ``trainer.callbacks`` (the RefineMask experiments do).

    Args:
        iou_thresh: box IoU with a ground-truth instance that makes a detection positive (0.5).
        dilation_ratio: Boundary IoU's width as a fraction of the RoI mask's diagonal (0.02).
        aligned: crop the targets with aligned RoIAlign (the mask head's ``target_aligned``).
    """

    def __init__(self, iou_thresh: float = 0.5, dilation_ratio: float = 0.02,
                 aligned: bool = True) -> None:
        self.iou_thresh = iou_thresh
        self.dilation_ratio = dilation_ratio
        self.aligned = aligned
        self._handle = None
        self._raw = None
        self._head = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning_seg.tasks.base import unwrap_network

        head = getattr(unwrap_network(pl_module), "mask_head", None)
        if not callable(getattr(head, "refined_logits", None)):
            raise TypeError(
                f"RefineStageMetrics needs a network whose mask_head is a RefineMaskHead; "
                f"{type(unwrap_network(pl_module)).__name__} has {type(head).__name__}. Remove "
                f"the callback from trainer.callbacks for this model."
            )
        self._head = head

    def _keep(self, module, args, output) -> None:
        self._raw = output

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._raw = None
        if self._handle is None and self._head is not None:
            self._handle = self._head.register_forward_hook(self._keep)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._raw = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.on_validation_epoch_end(trainer, pl_module)

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        raw, self._raw = self._raw, None
        if raw is None or batch.instances is None:
            return
        head = self._head
        refined = head.refined_logits(raw)
        results = stage_mask_ious(refined, raw.rois, batch.instances, self.iou_thresh,
                                  self.dilation_ratio, self.aligned)
        num = int(results[0][0].numel())
        if num == 0:
            return
        overwritten = head.boundary_overwrite
        for k, (mask_iou, boundary_iou) in enumerate(results):
            pl_module.log(f"val/refine/s{k}_mask_iou", mask_iou.mean(), on_epoch=True,
                          on_step=False, batch_size=num, sync_dist=True)
            pl_module.log(f"val/refine/s{k}_boundary_iou", boundary_iou.mean(), on_epoch=True,
                          on_step=False, batch_size=num, sync_dist=True)
        if overwritten and len(raw.stage_logits) > 2:
            own = stage_mask_ious(raw.stage_logits[2:], raw.rois, batch.instances,
                                  self.iou_thresh, self.dilation_ratio, self.aligned)
            for k, (mask_iou, boundary_iou) in enumerate(own, start=2):
                pl_module.log(f"val/refine/s{k}_raw_mask_iou", mask_iou.mean(), on_epoch=True,
                              on_step=False, batch_size=num, sync_dist=True)
                pl_module.log(f"val/refine/s{k}_raw_boundary_iou", boundary_iou.mean(),
                              on_epoch=True, on_step=False, batch_size=num, sync_dist=True)
