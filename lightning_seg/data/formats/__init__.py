"""Dataset readers: each returns ``lightning_seg.structures.Sample`` and exposes ``.info``
(``DatasetInfo``) and ``.skips`` (``SkipReport``)."""

from lightning_seg.data.formats.cityscapes import (
    CityscapesInstanceDataset,
    cityscapes_semantic_dataset,
)
from lightning_seg.data.formats.coco import CocoIndex, CocoInstanceDataset
from lightning_seg.data.formats.coco_panoptic import CocoPanopticDataset
from lightning_seg.data.formats.image_folder import ImageFolderDataset
from lightning_seg.data.formats.label_png import LabelPngDataset, camvid_dataset, voc_dataset
from lightning_seg.data.formats.lvis import LvisDataset
from lightning_seg.data.formats.video import DavisDataset, VideoClipDataset, YouTubeVISDataset

__all__ = [
    "CityscapesInstanceDataset",
    "CocoIndex",
    "CocoInstanceDataset",
    "CocoPanopticDataset",
    "DavisDataset",
    "ImageFolderDataset",
    "LabelPngDataset",
    "LvisDataset",
    "VideoClipDataset",
    "YouTubeVISDataset",
    "camvid_dataset",
    "cityscapes_semantic_dataset",
    "voc_dataset",
]
