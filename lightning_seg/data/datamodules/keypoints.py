"""Top-down keypoint DataModules: MPII, COCO person keypoints, face landmarks, shapes world.

Every sample is one instance cropped to ``input_size`` by ``TopDownAffine`` (random scale,
rotation, flip and colour for training, the deterministic crop otherwise), with its keypoints
as ``Sample.keypoints`` and the crop in ``SampleMeta.crop``. ``info`` carries the keypoint
names, the left/right flip map, the skeleton and the OKS sigmas to the model and the metrics.

Which metric a dataset calls for (the keypoint task's ``metrics`` argument) and what its
``norm_size`` holds:

===========  ==========================================  ===================================
dataset      metric                                      ``KeypointTargets.norm_size``
===========  ==========================================  ===================================
MPII         PCKh@0.5                                    0.6 x head-box diagonal
                                                         (``headbox_file``)
COCO         OKS AP (and PCK@0.2 of the box)             none
300-W, WFLW  NME, inter-ocular (outer eye corners)       that distance
COFW         NME, inter-pupil                            that distance
AFLW         NME, box size                               the file's ``box_size``
shapes       PCK@0.2 of the box, OKS AP                  none
===========  ==========================================  ===================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset

from lightning_seg.constants import FACE_NME_NORM, FACE_NUM_LANDMARKS
from lightning_seg.data.datamodules.base import (
    SegDataModule,
    describe_layout,
    require_dir,
    require_file,
)
from lightning_seg.data.topdown import TopDownAffine
from lightning_seg.structures import DatasetInfo

log = logging.getLogger("lightning_seg.data")


class TopDownDataModule(SegDataModule):
    """Base of the top-down keypoint DataModules: builds the crop transforms.

    Args:
        input_size: ``(H, W)`` of the crops (the network input).
        box_padding: box enlargement after the aspect-ratio fix (``TopDownAffine``).
        scale_sigma: std of the log2 scale augmentation, clipped at 2 sigma (0.25).
        rotation_sigma: std of the rotation augmentation in degrees, clipped at 2 sigma (30).
        rotation_prob: probability of a rotation (0.4).
        flip_prob: probability of a horizontal flip (0.5; left/right keypoints swapped).
        color_range: per-channel colour gain range (0.6, 1.4); None: none.
        augment_seed: seed of the augmentation stream; None: fresh entropy.
        **kwargs: ``SegDataModule`` arguments (batch size, workers, ...); the transforms are
            these crops, so ``train_transform`` / ``val_transform`` are not taken.
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (256, 256),
        box_padding: float = 1.25,
        scale_sigma: float = 0.25,
        rotation_sigma: float = 30.0,
        rotation_prob: float = 0.4,
        flip_prob: float = 0.5,
        color_range: tuple[float, float] | None = (0.6, 1.4),
        augment_seed: int | None = None,
        **kwargs,
    ) -> None:
        for key in ("train_transform", "val_transform"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"{type(self).__name__} crops every instance itself (TopDownAffine); set "
                    f"input_size / box_padding / the augmentation arguments instead of {key}"
                )
            kwargs.pop(key, None)
        kwargs.setdefault("size_divisibility", 1)
        super().__init__(**kwargs)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.box_padding = box_padding
        self.train_transform = TopDownAffine(
            self.input_size, train=True, box_padding=box_padding, scale_sigma=scale_sigma,
            rotation_sigma=rotation_sigma, rotation_prob=rotation_prob, flip_prob=flip_prob,
            color_range=color_range, seed=augment_seed,
        )
        self.val_transform = TopDownAffine(self.input_size, train=False, box_padding=box_padding)

    def train_dataloader(self) -> DataLoader:
        """The base class's loader with the last incomplete batch dropped when there is more
        than one batch: a lone crop cannot train BatchNorm at the 1 x 1 bottom of an
        hourglass."""
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup('fit') before train_dataloader()")
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train_dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )


# ------------------------------------------------------------------------------------ MPII
MPII_LAYOUT = describe_layout(
    [
        "<root>/images/*.jpg",
        "<root>/annotations/mpii_train.json, <root>/annotations/mpii_val.json   (mmpose's JSON)",
        "<root>/annotations/mpii_gt_val.mat   (head boxes of the val split, for PCKh)",
    ]
)


class MPIIDataModule(TopDownDataModule):
    """MPII Human Pose, top-down, from the JSON files mmpose distributes.

    Args:
        root: dataset folder.
        train_ann / val_ann / test_ann: annotation JSON files relative to ``root`` (test:
            val's when None).
        images: image folder relative to ``root``.
        headbox_file: head boxes of the val (and test) annotations, ``mpii_gt_val.mat`` or a
            JSON list, relative to ``root``; gives ``norm_size`` for PCKh. None: no PCKh.
        allow_absolute_paths: trust absolute / ``..`` image names.
        input_size: 256 x 256 (Newell et al.).
        box_padding: 1 (the reader applies the official ``200 * scale * 1.25`` box).
        **kwargs: ``TopDownDataModule`` / ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train_ann: str = "annotations/mpii_train.json",
        val_ann: str = "annotations/mpii_val.json",
        test_ann: str | None = None,
        images: str = "images",
        headbox_file: str | None = "annotations/mpii_gt_val.mat",
        allow_absolute_paths: bool = False,
        input_size: tuple[int, int] = (256, 256),
        box_padding: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(input_size=input_size, box_padding=box_padding, **kwargs)
        self.root = Path(root)
        self.anns = {"train": train_ann, "val": val_ann, "test": test_ann or val_ann}
        self.images = images
        self.headbox_file = headbox_file
        self.allow_absolute_paths = allow_absolute_paths

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.keypoints import mpii_info

        return mpii_info()

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.keypoints import TopDownKeypointDataset, mpii_records

        ann = self.root / self.anns[split]
        require_file(ann, MPII_LAYOUT)
        require_dir(self.root / self.images, MPII_LAYOUT)
        headbox = None
        if split != "train" and self.headbox_file is not None:
            headbox = self.root / self.headbox_file
            if not headbox.is_file():
                log.warning(
                    "%s: no head-box file at %s: the %s split has no head sizes, so PCKh cannot "
                    "be computed (PCK of the box still can). Expected layout:\n%s",
                    type(self).__name__, headbox, split, MPII_LAYOUT,
                )
                headbox = None
        records = mpii_records(ann, headbox)
        return TopDownKeypointDataset(self.root / self.images, records, self.info, self.allow_absolute_paths)


# ------------------------------------------------------------------------------------ COCO
COCO_KEYPOINT_LAYOUT = describe_layout(
    [
        "<root>/train2017/*.jpg, <root>/val2017/*.jpg",
        "<root>/annotations/person_keypoints_{train,val}2017.json",
        ("(optional) a person-detection results file for val_detections, e.g. "
         "COCO_val2017_detections_AP_H_56_person.json"),
    ]
)


class CocoKeypointDataModule(TopDownDataModule):
    """COCO person keypoints (or any COCO-style keypoint file), top-down: one sample per
    non-crowd instance with a labelled keypoint, or per detected box (``val_detections``,
    the standard person-detector protocol of SimpleBaseline / mmpose).

    Args:
        root: dataset folder; paths below are relative to it.
        train_ann / val_ann / test_ann: annotation files (test: val's when None).
        train_images / val_images / test_images: image folders.
        val_detections / test_detections: detection results JSON for that split; None: crops
            around the ground-truth boxes. With detections, samples carry no ground truth:
            score them with ``lseg predict`` and ``lseg-eval coco --iou-type keypoints``.
        det_score_thresh: detections below it are left out (counted).
        min_keypoints: instances with fewer labelled keypoints are left out (counted).
        allow_absolute_paths: trust absolute / ``..`` image names.
        input_size: 256 x 192 (SimpleBaseline).
        **kwargs: ``TopDownDataModule`` / ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train_ann: str = "annotations/person_keypoints_train2017.json",
        val_ann: str = "annotations/person_keypoints_val2017.json",
        test_ann: str | None = None,
        train_images: str = "train2017",
        val_images: str = "val2017",
        test_images: str | None = None,
        val_detections: str | None = None,
        test_detections: str | None = None,
        det_score_thresh: float = 0.0,
        min_keypoints: int = 1,
        allow_absolute_paths: bool = False,
        input_size: tuple[int, int] = (256, 192),
        **kwargs,
    ) -> None:
        super().__init__(input_size=input_size, **kwargs)
        self.root = Path(root)
        self.anns = {"train": train_ann, "val": val_ann, "test": test_ann or val_ann}
        self.image_dirs = {"train": train_images, "val": val_images, "test": test_images or val_images}
        self.detections = {"train": None, "val": val_detections, "test": test_detections}
        self.det_score_thresh = det_score_thresh
        self.min_keypoints = min_keypoints
        self.allow_absolute_paths = allow_absolute_paths

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.datamodules.coco import coco_placeholder_info, read_categories
        from lightning_seg.data.formats.coco import coco_dataset_info

        for split in ("val", "train"):
            ann = self.root / self.anns[split]
            if ann.is_file():
                return coco_dataset_info(read_categories(ann))
        log.warning(
            "%s: no annotation file at %s yet; using COCO's 17 person keypoints so the model "
            "can be built. Expected layout:\n%s",
            type(self).__name__, self.root / self.anns["val"], COCO_KEYPOINT_LAYOUT,
        )
        return coco_placeholder_info("keypoints")

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.keypoints import (
            TopDownKeypointDataset,
            coco_topdown_records,
            detection_records,
        )

        ann = self.root / self.anns[split]
        require_file(ann, COCO_KEYPOINT_LAYOUT)
        require_dir(self.root / self.image_dirs[split], COCO_KEYPOINT_LAYOUT)
        records, index = coco_topdown_records(ann, min_keypoints=self.min_keypoints)
        if self.detections[split] is not None:
            det = self.root / self.detections[split]
            require_file(det, COCO_KEYPOINT_LAYOUT)
            records = detection_records(det, index, self.det_score_thresh)
        return TopDownKeypointDataset(
            self.root / self.image_dirs[split], records, self.info, self.allow_absolute_paths
        )


# ------------------------------------------------------------------------------------ faces
FaceSet = Literal["300w", "wflw", "cofw", "aflw"]
_FACE_FILES = {
    "300w": ("face_landmarks_300w_train.json", "face_landmarks_300w_valid.json"),
    "wflw": ("face_landmarks_wflw_train.json", "face_landmarks_wflw_test.json"),
    "cofw": ("cofw_train.json", "cofw_test.json"),
    "aflw": ("face_landmarks_aflw_train.json", "face_landmarks_aflw_test.json"),
}


class FaceLandmarkDataModule(TopDownDataModule):
    """Face alignment, top-down: 300-W (68 landmarks), WFLW (98), COFW (29), AFLW (19), in the
    COCO-style files mmpose distributes (``images``, ``annotations`` with ``keypoints``,
    ``bbox`` and, except COFW, ``center`` / ``scale``; AFLW also ``box_size``).

    The crop is the ``200 * scale`` square around ``center`` (COFW: the ``bbox``) padded by
    ``box_padding``; ``norm_size`` is the dataset's NME normaliser (module docstring).

    Args:
        root: dataset folder.
        dataset: ``"300w"``, ``"wflw"``, ``"cofw"`` or ``"aflw"``.
        train_ann / val_ann / test_ann: annotation files relative to ``root``; None: mmpose's
            names under ``annotations/`` (test: val's).
        images: image folder relative to ``root``.
        allow_absolute_paths: trust absolute / ``..`` image names.
        input_size: 256 x 256.
        **kwargs: ``TopDownDataModule`` / ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        dataset: FaceSet = "300w",
        train_ann: str | None = None,
        val_ann: str | None = None,
        test_ann: str | None = None,
        images: str = "images",
        allow_absolute_paths: bool = False,
        input_size: tuple[int, int] = (256, 256),
        **kwargs,
    ) -> None:
        if dataset not in FACE_NUM_LANDMARKS:
            raise ValueError(f"dataset must be one of {tuple(FACE_NUM_LANDMARKS)}, got {dataset!r}")
        super().__init__(input_size=input_size, **kwargs)
        self.root = Path(root)
        self.dataset = dataset
        train_default, val_default = (f"annotations/{n}" for n in _FACE_FILES[dataset])
        val = val_ann or val_default
        self.anns = {"train": train_ann or train_default, "val": val, "test": test_ann or val}
        self.images = images
        self.allow_absolute_paths = allow_absolute_paths

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.formats.keypoints import face_info

        return face_info(self.dataset)

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.keypoints import (
            TopDownKeypointDataset,
            coco_topdown_records,
        )

        layout = describe_layout([f"<root>/{self.images}/*", f"<root>/{self.anns[split]}"])
        ann = self.root / self.anns[split]
        require_file(ann, layout)
        require_dir(self.root / self.images, layout)
        norm = FACE_NME_NORM[self.dataset]
        records, _ = coco_topdown_records(
            ann,
            center_scale=self.dataset != "cofw",
            norm_keypoints=norm if isinstance(norm, tuple) else None,
            norm_field=norm if isinstance(norm, str) else None,
            num_keypoints=FACE_NUM_LANDMARKS[self.dataset],
        )
        return TopDownKeypointDataset(self.root / self.images, records, self.info, self.allow_absolute_paths)


# ------------------------------------------------------------------------------------ shapes
class SyntheticKeypointDataModule(TopDownDataModule):
    """The synthetic shapes world's keypoints, top-down: one crop per shape (its centre and
    the four points where its own axes leave its outline; left/right sides swap under a
    flip), read from the world's ``keypoints.json`` by the COCO reader.

    A circle looks the same at every rotation while its keypoints turn with it (up to the
    world's 30 degrees), so circles carry an irreducible error; the other shapes do not.

    Args:
        root: folder of the world; None: ``$LSEG_CACHE_DIR`` or ``~/.cache/lightning_seg``.
        num_train / num_val / seed / height / width / max_objects: the world
            (``SyntheticShapesDataModule``).
        min_keypoints: shapes with fewer labelled keypoints are left out (counted).
        input_size: 64 x 64 crops.
        **kwargs: ``TopDownDataModule`` / ``SegDataModule`` arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        num_train: int = 256,
        num_val: int = 32,
        seed: int = 0,
        height: int = 128,
        width: int = 160,
        max_objects: int = 6,
        min_keypoints: int = 3,
        input_size: tuple[int, int] = (64, 64),
        **kwargs,
    ) -> None:
        super().__init__(input_size=input_size, **kwargs)
        from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule

        self._world = SyntheticShapesDataModule(
            task="keypoints", root=root, num_train=num_train, num_val=num_val, seed=seed,
            height=height, width=width, max_objects=max_objects,
        )
        self.root = self._world.root
        self.min_keypoints = min_keypoints

    def _build_info(self) -> DatasetInfo:
        from lightning_seg.data.synthetic import shapes_keypoint_info

        return shapes_keypoint_info()

    def prepare_data(self) -> None:
        self._world.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # as SyntheticShapesDataModule.setup
        super().setup(stage)

    def _test_data(self) -> Dataset:
        return self._build_dataset("val")

    def _build_dataset(self, split: str) -> Dataset:
        from lightning_seg.data.formats.keypoints import (
            TopDownKeypointDataset,
            coco_topdown_records,
        )

        folder = self.root / split
        records, _ = coco_topdown_records(folder / "keypoints.json", min_keypoints=self.min_keypoints)
        return TopDownKeypointDataset(folder / "images", records, self.info)

