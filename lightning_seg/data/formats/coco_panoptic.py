"""COCO panoptic: ``panoptic_*.json`` (``segments_info`` per image) + RGB-encoded id PNGs.

A PNG pixel's segment id is ``R + 256 G + 256^2 B`` (0 = void). The index keeps the segments
as NumPy arrays with per-image offsets; the PNG is read at item time.

Each ``Sample`` carries ``panoptic`` (segment map + per-segment label / isthing / iscrowd),
and, unless turned off, ``semantic`` (contiguous category per pixel, 255 for void; crowd
regions keep their category) and ``instances`` (one per thing segment, crowd flagged, boxes
enclosing the masks), which is what UPSNet-style models train on.

Bad input, decided per case:

======================================  ================================================
case                                    handling
======================================  ================================================
JSON missing / malformed / no keys      index time: ``DataError``
segment with an unknown category id     index time: ``DataError``
annotation for an image not in images   index time: skipped, counted
image without a panoptic annotation     index time: skipped, counted (nothing to learn)
image / PNG ``file_name`` absolute or   index time: ``DataError`` unless
leading out of its folder (``../``)     ``allow_absolute_paths``
PNG / image missing or corrupt          item time: ``DataError``
PNG of another size than the image      item time: ``DataError``
PNG id absent from ``segments_info``    item time: pixels set to void (0), counted as
                                        repaired
segment with no pixel in the PNG        item time: segment dropped, counted
======================================  ================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.data.formats.coco import check_categories, coco_dataset_info
from lightning_seg.data.formats.common import image_tensor, load_rgb, note_item
from lightning_seg.data.formats.jsonio import load_json
from lightning_seg.data.formats.masks import _offsets, masks_to_boxes
from lightning_seg.data.io import DataError, check_paths_under_root, read_rgb_ids
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import InstanceTargets, PanopticTargets, Sample, SampleMeta


class CocoPanopticDataset(Dataset):
    """COCO-format panoptic segmentation (also Cityscapes / VIPER panoptic in COCO format).

    Args:
        image_dir: folder of the RGB images (``images[].file_name``).
        ann_file: the panoptic JSON (``images``, ``annotations`` with ``segments_info``,
            ``categories`` with ``isthing``).
        panoptic_dir: folder of the id PNGs (``annotations[].file_name``).
        with_semantic: also return ``Sample.semantic``.
        with_instances: also return ``Sample.instances`` for thing segments.
        allow_absolute_paths: trust the file's paths: absolute image / PNG ``file_name``
            values are opened as they are and relative ones may lead out of their folder.
            Default: such a name is a ``DataError`` at index time.

    Attributes:
        info: things and stuff together, sorted by category id (``isthing`` per class,
            palette from the JSON colours).
        skips: skipped / repaired records.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        panoptic_dir: str | os.PathLike,
        with_semantic: bool = True,
        with_instances: bool = True,
        allow_absolute_paths: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        self.with_semantic = with_semantic
        self.with_instances = with_instances
        path = Path(ann_file)
        top = load_json(path)
        for key in ("images", "annotations", "categories"):
            if not isinstance(top.get(key), list):
                raise DataError(
                    f"{path}: no '{key}' list at the top level; a COCO panoptic file has "
                    f"'images', 'annotations' (with 'segments_info') and 'categories'."
                )
        self.skips = SkipReport(str(path))
        categories = check_categories(path, top["categories"])
        self.info = coco_dataset_info(categories)
        cat_index = self.info.id_to_index
        images = {im["id"]: im for im in top["images"]}
        file_names, png_names, image_ids, sizes = [], [], [], []
        seg_ids, seg_labels, seg_crowd, counts = [], [], [], []
        for ann in top["annotations"]:
            image = images.get(ann.get("image_id"))
            if image is None:
                self.skips.skip(
                    "panoptic annotation for an image id not in 'images'",
                    f"image_id={ann.get('image_id')}",
                )
                continue
            segments = ann.get("segments_info") or []
            for seg in segments:
                if seg.get("category_id") not in cat_index:
                    raise DataError(
                        f"{path}: segment id={seg.get('id')} of image_id={image['id']} has "
                        f"category_id={seg.get('category_id')}, which is not in 'categories'. "
                        f"Add the category or fix the segment."
                    )
                seg_ids.append(seg["id"])
                seg_labels.append(cat_index[seg["category_id"]])
                seg_crowd.append(bool(seg.get("iscrowd", 0)))
            counts.append(len(segments))
            image_ids.append(image["id"])
            file_names.append(image["file_name"])
            png_names.append(ann["file_name"])
            sizes.append((image["height"], image["width"]))
        annotated = set(image_ids)
        for image_id in images:
            if image_id not in annotated:
                self.skips.skip("image without a panoptic annotation", f"image_id={image_id}")
        del top, images
        check_paths_under_root(
            file_names, self.image_dir, path, lambda i: f"image id={image_ids[i]}",
            allow_absolute_paths,
        )
        check_paths_under_root(
            png_names, self.panoptic_dir, path,
            lambda i: f"the annotation of image_id={image_ids[i]}", allow_absolute_paths,
        )
        self.file_names, self.png_names = file_names, png_names
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int32).reshape(-1, 2)
        self.seg_offsets = _offsets(counts)
        self.seg_ids = np.asarray(seg_ids, dtype=np.int64)
        self.seg_labels = np.asarray(seg_labels, dtype=np.int64)
        self.seg_crowd = np.asarray(seg_crowd, dtype=bool)
        self._isthing = np.asarray(self.info.isthing, dtype=bool)
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> Sample:
        image_path = self.image_dir / self.file_names[i]
        png_path = self.panoptic_dir / self.png_names[i]
        image = load_rgb(image_path, self.skips)
        seg_map = read_rgb_ids(png_path)
        if seg_map.shape != image.shape[:2]:
            raise DataError(
                f"{png_path}: panoptic PNG is {seg_map.shape[0]}x{seg_map.shape[1]} but its "
                f"image {image_path} is {image.shape[0]}x{image.shape[1]}; use matching files."
            )
        sl = slice(int(self.seg_offsets[i]), int(self.seg_offsets[i + 1]))
        ids, labels, crowd = self.seg_ids[sl], self.seg_labels[sl], self.seg_crowd[sl]
        present = np.unique(seg_map)
        stray = present[(present != 0) & ~np.isin(present, ids)]
        if len(stray):
            note_item(
                self.skips, "PNG segment id missing from segments_info set to void",
                f"{png_path.name} ids {stray[:5].tolist()}", fixed=True,
            )
            seg_map[np.isin(seg_map, stray)] = 0
        has_pixels = np.isin(ids, present)
        if not has_pixels.all():
            for sid in ids[~has_pixels]:
                note_item(
                    self.skips, "segment with no pixel in the PNG", f"{png_path.name} id {sid}"
                )
            ids, labels, crowd = ids[has_pixels], labels[has_pixels], crowd[has_pixels]
        isthing = self._isthing[labels]
        h, w = seg_map.shape
        panoptic = PanopticTargets(
            segment_map=torch.from_numpy(seg_map),
            ids=torch.from_numpy(ids.copy()),
            labels=torch.from_numpy(labels.copy()),
            isthing=torch.from_numpy(isthing),
            iscrowd=torch.from_numpy(crowd.copy()),
        )
        semantic = None
        if self.with_semantic:
            lut_ids = np.concatenate([[0], ids])
            lut_labels = np.concatenate([[self.info.ignore_index], labels])
            order = np.argsort(lut_ids)
            pos = np.searchsorted(lut_ids[order], seg_map)  # every pixel id is in lut_ids now
            semantic = torch.from_numpy(lut_labels[order][pos])
        instances = None
        if self.with_instances:
            things = np.flatnonzero(isthing)
            masks = seg_map[None] == ids[things][:, None, None]  # [N, H, W]
            instances = InstanceTargets(
                boxes=torch.from_numpy(masks_to_boxes(masks)),
                labels=torch.from_numpy(labels[things].copy()),
                image_size=(h, w),
                masks=torch.from_numpy(masks),
                iscrowd=torch.from_numpy(crowd[things].copy()),
            )
        meta = SampleMeta(
            image_id=int(self.image_ids[i]), file_name=str(image_path), orig_size=(h, w)
        )
        return Sample(
            image=image_tensor(image), meta=meta, instances=instances,
            semantic=semantic, panoptic=panoptic,
        )
