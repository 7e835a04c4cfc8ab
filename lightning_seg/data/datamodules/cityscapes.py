"""Cityscapes DataModule: semantic (19 trainIds), instance (8 things) and panoptic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.data.datamodules.base import SegDataModule, describe_layout, require_dir
from lightning_seg.data.io import DataError
from lightning_seg.structures import (
    DatasetInfo,
    InstanceTargets,
    PanopticTargets,
    Sample,
    SampleMeta,
)

CITYSCAPES_LAYOUT = describe_layout(
    [
        "<root>/leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png",
        "<root>/gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png      (semantic)",
        "<root>/gtFine/{train,val,test}/<city>/<name>_gtFine_instanceIds.png   (instance, panoptic)",
    ]
)


class CityscapesPanopticDataset(Dataset):
    """Cityscapes panoptic targets built from ``*_gtFine_instanceIds.png`` (no JSON needed).

    Follows cityscapesScripts ``createPanopticImgs``: a pixel value ``v >= 1000`` is thing
    instance ``v`` of label ``v // 1000``; a value ``v < 1000`` is label ``v`` (a stuff region,
    or a crowd group when the label has instances); labels ignored in evaluation are void (0).
    Classes are the 19 trainIds (``cityscapes_semantic_info``, things flagged). Each sample has
    ``panoptic`` (segment ids = the raw instance-map values), ``semantic`` (trainIds, 255 void)
    and ``instances`` (the thing segments, groups as ``iscrowd``).

    Args:
        root: Cityscapes root.
        split: ``train``, ``val`` or ``test``.
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        from lightning_seg.data.formats.cityscapes import (
            CityscapesInstanceDataset,
            cityscapes_semantic_info,
            label_id_to_train_id,
        )

        source = CityscapesInstanceDataset(root, split)  # lists and checks the file pairs
        self.pairs = source.pairs
        self.skips = source.skips
        self.info = cityscapes_semantic_info()
        self._train_id = label_id_to_train_id()  # [34] labelId -> trainId / 255
        self._isthing = np.asarray(self.info.isthing + [False] * 256, dtype=bool)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        from lightning_seg.data.formats.common import image_tensor, load_rgb
        from lightning_seg.data.formats.masks import masks_to_boxes
        from lightning_seg.data.io import read_label_map

        image_path, label_path = self.pairs[i]
        image = load_rgb(image_path, self.skips)
        ids = read_label_map(label_path)  # [H, W]
        if ids.shape != image.shape[:2]:
            raise DataError(
                f"{label_path}: instance map is {ids.shape[0]}x{ids.shape[1]} but its image "
                f"{image_path} is {image.shape[0]}x{image.shape[1]}; use matching files."
            )
        uniq, inverse = np.unique(ids, return_inverse=True)
        label_ids = np.where(uniq >= 1000, uniq // 1000, uniq)
        if (label_ids < 0).any() or (label_ids >= len(self._train_id)).any():
            raise DataError(f"{label_path}: values {uniq[:10].tolist()} are not Cityscapes instance ids.")
        train_ids = self._train_id[label_ids]  # [S] per unique value
        valid = train_ids != 255
        h, w = ids.shape
        semantic = train_ids[inverse.reshape(h, w)]
        segment_map = np.where(valid[inverse.reshape(h, w)], ids, 0)
        seg_ids, seg_labels = uniq[valid], train_ids[valid]
        isthing = self._isthing[seg_labels]
        iscrowd = isthing & (seg_ids < 1000)
        things = np.flatnonzero(isthing)
        masks = ids[None] == seg_ids[things][:, None, None]  # [N, H, W]
        instances = InstanceTargets(
            boxes=torch.from_numpy(masks_to_boxes(masks)),
            labels=torch.from_numpy(seg_labels[things].astype(np.int64)),
            image_size=(h, w),
            masks=torch.from_numpy(masks),
            iscrowd=torch.from_numpy(iscrowd[things]),
        )
        panoptic = PanopticTargets(
            segment_map=torch.from_numpy(segment_map.astype(np.int64)),
            ids=torch.from_numpy(seg_ids.astype(np.int64)),
            labels=torch.from_numpy(seg_labels.astype(np.int64)),
            isthing=torch.from_numpy(isthing),
            iscrowd=torch.from_numpy(iscrowd),
        )
        meta = SampleMeta(image_id=i, file_name=str(image_path), orig_size=(h, w))
        return Sample(
            image=image_tensor(image),
            meta=meta,
            instances=instances,
            semantic=torch.from_numpy(semantic.astype(np.int64)),
            panoptic=panoptic,
        )


class CityscapesDataModule(SegDataModule):
    """Cityscapes fine annotations.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        task: ``semantic`` (19 trainIds, 255 void), ``instance`` (8 thing classes, groups as
            crowd) or ``panoptic`` (19 classes, things flagged; see ``CityscapesPanopticDataset``).
        test_split: split of ``test`` / ``predict`` (the official test split has no labels).
        **kwargs: ``SegDataModule`` arguments (batch size, workers, transforms, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        task: Literal["semantic", "instance", "panoptic"] = "semantic",
        test_split: str = "val",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if task not in ("semantic", "instance", "panoptic"):
            raise ValueError(f"task must be semantic, instance or panoptic, got {task!r}")
        self.root = Path(root)
        self.task = task
        self.test_split = test_split

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.cityscapes import (
            cityscapes_instance_info,
            cityscapes_semantic_info,
        )

        return cityscapes_instance_info() if self.task == "instance" else cityscapes_semantic_info()

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.cityscapes import (
            CityscapesInstanceDataset,
            cityscapes_semantic_dataset,
        )

        split = self.test_split if split == "test" else split
        require_dir(self.root / "leftImg8bit" / split, CITYSCAPES_LAYOUT)
        require_dir(self.root / "gtFine" / split, CITYSCAPES_LAYOUT)
        if self.task == "semantic":
            return cityscapes_semantic_dataset(self.root, split)
        if self.task == "instance":
            return CityscapesInstanceDataset(self.root, split)
        return CityscapesPanopticDataset(self.root, split)
