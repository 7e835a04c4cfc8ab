"""Video DataModules: DAVIS (video object segmentation) and YouTube-VIS (video instances).

Items are clips of ``clip_length`` consecutive frames (``VideoClipDataset``); a clip is augmented
with one set of random parameters (``AlbumentationsTransform.apply_clip``) and ``ClipCollate``
flattens B clips into a ``Batch`` of ``B * T`` frames (``Batch.clip_length = T``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from lightning_seg.data.collate import ClipCollate, Collate
from lightning_seg.data.datamodules.base import (
    SegDataModule,
    describe_layout,
    require_dir,
    require_file,
    split_indices,
)
from lightning_seg.data.io import DataError
from lightning_seg.structures import DatasetInfo

log = logging.getLogger("lightning_seg.data")
YTVIS_NUM_CLASSES = 40

DAVIS_LAYOUT = describe_layout(
    [
        "<root>/JPEGImages/<resolution>/<sequence>/*.jpg",
        "<root>/Annotations/<resolution>/<sequence>/*.png",
        "<root>/ImageSets/<year>/{train,val}.txt   (sequence names, or image/mask path pairs),",
        "  or pass train_sequences / val_sequences",
    ]
)
YTVIS_LAYOUT = describe_layout(
    [
        "<root>/<train_images>/<video>/*.jpg   (default train/JPEGImages)",
        "<root>/<train_ann>                     (default train.json: videos, annotations, categories)",
    ]
)


class SequenceSubset(Dataset):
    """The frames of some sequences of a per-frame video dataset (split by video, no leakage).

    Args:
        dataset: per-frame dataset exposing ``sequences()``.
        keep: indices of the sequences to keep.
    """

    def __init__(self, dataset: Dataset, keep: Sequence[int]) -> None:
        self.dataset = dataset
        self.info = getattr(dataset, "info", None)
        self.skips = getattr(dataset, "skips", None)
        all_sequences = dataset.sequences()  # type: ignore[attr-defined]
        self._sequences = [all_sequences[v] for v in keep]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.dataset[i]

    def sequences(self) -> list[list[int]]:
        return self._sequences


class VideoDataModule(SegDataModule):
    """Base of the video DataModules: per-frame datasets served as clips.

    Args:
        clip_length: frames per clip.
        clip_stride: frames between the starts of consecutive training clips.
        frame_step: frames between consecutive frames of a clip.
        val_clip_stride: stride of validation clips; None: ``clip_length`` (no overlap).
        **kwargs: ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        clip_length: int = 2,
        clip_stride: int = 1,
        frame_step: int = 1,
        val_clip_stride: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self.frame_step = frame_step
        self.val_clip_stride = val_clip_stride or clip_length

    def _frames(self, split: str) -> Dataset:
        """Per-frame dataset of ``split`` (with ``sequences()``)."""
        raise NotImplementedError

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.video import VideoClipDataset

        stride = self.clip_stride if split == "train" else self.val_clip_stride
        return VideoClipDataset(self._frames(split), self.clip_length, stride, self.frame_step)

    def _test_data(self) -> Dataset:
        return self._build_dataset("val")

    def collate(self) -> Collate:
        return ClipCollate(self.size_divisibility, self.ignore_index)


class DavisDataModule(VideoDataModule):
    """DAVIS 2016 / 2017 video object segmentation (class ``object``, track id = object id).

    Args:
        root: folder holding ``JPEGImages/`` and ``Annotations/``.
        year: ``2016`` or ``2017`` (folder of ``ImageSets``).
        resolution: ``480p`` or ``Full-Resolution``.
        train_sequences / val_sequences: sequence names; None: read
            ``ImageSets/<year>/<split>.txt``.
        **kwargs: ``VideoDataModule`` arguments (clip length, batch size, transforms, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        year: str = "2017",
        resolution: str = "480p",
        train_sequences: list[str] | None = None,
        val_sequences: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.year = str(year)
        self.resolution = resolution
        self.sequences = {"train": train_sequences, "val": val_sequences}

    def _build_info(self) -> DatasetInfo:
        return DatasetInfo(class_names=["object"])

    def _sequence_names(self, split: str) -> list[str]:
        given = self.sequences[split]
        if given is not None:
            return list(given)
        list_file = self.root / "ImageSets" / self.year / f"{split}.txt"
        require_file(list_file, DAVIS_LAYOUT)
        names: list[str] = []
        for line in list_file.read_text().splitlines():
            token = line.split()[0] if line.split() else ""
            name = Path(token).parent.name if "/" in token else token
            if name and name not in names:
                names.append(name)
        if not names:
            raise DataError(f"{list_file}: no sequence listed. Expected layout:\n{DAVIS_LAYOUT}")
        return names

    def _frames(self, split: str) -> Dataset:
        from lightning_seg.data.formats.video import DavisDataset

        require_dir(self.root / "JPEGImages" / self.resolution, DAVIS_LAYOUT)
        return DavisDataset(self.root, self._sequence_names(split), self.resolution)


class YouTubeVISDataModule(VideoDataModule):
    """YouTube-VIS (2019 / 2021) video instance segmentation.

    The public ``valid`` split has no annotations, so by default validation holds back
    ``val_videos_from_train`` of the training videos (whole videos: no clip leaks).

    Args:
        root: dataset folder.
        train_ann / train_images: JSON and frame folder of train, relative to ``root``.
        val_ann / val_images: an annotated validation set; None: hold back training videos.
        val_videos_from_train: fraction in ``(0, 1)`` or count of training videos held back.
        split_seed: seed of the hold-out permutation.
        allow_absolute_paths: trust the annotation files' frame paths (absolute ones opened as
            they are, relative ones may lead out of the frame folder); default: ``DataError``.
        **kwargs: ``VideoDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train_ann: str = "train.json",
        train_images: str = "train/JPEGImages",
        val_ann: str | None = None,
        val_images: str | None = None,
        val_videos_from_train: float | int = 0.1,
        split_seed: int = 0,
        allow_absolute_paths: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.allow_absolute_paths = allow_absolute_paths
        self.train_ann, self.train_images = self.root / train_ann, self.root / train_images
        self.val_ann = None if val_ann is None else self.root / val_ann
        self.val_images = self.root / (val_images or "valid/JPEGImages")
        self.val_videos_from_train = val_videos_from_train
        self.split_seed = split_seed
        self._train_frames: Dataset | None = None

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.datamodules.coco import read_categories
        from lightning_seg.data.formats.coco import coco_dataset_info

        for ann in (self.val_ann, self.train_ann):
            if ann is not None and ann.is_file():
                return coco_dataset_info(read_categories(ann))
        log.warning(
            "%s: no annotation file at %s yet; using a placeholder DatasetInfo with YouTube-VIS's "
            "%d classes so the model can be built. Expected layout:\n%s",
            type(self).__name__, self.train_ann, YTVIS_NUM_CLASSES, YTVIS_LAYOUT,
        )
        return DatasetInfo(class_names=[f"class_{i}" for i in range(YTVIS_NUM_CLASSES)],
                           category_ids=list(range(1, YTVIS_NUM_CLASSES + 1)))

    def _all_train_frames(self) -> Dataset:
        from lightning_seg.data.formats.video import YouTubeVISDataset

        if self._train_frames is None:
            require_file(self.train_ann, YTVIS_LAYOUT)
            require_dir(self.train_images, YTVIS_LAYOUT)
            self._train_frames = YouTubeVISDataset(
                self.train_images, self.train_ann, allow_absolute_paths=self.allow_absolute_paths
            )
        return self._train_frames

    def _frames(self, split: str) -> Dataset:
        from lightning_seg.data.formats.video import YouTubeVISDataset

        if split == "val" and self.val_ann is not None:
            require_file(self.val_ann, YTVIS_LAYOUT)
            return YouTubeVISDataset(
                self.val_images, self.val_ann, allow_absolute_paths=self.allow_absolute_paths
            )
        frames = self._all_train_frames()
        if self.val_ann is not None or not self.val_videos_from_train:
            return frames
        kept, held = split_indices(len(frames.sequences()), self.val_videos_from_train, self.split_seed)
        return SequenceSubset(frames, kept if split == "train" else held)
