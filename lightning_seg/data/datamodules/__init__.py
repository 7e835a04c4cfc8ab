"""One LightningDataModule per dataset, all built on ``SegDataModule``.

``info`` (classes, thing/stuff split, keypoint flip map, ignore index) is available right
after ``__init__`` so that LightningCLI can link it into the model; data is only touched in
``prepare_data`` / ``setup``, which raise ``DataError`` naming the expected layout.
"""

from lightning_seg.data.datamodules.base import SegDataModule, TransformedDataset
from lightning_seg.data.datamodules.camvid import CamVidDataModule, VOCDataModule
from lightning_seg.data.datamodules.cityscapes import (
    CityscapesDataModule,
    CityscapesPanopticDataset,
)
from lightning_seg.data.datamodules.coco import CocoDataModule, LvisDataModule
from lightning_seg.data.datamodules.keypoints import (
    CocoKeypointDataModule,
    FaceLandmarkDataModule,
    MPIIDataModule,
    SyntheticKeypointDataModule,
    TopDownDataModule,
)
from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
from lightning_seg.data.datamodules.video import (
    DavisDataModule,
    VideoDataModule,
    YouTubeVISDataModule,
)

__all__ = [
    "CamVidDataModule",
    "CityscapesDataModule",
    "CityscapesPanopticDataset",
    "CocoDataModule",
    "CocoKeypointDataModule",
    "DavisDataModule",
    "FaceLandmarkDataModule",
    "LvisDataModule",
    "MPIIDataModule",
    "SegDataModule",
    "SyntheticKeypointDataModule",
    "SyntheticShapesDataModule",
    "TopDownDataModule",
    "TransformedDataset",
    "VOCDataModule",
    "VideoDataModule",
    "YouTubeVISDataModule",
]
