"""The synthetic shapes world as a DataModule: the default for demos, quickstart and tests.

``prepare_data`` writes the world (``lightning_seg.data.synthetic.generate_shapes_world``,
idempotent: an existing identical world is reused) and ``setup`` reads it back with the same
readers as real data: COCO instances / keypoints, COCO panoptic, label PNGs, YouTube-VIS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from lightning_seg.data.collate import ClipCollate, Collate
from lightning_seg.data.datamodules.base import SegDataModule
from lightning_seg.structures import DatasetInfo

Task = Literal["semantic", "instance", "keypoints", "panoptic", "video"]
TASKS = ("semantic", "instance", "keypoints", "panoptic", "video")


def default_cache_dir() -> Path:
    """``$LSEG_CACHE_DIR`` or ``~/.cache/lightning_seg``."""
    env = os.environ.get("LSEG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lightning_seg"


class SyntheticShapesDataModule(SegDataModule):
    """Shapes world (circle, triangle, square, star over sky / ground / water) for any task.

    Args:
        task: which targets the samples carry: ``semantic`` (7 classes, things then stuff),
            ``instance`` (4 things, masks), ``keypoints`` (4 things, masks and 5 keypoints with a
            left/right flip map), ``panoptic`` (segments + semantic + thing instances) or
            ``video`` (clips of frames with instance masks and track ids, YouTube-VIS format).
        root: folder of the world; None: ``default_cache_dir()/shapes_<parameters>``.
        num_train: train images (videos for ``video``).
        num_val: val images (videos).
        seed: world seed (same parameters, byte-identical world).
        height: image height (mean height when ``vary_size``).
        width: image width.
        vary_size: every image gets its own size in 0.75..1.25 x (height, width).
        max_objects: most shapes per image.
        num_frames: frames per video (``video``).
        clip_length: frames per training / validation clip (``video``).
        clip_stride: frames between the starts of consecutive clips (``video``).
        **kwargs: ``SegDataModule`` arguments (batch size, workers, transforms, ...).
    """

    def __init__(
        self,
        task: Task = "instance",
        root: str | os.PathLike | None = None,
        num_train: int = 64,
        num_val: int = 16,
        seed: int = 0,
        height: int = 128,
        width: int = 160,
        vary_size: bool = False,
        max_objects: int = 6,
        num_frames: int = 8,
        clip_length: int = 2,
        clip_stride: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed
        self.height = height
        self.width = width
        self.vary_size = vary_size
        self.max_objects = max_objects
        self.num_frames = num_frames
        self.clip_length = clip_length
        self.clip_stride = clip_stride
        self.root = Path(root) if root is not None else default_cache_dir() / self._world_name()

    def _world_name(self) -> str:
        kind = f"video{self.num_frames}" if self.task == "video" else "images"
        vary = "_vary" if self.vary_size else ""
        return (
            f"shapes_{kind}_n{self.num_train}-{self.num_val}_seed{self.seed}_"
            f"{self.height}x{self.width}{vary}_obj{self.max_objects}"
        )

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.synthetic import (
            shapes_instance_info,
            shapes_keypoint_info,
            shapes_panoptic_info,
            shapes_semantic_info,
        )

        return {
            "semantic": shapes_semantic_info,
            "instance": shapes_instance_info,
            "keypoints": shapes_keypoint_info,
            "panoptic": shapes_panoptic_info,
            "video": shapes_instance_info,
        }[self.task]()

    def prepare_data(self) -> None:
        """Write the world to ``root`` unless the same world is already there."""
        from lightning_seg.data.synthetic import generate_shapes_world

        generate_shapes_world(
            self.root,
            self.num_train,
            seed=self.seed,
            num_val=self.num_val,
            height=self.height,
            width=self.width,
            video=self.task == "video",
            num_frames=self.num_frames,
            max_objects=self.max_objects,
            vary_size=self.vary_size,
        )

    def setup(self, stage: str | None = None) -> None:
        # Also when setup is called directly (tests, notebooks); a world already written costs one
        # read of its manifest, and one another process is still writing is waited for.
        self.prepare_data()
        super().setup(stage)

    def _test_data(self) -> Dataset:
        return self._build_dataset("val")

    def _build_dataset(self, split: str) -> Dataset:
        folder = self.root / split
        if self.task == "semantic":
            from lightning_seg.data.formats.label_png import LabelPngDataset

            pairs = [(p, folder / "semantic" / p.name) for p in sorted((folder / "images").glob("*.png"))]
            return LabelPngDataset(pairs, self.info, source=str(folder / "semantic"))
        if self.task in ("instance", "keypoints"):
            from lightning_seg.data.formats.coco import CocoInstanceDataset

            ann = "keypoints.json" if self.task == "keypoints" else "instances.json"
            return CocoInstanceDataset(
                folder / "images", folder / ann, with_masks=True, with_keypoints=self.task == "keypoints"
            )
        if self.task == "panoptic":
            from lightning_seg.data.formats.coco_panoptic import CocoPanopticDataset

            return CocoPanopticDataset(folder / "images", folder / "panoptic.json", folder / "panoptic")
        from lightning_seg.data.formats.video import VideoClipDataset, YouTubeVISDataset

        frames = YouTubeVISDataset(folder / "frames", folder / "video_instances.json")
        return VideoClipDataset(frames, self.clip_length, stride=self.clip_stride)

    def collate(self) -> Collate:
        if self.task == "video":
            return ClipCollate(self.size_divisibility, self.ignore_index)
        return super().collate()
