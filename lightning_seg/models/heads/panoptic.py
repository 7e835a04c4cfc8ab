"""Panoptic heads of UPSNet: the parameter-free panoptic head and the heuristic merge.

Neither has parameters; both turn the semantic head's and the instance head's outputs into
``PanopticPredictions``. ``UPSNetPanopticHead`` also has a training loss (pixel-wise
cross-entropy over stuff, instances and the unknown class), so the network is trained for the
fusion it uses at test time. ``HeuristicPanopticMerge`` is the Panoptic FPN style baseline of
the paper's ablation (paste instances by score, fill the rest with stuff): swap the network's
``panoptic_head`` for it, at training (no panoptic loss) or only at test.

The maths is in ``lightning_seg.models.postprocess.panoptic``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.models.postprocess.panoptic import (
    box_extents,
    heuristic_merge,
    paste_mask_logits,
    remove_overlapping_masks,
    resize_labels,
    unified_panoptic_result,
    upsnet_panoptic_logits,
    upsnet_panoptic_targets,
)
from lightning_seg.ops.labels import argmax_labels
from lightning_seg.structures import InstancePredictions, PanopticPredictions
from lightning_seg.structures.dataset_info import require_fact

_IGNORE = -100  # ignored panoptic target (channel indices can exceed 255)


def thing_stuff_split(thing_classes, stuff_classes, owner: str) -> tuple[list[int], list[int]]:
    """The checked thing / stuff class lists of a dataset (facts filled by ``lseg``)."""
    things = [int(c) for c in require_fact(thing_classes, "thing_classes", owner)]
    stuff = [int(c) for c in require_fact(stuff_classes, "stuff_classes", owner)]
    if not things:
        raise ValueError(f"{owner}: the dataset has no thing class; a panoptic network needs some")
    if set(things) & set(stuff) or len(set(things + stuff)) != len(things + stuff):
        raise ValueError(f"{owner}: thing_classes {things} and stuff_classes {stuff} overlap")
    return things, stuff


class UPSNetPanopticHead(nn.Module):
    """UPSNet's parameter-free panoptic head (Xiong et al., CVPR 2019, section 3.3).

    Training (``loss``): the logits are built at the semantic head's stride from the
    ground-truth boxes and classes of a random ``box_keep_fraction`` of the instances (at least
    one); the pixels of the dropped ones are labelled unknown; pixel-wise cross-entropy over
    stuff + instances + unknown. Test (``predict``): from the class-agnostic detections at input
    resolution; overlapping masks removed; arg-max, unknown pixels void; then the official
    unified result (majority-stuff instances become that stuff, small stuff regions void) at the
    original image size.

    Args:
        thing_classes: dataset class indices of things (filled from the data).
        stuff_classes: dataset class indices of stuff (filled from the data).
        ignore_index: void label of the semantic maps (filled from the data).
        box_keep_fraction: share of the ground-truth instances given a channel in training
            (0.7); below 1 the unknown class is on, at 1 it is off (the official switch), and
            unmatched thing pixels are then ignored.
        loss_weight: weight of ``loss_panoptic`` (0.1 COCO, 0.5 Cityscapes).
        empty_instance_logit: training: ``max_i Y_i`` of the unknown channel when an image has
            no instance (the official -10). At test an image without detections uses 0: the
            official code then adds one all-zero dummy instance channel (which we leave out, as
            its pixels would get a meaningless class).
        score_thresh: test: lowest detection probability (0.6).
        nms_thresh: test: IoU of the class-agnostic NMS (0.5).
        detections_per_img: test: most instances (100).
        mask_overlap_thresh: test: a mask more than this share covered by better masks of its
            class is dropped (0.3).
        stuff_area_limit: test: stuff regions smaller than this (original image pixels)
            become void (4096 COCO, 2048 Cityscapes).
        majority_thresh: test: an instance whose pixels are at least this share one stuff class
            of the semantic map (its majority) becomes that stuff (0.5).
        mask_logit_weight: weight of the pasted mask logits in an instance's logits, against
            its semantic channel (``Y_i + w X_i``), in training and at test. 1 is UPSNet (the
            paper and the official code have no such weight); an ablation knob whose effect
            was measured at test only, on trained networks (BENCHMARKS.md, UPSNet).

    The training loss averages, per image, the pixel losses over every pixel of the image at
    the head's stride (void pixels count 0, as the official ``.mean()``), then over the images.
    Targets are sampled from the input-resolution maps at the centre of each stride cell
    (``nearest-exact``).
    """

    fuses_logits = True

    def __init__(
        self,
        thing_classes: Sequence[int] | None = None,
        stuff_classes: Sequence[int] | None = None,
        ignore_index: int | None = None,
        box_keep_fraction: float = 0.7,
        loss_weight: float = 0.1,
        empty_instance_logit: float = -10.0,
        score_thresh: float = 0.6,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_overlap_thresh: float = 0.3,
        stuff_area_limit: int = 4096,
        majority_thresh: float = 0.5,
        mask_logit_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.thing_classes, self.stuff_classes = thing_stuff_split(thing_classes, stuff_classes,
                                                        type(self).__name__)
        self.num_classes = max(self.thing_classes + self.stuff_classes) + 1
        if mask_logit_weight <= 0:
            raise ValueError(f"mask_logit_weight must be > 0, got {mask_logit_weight}")
        self.mask_logit_weight = mask_logit_weight
        self.ignore_index = 255 if ignore_index is None else int(ignore_index)
        if not 0 < box_keep_fraction <= 1:
            raise ValueError(f"box_keep_fraction must be in (0, 1], got {box_keep_fraction}")
        self.box_keep_fraction = box_keep_fraction
        self.loss_weight = loss_weight
        self.empty_instance_logit = empty_instance_logit
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_overlap_thresh = mask_overlap_thresh
        self.stuff_area_limit = stuff_area_limit
        self.majority_thresh = majority_thresh

    @property
    def with_unknown(self) -> bool:
        """The unknown class is on when instances are dropped in training (official switch)."""
        return self.box_keep_fraction < 1

    def extra_repr(self) -> str:
        extra = "" if self.mask_logit_weight == 1 else f", mask_logit_weight={self.mask_logit_weight}"
        return (f"things={len(self.thing_classes)}, stuff={len(self.stuff_classes)}, "
                f"box_keep_fraction={self.box_keep_fraction}, unknown={self.with_unknown}{extra}")

    # ------------------------------------------------------------------ training
    def sample_instances(self, num: int, device: torch.device | str | None = None) -> Tensor:
        """Indices (ascending) of the ``max(int(num * box_keep_fraction), 1)`` instances kept,
        drawn without replacement from torch's generator; all of them at fraction 1."""
        if num == 0:
            return torch.zeros(0, dtype=torch.int64, device=device)
        if not self.with_unknown:
            return torch.arange(num, device=device)
        count = max(int(num * self.box_keep_fraction), 1)
        return torch.randperm(num)[:count].sort().values.to(device)

    def loss(
        self,
        semantic_logits: Tensor,
        stride: int,
        boxes: Sequence[Tensor],
        labels: Sequence[Tensor],
        mask_logits: Sequence[Tensor],
        masks: Sequence[Tensor],
        semantic: Tensor,
        image_sizes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """``{"loss_panoptic": ...}`` of a batch.

        Args:
            semantic_logits: ``Tensor[B, K, H / s, W / s]`` semantic head logits.
            stride: ``s``.
            boxes: per image ``Tensor[N_i, 4]`` ground-truth boxes (input pixels) of the kept
                instances.
            labels: per image ``Tensor[N_i]`` their dataset classes.
            mask_logits: per image ``Tensor[N_i, M, M]`` the mask head's logits of their class.
            masks: per image ``Tensor[N_i, h_i, w_i]`` bool their ground-truth masks (the
                image's own size, unpadded).
            semantic: ``Tensor[B, H, W]`` int64 semantic labels (input frame, padded with
                ``ignore_index``).
            image_sizes: ``(h_i, w_i)`` of each image.
        """
        hs, ws = semantic_logits.shape[-2:]
        size = (hs * stride, ws * stride)
        sem = semantic[:, : size[0], : size[1]]
        sem = F.pad(sem, (0, size[1] - sem.shape[-1], 0, size[0] - sem.shape[-2]),
                    value=self.ignore_index)
        sem_s = F.interpolate(sem[:, None].double(), size=(hs, ws), mode="nearest-exact")
        sem_s = sem_s[:, 0].long()  # [B, H / s, W / s]
        losses = []
        for i, (h, w) in enumerate(image_sizes):
            hi, wi = -(-int(h) // stride), -(-int(w) // stride)  # the image's cells
            extents = box_extents(boxes[i], 1.0 / stride)
            logits_i = semantic_logits[i].float()
            pasted = paste_mask_logits(mask_logits[i].float(), extents, (hs, ws))
            logits = upsnet_panoptic_logits(
                logits_i, extents, labels[i], pasted, self.stuff_classes, self.thing_classes,
                self.with_unknown, self.empty_instance_logit, self.mask_logit_weight,
            )[:, :hi, :wi]  # [S + N (+ 1), hi, wi]
            m = masks[i]
            if m.shape[0]:
                m = F.pad(m.float(), (0, size[1] - m.shape[-1], 0, size[0] - m.shape[-2]))
                m = F.interpolate(m[None], size=(hs, ws), mode="nearest-exact")[0] > 0.5
            else:
                m = torch.zeros(0, hs, ws, dtype=torch.bool, device=logits.device)
            target = upsnet_panoptic_targets(
                sem_s[i], m.to(logits.device), self.stuff_classes, self.ignore_index,
                self.with_unknown, _IGNORE,
            )[:hi, :wi]
            if logits.shape[0] == 0:  # no stuff class, no instance, no unknown channel
                losses.append(logits_i.sum() * 0)
                continue
            pixel = F.cross_entropy(logits[None], target[None], ignore_index=_IGNORE,
                                    reduction="none")  # [1, hi, wi]
            losses.append(pixel.mean())
        return {"loss_panoptic": torch.stack(losses).mean() * self.loss_weight}

    # ------------------------------------------------------------------ test
    @torch.no_grad()
    def predict(
        self,
        semantic_logits: Tensor,
        detections: InstancePredictions,
        mask_logits: Tensor,
        orig_size: Sequence[int],
    ) -> PanopticPredictions:
        """The panoptic segmentation of one image at ``orig_size``.

        Args:
            semantic_logits: ``Tensor[K, h, w]`` at input resolution (the image's valid region).
            detections: class-agnostic detections (``class_agnostic_detections``) in the input
                frame, labels in dataset classes.
            mask_logits: ``Tensor[N, M, M]`` mask logits of each detection's class.
            orig_size: ``(H, W)`` of the image on disk.
        """
        size = semantic_logits.shape[-2:]
        extents = box_extents(detections.boxes)
        pasted = paste_mask_logits(mask_logits.float(), extents, size)  # [N, h, w]
        keep = remove_overlapping_masks(pasted > 0, detections.labels, detections.scores,
                                        self.mask_overlap_thresh)
        labels, scores = detections.labels[keep], detections.scores[keep]
        logits = upsnet_panoptic_logits(
            semantic_logits.float(), extents[keep], labels, pasted[keep], self.stuff_classes,
            self.thing_classes, self.with_unknown, empty_instance_logit=0.0,
            mask_logit_weight=self.mask_logit_weight,
        )  # [S + N' (+ 1), h, w]
        index_map = resize_labels(argmax_labels(logits, 0), orig_size)
        semantic_map = resize_labels(argmax_labels(semantic_logits, 0), orig_size)
        return unified_panoptic_result(
            index_map, semantic_map, labels, scores, self.stuff_classes, self.num_classes,
            self.stuff_area_limit, self.majority_thresh,
        )


class HeuristicPanopticMerge(nn.Module):
    """Heuristic merge of the instance and semantic outputs (the ablation's baseline).

    Uses the instance head's ordinary detections (per-class NMS), their masks pasted and
    thresholded at the original size, and the semantic arg-max; see
    ``lightning_seg.models.postprocess.panoptic.heuristic_merge``. No training loss.

    Args:
        thing_classes: dataset class indices of things (filled from the data).
        stuff_classes: dataset class indices of stuff (filled from the data).
        score_thresh: lowest instance score pasted (0.6).
        overlap_thresh: largest share of a mask already taken for it to be pasted (0.3, i.e.
            the official baseline's "at least 70% free").
        stuff_area_limit: smallest stuff class area kept, original pixels (4096).
    """

    fuses_logits = False

    def __init__(
        self,
        thing_classes: Sequence[int] | None = None,
        stuff_classes: Sequence[int] | None = None,
        score_thresh: float = 0.6,
        overlap_thresh: float = 0.3,
        stuff_area_limit: int = 4096,
    ) -> None:
        super().__init__()
        self.thing_classes, self.stuff_classes = thing_stuff_split(thing_classes, stuff_classes,
                                                        type(self).__name__)
        self.num_classes = max(self.thing_classes + self.stuff_classes) + 1
        self.score_thresh = score_thresh
        self.overlap_thresh = overlap_thresh
        self.stuff_area_limit = stuff_area_limit

    def extra_repr(self) -> str:
        return f"things={len(self.thing_classes)}, stuff={len(self.stuff_classes)}"

    @torch.no_grad()
    def predict(self, semantic_map: Tensor, instances: InstancePredictions) -> PanopticPredictions:
        """Args:
            semantic_map: ``Tensor[H, W]`` int64 semantic arg-max at the original size.
            instances: detections at that size with bool ``masks``, labels in dataset classes.
        """
        if instances.masks is None:
            raise ValueError("HeuristicPanopticMerge needs instance masks")
        return heuristic_merge(
            semantic_map, instances.masks.bool(), instances.labels, instances.scores,
            self.stuff_classes, self.num_classes, self.score_thresh, self.overlap_thresh,
            self.stuff_area_limit,
        )
