"""COCO (instances / keypoints / panoptic) and LVIS DataModules.

``info`` is read from the categories of an annotation file (val first: smaller) without
building the index; when no annotation file exists yet (a config parsed on a machine without
the data), a placeholder with COCO's / LVIS's standard class count is used so that the model
can still be built, and a warning says so. ``setup`` then fails with the expected layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from lightning_seg.constants import (
    COCO_NUM_STUFF,
    COCO_NUM_THINGS,
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_KEYPOINT_SIGMAS,
    LVIS_NUM_CLASSES,
)
from lightning_seg.data.datamodules.base import (
    SegDataModule,
    describe_layout,
    require_dir,
    require_file,
)
from lightning_seg.structures import DatasetInfo

log = logging.getLogger("lightning_seg.data")

CocoTask = Literal["instance", "keypoints", "panoptic"]
_ANN_PREFIX = {"instance": "instances", "keypoints": "person_keypoints", "panoptic": "panoptic"}

COCO_LAYOUT = describe_layout(
    [
        "<root>/train2017/*.jpg, <root>/val2017/*.jpg",
        "<root>/annotations/instances_{train,val}2017.json          (task: instance)",
        "<root>/annotations/person_keypoints_{train,val}2017.json   (task: keypoints)",
        "<root>/annotations/panoptic_{train,val}2017.json + annotations/panoptic_{train,val}2017/*.png"
        "   (task: panoptic)",
        "(or set train_ann / val_ann / train_images / val_images / *_panoptic_dir, relative to <root>)",
    ]
)
LVIS_LAYOUT = describe_layout(
    [
        "<root>/lvis_v1_train.json, <root>/lvis_v1_val.json",
        "<image_root>/train2017/*.jpg, <image_root>/val2017/*.jpg   (the COCO 2017 images)",
    ]
)


def read_categories(ann_file: Path) -> list[dict]:
    """The ``categories`` of a COCO-style file, skipping over its (possibly huge) annotations."""
    from lightning_seg.data.formats.coco import check_categories
    from lightning_seg.data.formats.jsonio import load_json_chunked

    top = load_json_chunked(ann_file, "annotations", lambda records: None)
    return check_categories(Path(ann_file), top.get("categories") or [])


def coco_placeholder_info(task: str) -> DatasetInfo:
    """Standard COCO class / keypoint counts with generic names (no annotation file at hand)."""
    from lightning_seg.data.formats.coco import keypoint_flip_map

    if task == "keypoints":
        names = list(COCO_PERSON_KEYPOINT_NAMES)
        return DatasetInfo(
            class_names=["person"],
            category_ids=[1],
            keypoint_names=names,
            keypoint_flip_map=keypoint_flip_map(names),
            keypoint_sigmas=list(COCO_PERSON_KEYPOINT_SIGMAS),
        )
    num_stuff = COCO_NUM_STUFF if task == "panoptic" else 0
    return DatasetInfo(
        class_names=[f"class_{i}" for i in range(COCO_NUM_THINGS + num_stuff)],
        isthing=[True] * COCO_NUM_THINGS + [False] * num_stuff,
    )


class CocoDataModule(SegDataModule):
    """COCO 2017 (or any COCO-format data): instances, person keypoints or panoptic.

    Paths are relative to ``root`` (absolute paths are kept); None picks the COCO 2017 layout.

    Args:
        root: dataset folder.
        task: ``instance`` (boxes + masks), ``keypoints`` (+ keypoints with the flip map) or
            ``panoptic`` (segments + semantic map + thing instances).
        train_ann / val_ann / test_ann: annotation JSON files (test: defaults to val's).
        train_images / val_images / test_images: image folders.
        train_panoptic_dir / val_panoptic_dir / test_panoptic_dir: panoptic PNG folders.
        drop_empty_train: leave training images without annotations out.
        allow_absolute_paths: trust the annotation files' image paths: absolute ``file_name``
            values are opened as they are and relative ones may lead out of the image folder
            (``..``). Default: such a name fails at setup with a ``DataError``.
        **kwargs: ``SegDataModule`` arguments (batch size, workers, transforms, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        task: CocoTask = "instance",
        train_ann: str | None = None,
        val_ann: str | None = None,
        test_ann: str | None = None,
        train_images: str | None = None,
        val_images: str | None = None,
        test_images: str | None = None,
        train_panoptic_dir: str | None = None,
        val_panoptic_dir: str | None = None,
        test_panoptic_dir: str | None = None,
        drop_empty_train: bool = True,
        allow_absolute_paths: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if task not in _ANN_PREFIX:
            raise ValueError(f"task must be one of {tuple(_ANN_PREFIX)}, got {task!r}")
        self.root = Path(root)
        self.task = task
        self.drop_empty_train = drop_empty_train
        self.allow_absolute_paths = allow_absolute_paths
        prefix = _ANN_PREFIX[task]
        self.paths: dict[str, dict[str, Path]] = {}
        given = {
            "train": (train_ann, train_images, train_panoptic_dir),
            "val": (val_ann, val_images, val_panoptic_dir),
            "test": (test_ann, test_images, test_panoptic_dir),
        }
        for split, (ann, images, pan) in given.items():
            name = "val" if split == "test" and ann is None else split
            ann = ann or (given["val"][0] if split == "test" else None)
            images = images or (given["val"][1] if split == "test" else None)
            pan = pan or (given["val"][2] if split == "test" else None)
            self.paths[split] = {
                "ann": self.root / (ann or f"annotations/{prefix}_{name}2017.json"),
                "images": self.root / (images or f"{name}2017"),
                "panoptic": self.root / (pan or f"annotations/panoptic_{name}2017"),
            }

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.coco import coco_dataset_info

        for split in ("val", "train"):
            ann = self.paths[split]["ann"]
            if ann.is_file():
                return coco_dataset_info(read_categories(ann))
        log.warning(
            "%s: no annotation file at %s yet; using a placeholder DatasetInfo with COCO's "
            "standard class count so the model can be built. Expected layout:\n%s",
            type(self).__name__, self.paths["val"]["ann"], COCO_LAYOUT,
        )
        return coco_placeholder_info(self.task)

    def _build_dataset(self, split: str) -> Dataset:
        paths = self.paths[split]
        require_dir(self.root, COCO_LAYOUT)
        require_file(paths["ann"], COCO_LAYOUT)
        require_dir(paths["images"], COCO_LAYOUT)
        if self.task == "panoptic":
            from lightning_seg.data.formats.coco_panoptic import CocoPanopticDataset

            require_dir(paths["panoptic"], COCO_LAYOUT)
            return CocoPanopticDataset(
                paths["images"], paths["ann"], paths["panoptic"],
                allow_absolute_paths=self.allow_absolute_paths,
            )
        from lightning_seg.data.formats.coco import CocoInstanceDataset

        return CocoInstanceDataset(
            paths["images"],
            paths["ann"],
            with_masks=True,
            with_keypoints=self.task == "keypoints",
            drop_empty=self.drop_empty_train and split == "train",
            allow_absolute_paths=self.allow_absolute_paths,
        )


class LvisDataModule(SegDataModule):
    """LVIS v1 instance segmentation (1203 classes, federated annotation).

    Args:
        root: folder with the LVIS JSON files.
        image_root: the COCO image root holding ``train2017/`` and ``val2017/`` (LVIS v1 names
            images by their COCO URL); None: ``root``.
        train_ann / val_ann: JSON files relative to ``root``.
        drop_empty_train: leave training images without annotations out.
        allow_absolute_paths: as ``CocoDataModule``.
        **kwargs: ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        train_ann: str = "lvis_v1_train.json",
        val_ann: str = "lvis_v1_val.json",
        drop_empty_train: bool = True,
        allow_absolute_paths: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root is not None else self.root
        self.anns = {"train": self.root / train_ann, "val": self.root / val_ann, "test": self.root / val_ann}
        self.drop_empty_train = drop_empty_train
        self.allow_absolute_paths = allow_absolute_paths

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.coco import coco_dataset_info

        for split in ("val", "train"):
            if self.anns[split].is_file():
                return coco_dataset_info(read_categories(self.anns[split]))
        log.warning(
            "%s: no annotation file at %s yet; using a placeholder DatasetInfo with LVIS v1's "
            "%d classes so the model can be built. Expected layout:\n%s",
            type(self).__name__, self.anns["val"], LVIS_NUM_CLASSES, LVIS_LAYOUT,
        )
        return DatasetInfo(class_names=[f"class_{i}" for i in range(LVIS_NUM_CLASSES)],
                           category_ids=list(range(1, LVIS_NUM_CLASSES + 1)))

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.lvis import LvisDataset

        require_file(self.anns[split], LVIS_LAYOUT)
        require_dir(self.image_root, LVIS_LAYOUT)
        return LvisDataset(
            self.image_root, self.anns[split],
            drop_empty=self.drop_empty_train and split == "train",
            allow_absolute_paths=self.allow_absolute_paths,
        )
