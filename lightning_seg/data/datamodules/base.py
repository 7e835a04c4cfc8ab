"""What every DataModule shares: loaders, transforms, collate and the dataset facts.

A subclass provides ``_build_info()`` (cheap, no data needed: ``info`` is read by LightningCLI's
``link_arguments(..., apply_on="instantiate")`` right after ``__init__``) and
``_build_dataset(split)`` (called in ``setup``; raises ``DataError`` naming the expected layout
when the data is missing). The base class wraps the raw datasets with the transforms, holds back
a validation part of train when asked, and builds the loaders with ``Collate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_seg.data.collate import Collate
from lightning_seg.data.io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DataError,
    max_image_pixels,
    set_max_image_pixels,
)
from lightning_seg.data.transforms import AlbumentationsTransform, ChainTransform, LimitSize
from lightning_seg.structures import DatasetInfo, Sample

log = logging.getLogger("lightning_seg.data")

Transform = Callable[[Sample], Sample]


class TransformedDataset(Dataset):
    """A dataset whose items go through a transform.

    Items may be a ``Sample`` or a clip (``list[Sample]``); a clip is transformed with
    ``transform.apply_clip`` when the transform has it (same parameters for every frame).
    ``max_image_pixels`` (``io.set_max_image_pixels``) is applied in the process that reads
    the item, so that DataLoader workers started by ``spawn`` get it too.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Transform | None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        if max_image_pixels() != self.max_image_pixels:  # a fresh (spawned) worker process
            set_max_image_pixels(self.max_image_pixels)
        item = self.dataset[i]
        if self.transform is None:
            return item
        if isinstance(item, (list, tuple)):
            apply_clip = getattr(self.transform, "apply_clip", None)
            return apply_clip(item) if apply_clip else [self.transform(s) for s in item]
        return self.transform(item)


def split_indices(num_items: int, holdout: float | int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministically split ``range(num_items)`` into (kept, held out).

    Args:
        num_items: dataset length.
        holdout: fraction in ``(0, 1)`` or a count ``>= 1`` of items to hold out.
        seed: seed of the permutation (the same seed always holds back the same items).
    """
    if isinstance(holdout, float) and 0 < holdout < 1:
        count = max(1, round(num_items * holdout))
    else:
        count = int(holdout)
    if not 0 < count < num_items:
        raise ValueError(
            f"cannot hold back {holdout} of {num_items} items: keep at least one item for "
            f"training (use a fraction in (0, 1) or a count below {num_items})"
        )
    perm = np.random.default_rng(seed).permutation(num_items)
    held = sorted(perm[:count].tolist())
    kept = sorted(perm[count:].tolist())
    return kept, held


def first_items(dataset: Dataset, max_items: int | None) -> Dataset:
    """The first ``max_items`` items (all when None or larger than the dataset)."""
    if max_items is None or max_items >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, list(range(max_items)))


def require_dir(path: Path, layout: str) -> None:
    """Raise a ``DataError`` naming ``layout`` when ``path`` is not a folder."""
    if not Path(path).is_dir():
        raise DataError(f"{path}: dataset folder not found. Expected layout:\n{layout}")


def require_file(path: Path, layout: str) -> None:
    """Raise a ``DataError`` naming ``layout`` when ``path`` is not a file."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found. Expected layout:\n{layout}")


class SegDataModule(L.LightningDataModule):
    """Base DataModule of lightning_seg.

    Args:
        batch_size: training batch size (per device).
        num_workers: DataLoader worker processes.
        train_transform: applied to every training ``Sample`` (e.g.
            ``lightning_seg.data.transforms.TrainTransform``); None: no augmentation. The
            DataModule binds it to ``info`` (keypoint flip map, ignore index).
        val_transform: applied to validation / test / predict samples; None: none.
        size_divisibility: the collate pads images to a multiple of this.
        pin_memory: DataLoader ``pin_memory`` (effective once ``Batch`` has a ``pin_memory``
            method; harmless before).
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        val_batch_size: batch size of validation / test / predict; None: ``batch_size``.
        max_train_samples: use only the first N training samples (smoke runs); None: all.
        max_val_samples: use only the first N validation samples; None: all.
        predict_images: a folder of images for ``lseg predict`` (every type PIL reads:
            png, jpg / jpeg, bmp, tif / tiff, webp, any case; ``ImageFolderDataset``);
            unreadable images are left out and reported. None: predict on the test split.
        predict_max_size: for ``predict``, shrink images whose longer side exceeds this many
            pixels (after ``val_transform``; ``LimitSize``), so that a huge photo does not
            run out of memory in the backbone; predictions are mapped back to the size on
            disk. The default 2048 keeps full-resolution Cityscapes frames (2048 x 1024)
            unchanged; detectron2 tests COCO at a longer side of 1333. None: no limit.
        max_image_pixels: largest image, in pixels, the readers decode
            (``io.set_max_image_pixels``, PIL's decompression-bomb guard); a larger image is
            a ``DataError`` naming the file (a predict folder leaves it out). None: no limit.
        repeat_factor_thresh: repeat-factor sampling of the training images (LVIS;
            ``lightning_seg.data.samplers``): images with categories present in fewer than
            this fraction of the images are repeated (RefineMask's LVIS config: 1e-3). None:
            plain shuffling. Needs a dataset that knows its items' categories (COCO / LVIS).
        repeat_factor_rounding: ``"ceil"`` (mmdetection, RefineMask's official config) or
            ``"stochastic"`` (detectron2) repeat counts.
    """

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 4,
        train_transform: AlbumentationsTransform | None = None,
        val_transform: AlbumentationsTransform | None = None,
        size_divisibility: int = 32,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        val_batch_size: int | None = None,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        predict_images: str | None = None,
        predict_max_size: int | None = 2048,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        repeat_factor_thresh: float | None = None,
        repeat_factor_rounding: str = "ceil",
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.size_divisibility = size_divisibility
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.val_batch_size = val_batch_size or batch_size
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        if predict_max_size is not None and predict_max_size < 1:
            raise ValueError(f"predict_max_size must be >= 1 or None, got {predict_max_size}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1 or None, got {max_image_pixels}")
        self.predict_images = predict_images
        self.predict_max_size = predict_max_size
        self.max_image_pixels = max_image_pixels
        if repeat_factor_thresh is not None and repeat_factor_thresh <= 0:
            raise ValueError(f"repeat_factor_thresh must be > 0 or None, got {repeat_factor_thresh}")
        self.repeat_factor_thresh = repeat_factor_thresh
        self.repeat_factor_rounding = repeat_factor_rounding
        self._info: DatasetInfo | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self._predict_source: Dataset | None = None

    # --------------------------------------------------------------------------- dataset facts
    def _build_info(self) -> DatasetInfo:
        """The dataset's classes / keypoints, computed without loading the data."""
        raise NotImplementedError

    @property
    def info(self) -> DatasetInfo:
        if self._info is None:
            self._info = self._build_info()
        return self._info

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def ignore_index(self) -> int:
        return self.info.ignore_index

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    @property
    def num_keypoints(self) -> int:
        return self.info.num_keypoints

    @property
    def keypoint_flip_map(self) -> list[tuple[int, int]]:
        return list(self.info.keypoint_flip_map)

    @property
    def thing_classes(self) -> list[int]:
        return self.info.thing_classes

    @property
    def stuff_classes(self) -> list[int]:
        return self.info.stuff_classes

    # ---------------------------------------------------------------------------------- datasets
    def _build_dataset(self, split: str) -> Dataset:
        """The raw dataset of ``split`` ("train", "val" or "test"); raises ``DataError`` with the
        expected layout when the files are missing."""
        raise NotImplementedError

    def _train_data(self) -> Dataset:
        return self._build_dataset("train")

    def _val_data(self) -> Dataset:
        return self._build_dataset("val")

    def _test_data(self) -> Dataset:
        """Test / predict data: the "test" split (subclasses without one return val)."""
        return self._build_dataset("test")

    def _check_info(self, dataset: Dataset, split: str) -> None:
        """The dataset read from disk must agree with ``info`` (already linked into the model)."""
        found = getattr(dataset, "info", None)
        if found is None:
            return
        if list(found.class_names) != list(self.info.class_names):
            raise DataError(
                f"{type(self).__name__}: the {split} data has {found.num_classes} classes "
                f"{found.class_names[:5]}... but the DataModule announced {self.info.num_classes} "
                f"{self.info.class_names[:5]}... (the annotation files disagree): use files with "
                f"the same category list."
            )

    def _bind(self, transform: Transform | None) -> Transform | None:
        bind = getattr(transform, "bind", None)
        if bind is not None:
            bind(self.info)
        return transform

    def _wrap(self, dataset: Dataset, split: str, max_items: int | None, transform) -> Dataset:
        self._check_info(dataset, split)
        return TransformedDataset(
            first_items(dataset, max_items), self._bind(transform), self.max_image_pixels
        )

    def _predict_data(self) -> Dataset:
        """``predict_images`` as an ``ImageFolderDataset``, else the test data."""
        if self.predict_images is None:
            return self._test_data()
        from lightning_seg.data.formats.image_folder import ImageFolderDataset

        data = ImageFolderDataset(self.predict_images)
        rank_zero_info(
            f"predict: {data.folder}: {data.description}"
            + (f"; {data.skips.num_skipped} cannot be read and are left out (listed in the "
               f"warning above and at the end)" if data.skips.num_skipped else "")
        )
        return data

    def _predict_transform(self) -> Transform | None:
        if self.predict_max_size is None:
            return self.val_transform
        return ChainTransform([self.val_transform, LimitSize(self.predict_max_size)])

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (None: fit and validate); idempotent."""
        set_max_image_pixels(self.max_image_pixels)
        if stage in (None, "fit") and self.train_dataset is None:
            data = self._train_data()
            self.train_dataset = self._wrap(data, "train", self.max_train_samples, self.train_transform)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            data = self._val_data()
            self.val_dataset = self._wrap(data, "val", self.max_val_samples, self.val_transform)
        if stage == "test" and self.test_dataset is None:
            data = self._test_data()
            self.test_dataset = self._wrap(data, "test", self.max_val_samples, self.val_transform)
        if stage == "predict" and self.predict_dataset is None:
            self._predict_source = self._predict_data()
            self.predict_dataset = self._wrap(
                self._predict_source, "predict", self.max_val_samples, self._predict_transform()
            )

    def teardown(self, stage: str) -> None:
        """After ``predict``: repeat what was left out, so that it is not lost in the log."""
        skips = getattr(self._predict_source, "skips", None)
        if stage == "predict" and skips is not None and skips.num_skipped:
            rank_zero_warn(f"predict: left out {skips.num_skipped} image(s):\n{skips.summary()}")

    # ---------------------------------------------------------------------------------- loaders
    def collate(self) -> Collate:
        return Collate(size_divisibility=self.size_divisibility, ignore_index=self.ignore_index)

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int, stage: str,
                sampler=None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup({stage!r}) before {stage}_dataloader()")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, True, self.batch_size, "fit", self.train_sampler())

    def train_sampler(self):
        """The training sampler: a ``RepeatFactorSampler`` with ``repeat_factor_thresh``, else
        None (the loader shuffles)."""
        if self.repeat_factor_thresh is None or self.train_dataset is None:
            return None
        from lightning_seg.data.samplers import (
            RepeatFactorSampler,
            describe,
            item_categories,
            repeat_factors,
        )

        factors = repeat_factors(item_categories(self.train_dataset), self.repeat_factor_thresh)
        rank_zero_info(f"{type(self).__name__}: {describe(factors, self.repeat_factor_rounding)}")
        return RepeatFactorSampler(factors, self.repeat_factor_rounding)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False, self.val_batch_size, "validate")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, False, self.val_batch_size, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, False, self.val_batch_size, "predict")


class HoldoutMixin:
    """For datasets shipped without a usable val split: hold back part of train.

    The subclass stores ``val_split_from_train`` (a fraction in ``(0, 1)`` or a count; 0 means
    "use the val split") and ``split_seed``; the same seed always holds back the same images.
    """

    val_split_from_train: float | int
    split_seed: int
    _holdout_cache: tuple[Dataset, Dataset] | None = None

    def _holdout(self) -> tuple[Dataset, Dataset]:
        if self._holdout_cache is None:
            full = self._build_dataset("train")  # type: ignore[attr-defined]
            kept, held = split_indices(len(full), self.val_split_from_train, self.split_seed)
            train, val = Subset(full, kept), Subset(full, held)
            train.info = val.info = getattr(full, "info", None)  # type: ignore[attr-defined]
            self._holdout_cache = (train, val)
        return self._holdout_cache

    def _train_data(self) -> Dataset:
        if not self.val_split_from_train:
            return self._build_dataset("train")  # type: ignore[attr-defined]
        return self._holdout()[0]

    def _val_data(self) -> Dataset:
        if not self.val_split_from_train:
            return self._build_dataset("val")  # type: ignore[attr-defined]
        return self._holdout()[1]


def describe_layout(lines: Sequence[str]) -> str:
    """Indent a folder layout for an error message."""
    return "\n".join("  " + line for line in lines)
