"""Cityscapes: semantic (``*_gtFine_labelIds.png`` -> 19 trainIds) and instances
(``*_gtFine_instanceIds.png``).

Layout: ``<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
``<root>/gtFine/<split>/<city>/<name>_gtFine_{labelIds,instanceIds}.png``.

``CITYSCAPES_LABELS`` is the official label table (cityscapesScripts ``helpers/labels.py``):
34 label ids (0..33) plus the license plate (-1, never written in ground-truth images). Training
uses the 19 labels with a trainId; every other label maps to 255 (ignore).

Instance ids: a pixel of an individually annotated object of a class with instances carries
``labelId * 1000 + k``; stuff pixels and *groups* of objects (crowd) carry the plain labelId.
``CityscapesInstanceDataset`` returns one instance per ``id >= 1000`` of the 8 evaluated thing
classes (caravan and trailer have instances but no trainId and are left out, as in the official
evaluation) and one ``iscrowd`` instance per thing class that has group pixels.

Bad input: as ``label_png`` (missing files at construction, sizes and out-of-range label ids at
item time, all ``DataError``; image conversions counted as repairs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.data.formats.common import image_tensor, load_rgb
from lightning_seg.data.formats.label_png import LabelPngDataset
from lightning_seg.data.formats.masks import masks_to_boxes
from lightning_seg.data.io import DataError, read_label_map
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import DatasetInfo, InstanceTargets, Sample, SampleMeta


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS = [
    # name, id, trainId, category, catId, hasInstances, ignoreInEval, color
    CityscapesLabel("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
]
# fmt: on

NUM_LABEL_IDS = 34


def label_id_to_train_id() -> np.ndarray:
    """``int64[34]`` lookup table labelId -> trainId (255 for labels not trained on)."""
    lut = np.full(NUM_LABEL_IDS, 255, dtype=np.int64)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.id < NUM_LABEL_IDS:
            lut[label.id] = label.train_id if label.train_id >= 0 else 255
    return lut


def _train_labels() -> list[CityscapesLabel]:
    return sorted(
        (lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255), key=lambda x: x.train_id
    )


def cityscapes_semantic_info() -> DatasetInfo:
    """The 19 training classes (index = trainId), things = classes with instances."""
    labels = _train_labels()
    return DatasetInfo(
        class_names=[lab.name for lab in labels],
        category_ids=[lab.id for lab in labels],
        isthing=[lab.has_instances for lab in labels],
        ignore_index=255,
        palette=[lab.color for lab in labels],
    )


def cityscapes_instance_info() -> DatasetInfo:
    """The 8 evaluated thing classes (person ... bicycle); ``category_ids`` are labelIds."""
    labels = [lab for lab in _train_labels() if lab.has_instances]
    return DatasetInfo(
        class_names=[lab.name for lab in labels],
        category_ids=[lab.id for lab in labels],
        palette=[lab.color for lab in labels],
    )


def _pairs(root: Path, split: str, suffix: str) -> tuple[list[tuple[Path, Path]], Path]:
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        raise DataError(
            f"{image_root}: folder not found. Pass the Cityscapes root (holding leftImg8bit/ and "
            f"gtFine/) and a split such as train, val or test."
        )
    pairs = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_{suffix}.png"
        pairs.append((image, label))
    return pairs, image_root


def cityscapes_semantic_dataset(root: str | os.PathLike, split: str) -> LabelPngDataset:
    """Cityscapes semantic segmentation: ``labelIds`` mapped to the 19 trainIds (255 ignore)."""
    pairs, image_root = _pairs(Path(root), split, "labelIds")
    return LabelPngDataset(
        pairs, cityscapes_semantic_info(), label_lut=label_id_to_train_id(), source=str(image_root)
    )


class CityscapesInstanceDataset(Dataset):
    """Cityscapes instance segmentation from ``*_gtFine_instanceIds.png``.

    Args:
        root: Cityscapes root (``leftImg8bit/``, ``gtFine/``).
        split: ``train``, ``val`` or ``test``.

    ``Sample.instances``: labels index ``info.class_names`` (8 things), boxes enclose the
    masks (x2/y2 exclusive), ``iscrowd`` marks class-wide group regions.
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.pairs, image_root = _pairs(Path(root), split, "instanceIds")
        self.info = cityscapes_instance_info()
        self.skips = SkipReport(str(image_root))
        for image, label in self.pairs:
            if not label.is_file():
                raise DataError(
                    f"{label}: instance ids of {image.name} not found. Download gtFine for this "
                    f"split or remove the image."
                )
        lut = np.full(NUM_LABEL_IDS, -1, dtype=np.int64)
        for index, label_id in enumerate(self.info.category_ids):
            lut[label_id] = index
        self._thing_index = lut
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:
        image_path, label_path = self.pairs[i]
        image = load_rgb(image_path, self.skips)
        ids = read_label_map(label_path)
        if ids.shape != image.shape[:2]:
            raise DataError(
                f"{label_path}: instance map is {ids.shape[0]}x{ids.shape[1]} but its image "
                f"{image_path} is {image.shape[0]}x{image.shape[1]}; use matching files."
            )
        uniq = np.unique(ids)
        label_ids = np.where(uniq >= 1000, uniq // 1000, uniq)
        bad = uniq[(label_ids < 0) | (label_ids >= NUM_LABEL_IDS)]
        if len(bad):
            raise DataError(
                f"{label_path}: ids {bad[:10].tolist()} are not Cityscapes instance ids "
                f"(labelId or labelId * 1000 + k, labelId < {NUM_LABEL_IDS}). The file is not "
                f"an *_instanceIds.png; check the split folders."
            )
        index = self._thing_index[label_ids]
        keep = index >= 0
        uniq, index = uniq[keep], index[keep]
        crowd = uniq < 1000
        masks = ids[None] == uniq[:, None, None]  # [N, H, W]
        h, w = ids.shape
        targets = InstanceTargets(
            boxes=torch.from_numpy(masks_to_boxes(masks)),
            labels=torch.from_numpy(index.astype(np.int64)),
            image_size=(h, w),
            masks=torch.from_numpy(masks),
            iscrowd=torch.from_numpy(crowd),
        )
        meta = SampleMeta(image_id=i, file_name=str(image_path), orig_size=(h, w))
        return Sample(image=image_tensor(image), meta=meta, instances=targets)
