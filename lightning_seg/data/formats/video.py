"""Video segmentation: DAVIS folders, YouTube-VIS JSON, and clips of consecutive frames.

Both datasets return one ``Sample`` per frame with ``meta.video_id`` / ``meta.frame_index``
and ``instances.track_ids`` (the object's identity across the frames of its video), and
``sequences()`` (dataset indices of each video's frames in order), which
``VideoClipDataset`` uses to serve clips (VPSNet neighbours, YolactEdge keyframes).

DAVIS (``<root>/JPEGImages/<res>/<seq>/*.jpg`` + ``<root>/Annotations/<res>/<seq>/*.png``):
a mode-L mask with values {0, 255} (DAVIS 2016) is one object (track id 1); a palette mask
(DAVIS 2017) holds object ids 1..n (255 = void, not an object). A frame without a mask file
(semi-supervised test sets annotate the first frame only) has ``instances = None``.

YouTube-VIS (``videos[].file_names``, ``annotations[].segmentations`` / ``bboxes`` / ``areas``
with one entry per frame, None where the object is absent): one instance per annotation and
frame; its track id is the annotation id. Segmentations go to a ``SegmentStore`` and are
decoded per item.

Bad input: JSON errors, unknown category ids, per-frame lists whose length differs from the
video, RLE sizes that differ from the video and frame paths that are absolute or lead out of the
image folder (unless ``allow_absolute_paths``) are ``DataError`` at index time; a missing
sequence folder or a mask of another size than its frame is a ``DataError``; boxes are
clipped (repair) and zero-area ones skipped (counted) at index time; empty masks dropped at
item time (counted); image conversions counted as repairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_seg.data.formats import masks as M
from lightning_seg.data.formats.coco import (
    CLIP_EPS,
    check_categories,
    coco_dataset_info,
    count_records,
)
from lightning_seg.data.formats.common import image_tensor, load_rgb, note_item
from lightning_seg.data.formats.image_folder import list_images
from lightning_seg.data.formats.jsonio import load_json
from lightning_seg.data.io import DataError, check_paths_under_root, read_label_map
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import DatasetInfo, InstanceTargets, Sample, SampleMeta


class DavisDataset(Dataset):
    """DAVIS-style video object segmentation, one ``Sample`` per frame.

    Args:
        root: folder holding ``JPEGImages/`` and ``Annotations/``.
        sequences: sequence names to read (default: every folder of ``JPEGImages/<res>``).
        resolution: ``480p`` or ``Full-Resolution``.

    ``info`` has one class, ``object``; every instance has label 0 and its object id as
    track id.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sequences: Sequence[str] | None = None,
        resolution: str = "480p",
    ) -> None:
        self.root = Path(root)
        image_root = self.root / "JPEGImages" / resolution
        self.mask_root = self.root / "Annotations" / resolution
        if not image_root.is_dir():
            raise DataError(
                f"{image_root}: folder not found. Pass the DAVIS root (holding JPEGImages/ and "
                f"Annotations/) and a resolution present there (480p or Full-Resolution)."
            )
        if sequences is None:
            sequences = sorted(p.name for p in image_root.iterdir() if p.is_dir())
        self.sequence_names = list(sequences)
        check_paths_under_root(
            self.sequence_names, image_root, "the sequence list",
            lambda i: f"sequence {i}", option=None,
        )
        self.info = DatasetInfo(class_names=["object"])
        self.skips = SkipReport(str(image_root))
        self.frames: list[tuple[int, int, Path, Path]] = []  # (video, frame, image, mask)
        self._sequences: list[list[int]] = []
        for video, name in enumerate(self.sequence_names):
            folder = image_root / name
            if not folder.is_dir():
                raise DataError(
                    f"{folder}: sequence '{name}' not found; check the sequence list "
                    f"(ImageSets/*.txt) against JPEGImages/{resolution}/."
                )
            images, _ = list_images(folder)
            indices = []
            for frame, image in enumerate(images):
                indices.append(len(self.frames))
                mask = self.mask_root / name / f"{image.stem}.png"
                self.frames.append((video, frame, image, mask))
            self._sequences.append(indices)
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.frames)

    def sequences(self) -> list[list[int]]:
        """Dataset indices of each sequence's frames, in frame order."""
        return self._sequences

    def _objects(self, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(object ids int64[N], masks bool[N, H, W])`` of one annotation PNG."""
        values = read_label_map(mask_path)  # first: errors (corrupt, too large) name the file
        with Image.open(mask_path) as img:
            mode = img.mode
        uniq = np.unique(values)
        if mode == "P":
            ids = uniq[(uniq != 0) & (uniq != 255)]
            masks = values[None] == ids[:, None, None]  # [N, H, W]
        elif set(uniq.tolist()) <= {0, 255}:
            ids = np.array([1] if 255 in uniq else [], dtype=np.int64)
            masks = (values == 255)[None][: len(ids)]  # [N, H, W]
        else:
            ids = uniq[uniq != 0]
            masks = values[None] == ids[:, None, None]  # [N, H, W]
        return ids.astype(np.int64), masks

    def __getitem__(self, i: int) -> Sample:
        video, frame, image_path, mask_path = self.frames[i]
        image = load_rgb(image_path, self.skips)
        h, w = image.shape[:2]
        instances = None
        if mask_path.is_file():
            ids, masks = self._objects(mask_path)
            if masks.shape[1:] != (h, w):
                raise DataError(
                    f"{mask_path}: mask is {masks.shape[1]}x{masks.shape[2]} but its frame "
                    f"{image_path} is {h}x{w}; use masks of the same resolution."
                )
            instances = InstanceTargets(
                boxes=torch.from_numpy(M.masks_to_boxes(masks)),
                labels=torch.zeros(len(ids), dtype=torch.int64),
                image_size=(h, w),
                masks=torch.from_numpy(masks),
                track_ids=torch.from_numpy(ids),
            )
        meta = SampleMeta(
            image_id=i, file_name=str(image_path), orig_size=(h, w), video_id=video,
            frame_index=frame,
        )
        return Sample(image=image_tensor(image), meta=meta, instances=instances)


class YouTubeVISDataset(Dataset):
    """YouTube-VIS style video instance segmentation, one ``Sample`` per frame.

    Args:
        image_dir: folder the videos' ``file_names`` are relative to.
        ann_file: the JSON (``videos``, ``annotations``, ``categories``).
        with_masks: decode masks (otherwise boxes only).
        allow_absolute_paths: trust the file's frame paths: absolute ``file_names`` are
            opened as they are and relative ones may lead out of ``image_dir``. Default: such
            a name is a ``DataError`` at index time.

    Attributes:
        info: categories sorted by id.
        skips: skipped / repaired records.
        video_ids: ``int64[V]`` the JSON video ids.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        with_masks: bool = True,
        allow_absolute_paths: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.with_masks = with_masks
        path = Path(ann_file)
        top = load_json(path)
        for key in ("videos", "annotations", "categories"):
            if not isinstance(top.get(key), list):
                raise DataError(
                    f"{path}: no '{key}' list at the top level; a YouTube-VIS file has "
                    f"'videos', 'annotations' and 'categories'."
                )
        self.skips = SkipReport(str(path))
        categories = check_categories(path, top["categories"])
        self.info = coco_dataset_info(categories)
        cat_index = self.info.id_to_index

        # frames
        self.file_names: list[str] = []
        video_ids, sizes, lengths = [], [], []
        for v in top["videos"]:
            names = v.get("file_names")
            if not isinstance(names, list) or "id" not in v:
                raise DataError(
                    f"{path}: video record {str(v)[:100]} needs 'id' and a 'file_names' list."
                )
            video_ids.append(v["id"])
            sizes.append((v.get("height", 0), v.get("width", 0)))
            lengths.append(len(names))
            self.file_names.extend(names)
        self.video_ids = np.asarray(video_ids, dtype=np.int64)
        self.video_sizes = np.asarray(sizes, dtype=np.int32).reshape(-1, 2)
        self.video_offsets = M._offsets(lengths)

        def frame_record(i: int) -> str:
            video = int(np.searchsorted(self.video_offsets, i, side="right") - 1)
            return f"frame {i - self.video_offsets[video]} of video id={video_ids[video]}"

        check_paths_under_root(
            self.file_names, self.image_dir, path, frame_record, allow_absolute_paths
        )
        video_row = {vid: r for r, vid in enumerate(video_ids)}

        # one row per (annotation, frame) where the object is present
        frame_of, label_of, track_of, crowd_of, boxes = [], [], [], [], []
        segments = M.SegmentStoreBuilder()
        for ann in top["annotations"]:
            record = f"annotation id={ann.get('id')} (video_id={ann.get('video_id')})"
            r = video_row.get(ann.get("video_id"))
            if r is None:
                self.skips.skip("annotation for a video id not in 'videos'", record)
                continue
            if ann.get("category_id") not in cat_index:
                raise DataError(
                    f"{path}: {record} has category_id={ann.get('category_id')}, which is not "
                    f"in 'categories'. Add the category or remove the annotation."
                )
            n = lengths[r]
            segs = ann.get("segmentations") or [None] * n
            bbs = ann.get("bboxes") or [None] * n
            if len(segs) != n or len(bbs) != n:
                raise DataError(
                    f"{path}: {record} has {len(segs)} segmentations / {len(bbs)} bboxes for a "
                    f"video of {n} frames; there must be one entry (or null) per frame."
                )
            for f in range(n):
                seg, box = segs[f], bbs[f]
                if seg is None and box is None:
                    continue
                problem = segments.add(seg if with_masks else None)
                if problem == M.BAD_POLYGON_PART:
                    self.skips.fix(problem, f"{record} frame {f}")
                elif problem is not None:
                    self.skips.skip(problem, f"{record} frame {f}")
                elif with_masks and seg is None:
                    self.skips.skip("frame annotation without segmentation", f"{record} frame {f}")
                frame_of.append(int(self.video_offsets[r]) + f)
                label_of.append(cat_index[ann["category_id"]])
                track_of.append(int(ann.get("id", -1)))
                crowd_of.append(bool(ann.get("iscrowd", 0)))
                boxes.append(box if box is not None else [np.nan] * 4)
        del top
        store = segments.finish()
        self.segments = store
        num = len(frame_of)
        frame_of = np.asarray(frame_of, dtype=np.int64)
        video_of = np.searchsorted(self.video_offsets, frame_of, side="right") - 1
        hw = self.video_sizes[video_of] if num else np.zeros((0, 2), np.int32)
        keep = np.ones(num, dtype=bool)
        def describe(j: int) -> str:
            video = video_of[j]
            return (
                f"track id={track_of[j]} frame {frame_of[j] - self.video_offsets[video]} of "
                f"video id={self.video_ids[video]}"
            )

        if with_masks:
            keep &= store.kind != M.NONE
            for problem, where in store.rle_problems().items():
                count_records(self.skips, problem, np.flatnonzero(where & keep), describe)
                keep &= ~where
            is_rle = (store.kind == M.RLE) | (store.kind == M.RLE_UNCOMPRESSED)
            bad = np.flatnonzero(is_rle & keep & (store.rle_size != hw).any(axis=1))
            if len(bad):
                j = bad[0]
                raise DataError(
                    f"{path}: {describe(j)} has an RLE of size "
                    f"{tuple(store.rle_size[j].tolist())} but its video is "
                    f"{tuple(hw[j].tolist())} (h, w). Re-encode the RLE or fix the video's "
                    f"height/width."
                )
        boxes = np.asarray(boxes, dtype=np.float64).reshape(num, 4)
        for j in np.flatnonzero(np.isnan(boxes).any(axis=1) & keep):
            boxes[j] = store.bbox(j, int(hw[j, 0]), int(hw[j, 1]))
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        limit = np.concatenate([hw[:, ::-1], hw[:, ::-1]], axis=1).astype(np.float64)
        clipped = np.clip(xyxy, 0, limit)
        moved = (np.abs(clipped - xyxy) > CLIP_EPS).any(axis=1) & keep
        count_records(
            self.skips, "box outside the image clipped", np.flatnonzero(moved), describe, fixed=True
        )
        empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        count_records(self.skips, "zero-area box", np.flatnonzero(empty & keep), describe)
        keep &= ~empty
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(frame_of[kept], kind="stable")]
        self.obj_rows = kept
        self.obj_boxes = clipped.astype(np.float32)
        self.obj_labels = np.asarray(label_of, dtype=np.int64)
        self.obj_tracks = np.asarray(track_of, dtype=np.int64)
        self.obj_crowd = np.asarray(crowd_of, dtype=bool)
        self.frame_obj_offsets = M._offsets(
            np.bincount(frame_of[kept], minlength=len(self.file_names))
        )
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.file_names)

    def sequences(self) -> list[list[int]]:
        """Dataset indices of each video's frames, in frame order."""
        o = self.video_offsets
        return [list(range(int(o[v]), int(o[v + 1]))) for v in range(len(o) - 1)]

    def __getitem__(self, i: int) -> Sample:
        video = int(np.searchsorted(self.video_offsets, i, side="right") - 1)
        frame = i - int(self.video_offsets[video])
        path = self.image_dir / self.file_names[i]
        image = load_rgb(path, self.skips)
        h, w = image.shape[:2]
        vh, vw = (int(x) for x in self.video_sizes[video])
        if (vh, vw) != (0, 0) and (vh, vw) != (h, w):
            raise DataError(
                f"{path}: frame is {h}x{w} but video id={self.video_ids[video]} is {vh}x{vw} in "
                f"the annotation file; use matching files."
            )
        rows = self.obj_rows[self.frame_obj_offsets[i] : self.frame_obj_offsets[i + 1]]
        masks = None
        if self.with_masks:
            masks = self.segments.decode(rows, h, w)  # [N, H, W]
            nonempty = masks.any(axis=(1, 2))
            if not nonempty.all():
                for j in np.flatnonzero(~nonempty):
                    note_item(
                        self.skips, "zero-area mask (decodes to no pixel)",
                        f"track id={self.obj_tracks[rows[j]]} frame {frame} of video "
                        f"id={self.video_ids[video]}",
                    )
                rows, masks = rows[nonempty], masks[nonempty]
        instances = InstanceTargets(
            boxes=torch.from_numpy(self.obj_boxes[rows]),
            labels=torch.from_numpy(self.obj_labels[rows]),
            image_size=(h, w),
            masks=None if masks is None else torch.from_numpy(masks),
            iscrowd=torch.from_numpy(self.obj_crowd[rows]),
            track_ids=torch.from_numpy(self.obj_tracks[rows]),
        )
        meta = SampleMeta(
            image_id=i, file_name=str(path), orig_size=(h, w),
            video_id=int(self.video_ids[video]), frame_index=frame,
        )
        return Sample(image=image_tensor(image), meta=meta, instances=instances)


class VideoClipDataset(Dataset):
    """Clips of frames from a per-frame video dataset (anything with ``sequences()``).

    Args:
        dataset: ``DavisDataset``, ``YouTubeVISDataset`` or any dataset exposing
            ``sequences() -> list[list[int]]``.
        clip_length: frames per clip.
        stride: frames between the first frames of consecutive clips of a video.
        frame_step: frames between consecutive frames inside a clip (1 = adjacent).

    Each item is a ``list[Sample]`` of ``clip_length`` frames of one video, in order. Videos
    shorter than one clip are left out and counted in ``skips``.
    """

    def __init__(
        self, dataset: Dataset, clip_length: int, stride: int = 1, frame_step: int = 1
    ) -> None:
        if clip_length < 1 or stride < 1 or frame_step < 1:
            raise ValueError("clip_length, stride and frame_step must be >= 1")
        self.dataset = dataset
        self.clip_length = clip_length
        self.info = getattr(dataset, "info", None)
        self.skips = SkipReport(f"clips of {getattr(dataset.skips, 'source', 'video dataset')}")
        span = (clip_length - 1) * frame_step + 1
        self.clips: list[list[int]] = []
        for v, frames in enumerate(dataset.sequences()):
            if len(frames) < span:
                self.skips.skip(f"video shorter than a clip of {span} frames", f"video {v}")
                continue
            for start in range(0, len(frames) - span + 1, stride):
                self.clips.append(frames[start : start + span : frame_step])
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> list[Sample]:
        return [self.dataset[j] for j in self.clips[i]]
