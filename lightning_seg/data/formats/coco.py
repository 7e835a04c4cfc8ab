"""COCO instances and keypoints (``instances_*.json``, ``person_keypoints_*.json``).

``CocoIndex.build`` reads the annotation file once into NumPy arrays (image table, one row per
annotation, segmentations in a ``SegmentStore``); no mask is decoded and no per-annotation dict
survives parsing (see ``jsonio``). ``CocoInstanceDataset[i]`` decodes the masks of image ``i``
only (pycocotools, identical to ``COCO.annToMask``).

Bad input, decided per case (``DataError`` messages name the file, the record and the fix;
skips and repairs are counted in ``dataset.skips`` and logged once after indexing):

=========================================  ===========================================
case                                       handling
=========================================  ===========================================
annotation file missing / empty /          index time: ``DataError`` (line, column, byte)
truncated / malformed JSON
missing ``images``/``annotations``/        index time: ``DataError``
``categories``, duplicate image id,
record without ``image_id``/``category_id``
annotation with an unknown category id     index time: ``DataError`` (the categories list and
                                           the annotations disagree: wrong file pairing)
category id used twice / category          index time: ``DataError`` (its annotations have
without an integer id                      no single class)
annotation id used twice                   index time: ``DataError`` (evaluation refers to
                                           ground truth by id); records without ``id`` are
                                           not checked
``id`` / ``image_id`` / ``category_id``    index time: ``DataError``; integral floats
not an integer (``"12"``, ``1.5``)         (``12.0``) are accepted
``iscrowd`` other than 0 / 1 / true /      index time: ``DataError`` (``"0"`` is truthy:
false (``"0"``, ``"yes"``, ``2``)          guessing would flip crowd regions); null reads 0
``area`` not a number                      index time: ``DataError``
annotation for an image id not in          index time: skipped, counted (subset files
``images``                                 often filter images only)
polygon part with < 3 points / odd         index time: part dropped, counted as repaired;
length                                     no part left: annotation skipped, counted
unreadable segmentation                    index time: annotation skipped, counted
polygon coordinate that is not a finite    index time: annotation skipped, counted
number (string, null, list)
compressed RLE counts unreadable (bad      index time: annotation skipped, counted
character, cut inside a count, negative)   (pycocotools would read out of bounds)
RLE counts (either kind) whose sum is not  index time: annotation skipped, counted
``h * w`` of the RLE's ``size``            (pycocotools would write out of bounds / leave
                                           pixels unset)
RLE whose size differs from the image      index time: ``DataError`` (annotation, image,
                                           both sizes)
box outside the image                      index time: clipped, counted as repaired
box missing                                index time: computed from the segmentation,
                                           counted as repaired
zero-area box (after clipping) or          index time: annotation skipped, counted
``area == 0``
mask that decodes to no pixel              item time: instance dropped, counted
image ``file_name`` absolute or leading    index time: ``DataError`` unless
out of the image folder (``../``)          ``allow_absolute_paths`` (``io.check_paths_under_root``)
image file missing / corrupt               item time: ``DataError`` (``io.read_image``)
image size differs from the JSON           item time: ``DataError``
grayscale / RGBA / 16-bit / palette image  item time: converted to RGB, counted as repaired
keypoints of the wrong length              index time: ``DataError``
=========================================  ===========================================

Keypoint coordinates (detectron2's convention, ``detectron2/data/datasets/coco.py``): COCO
stores keypoints as pixel indices, ``x`` in ``[0, W - 1]``, ``y`` in ``[0, H - 1]``. Boxes,
masks, the transforms and the synthetic world use the continuous frame in which pixel
``(row i, column j)`` covers ``[j, j + 1] x [i, i + 1]`` and its centre is
``(j + 0.5, i + 0.5)``. The reader therefore adds 0.5 to ``x`` and ``y`` of every labelled
keypoint (``v > 0``) at load; unlabelled keypoints stay ``(0, 0, 0)`` as COCO writes them.
Writers to COCO JSON subtract 0.5 again (``lightning_seg.metrics.coco``), so a flip in the
continuous frame (``x -> W - x``) lands at pixel index ``W - 1 - j`` in the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.constants import (  # noqa: F401 (re-exported)
    COCO_KEYPOINT_OFFSET,
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_KEYPOINT_SIGMAS,
)
from lightning_seg.data.formats import masks as M
from lightning_seg.data.formats.common import image_tensor, load_rgb, note_item
from lightning_seg.data.formats.jsonio import DEFAULT_CHUNK_BYTES, load_json_chunked
from lightning_seg.data.io import DataError, check_paths_under_root
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import DatasetInfo, InstanceTargets, Sample, SampleMeta

CLIP_EPS = 1e-3  # boxes overshooting the image by less than this are clipped silently


def count_records(
    skips: SkipReport,
    reason: str,
    indices: Sequence[int] | np.ndarray,
    describe: Callable[[int], str],
    fixed: bool = False,
) -> None:
    """Count ``len(indices)`` skipped (or repaired) records, describing only the examples
    the report keeps (a COCO-scale file may have thousands of clipped boxes)."""
    n = len(indices)
    if n == 0:
        return
    record = skips.fix if fixed else skips.skip
    shown = min(n, skips.max_examples)
    for j in indices[:shown]:
        record(reason, describe(int(j)))
    (skips.fixed if fixed else skips.skipped)[reason] += n - shown


def keypoint_flip_map(names: list[str]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of keypoints whose names differ only by left/right (any case)."""
    lower = [n.lower() for n in names]
    pairs = []
    for i, name in enumerate(lower):
        if "left" in name:
            other = name.replace("left", "right")
            if other in lower:
                pairs.append((i, lower.index(other)))
    return pairs


def _ragged(values: list[list[int]], dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(v) for v in values]
    flat = np.fromiter((x for v in values for x in v), dtype=dtype, count=sum(lengths))
    return flat, M._offsets(lengths)


def _column(values: list) -> np.ndarray:
    """``values`` as a 1-D NumPy array when they are all scalars of one kind; an ``object``
    array otherwise (mixed types, lists, None), which the callers check value by value."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return np.empty(0, dtype=object)
    return arr if arr.ndim == 1 else np.empty(0, dtype=object)


@dataclass
class _AnnotationBuilder:
    """Copies each parsed slice of annotation records into NumPy, then drops the dicts."""

    path: Path
    with_masks: bool
    with_keypoints: bool
    ids: list[np.ndarray] = field(default_factory=list)
    has_id: list[np.ndarray] = field(default_factory=list)
    image_ids: list[np.ndarray] = field(default_factory=list)
    category_ids: list[np.ndarray] = field(default_factory=list)
    iscrowd: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)
    bboxes: list[np.ndarray] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    count: int = 0
    segments: M.SegmentStoreBuilder = field(default_factory=M.SegmentStoreBuilder)

    def reset(self) -> None:
        self.__init__(self.path, self.with_masks, self.with_keypoints)

    def _record(self, rec: object) -> str:
        if isinstance(rec, dict):
            return f"annotation id={rec.get('id')} (image_id={rec.get('image_id')})"
        return f"annotation record {rec!r:.80}"

    def _ints(self, anns: list, key: str, required: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(int64[n] values, bool[n] present)`` of ``key``; a missing optional key reads -1.

        Integral floats (``12.0``, written by some exporters) are accepted; a string (even
        ``"12"``), a fraction, a boolean or a missing required key is a ``DataError``.
        """
        values = [a.get(key) for a in anns]
        n = len(values)
        arr = _column(values)
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64), np.ones(n, dtype=bool)
        out = np.full(n, -1, dtype=np.int64)
        present = np.ones(n, dtype=bool)
        for j, v in enumerate(values):
            if type(v) is int and -(2**63) <= v < 2**63:
                out[j] = v
            elif type(v) is float and v.is_integer() and abs(v) < 2**63:
                out[j] = int(v)
            elif v is None and not required:
                present[j] = False
            else:
                what = "no" if v is None else f"a non-integer ({v!r:.40})"
                need = (
                    "Every annotation needs integer 'image_id' and 'category_id'"
                    if required
                    else "Annotation ids must be integers"
                )
                raise DataError(
                    f"{self.path}: {self._record(anns[j])} has {what} '{key}'. {need}; fix or "
                    f"remove the record."
                )
        return out, present

    def _iscrowd(self, anns: list) -> np.ndarray:
        """``bool[n]``: ``iscrowd`` must be 0 or 1 (or true / false); missing / null reads 0.

        A string is refused rather than guessed: pycocotools and detectron2 test its truth
        value, so ``"0"`` would silently become a crowd region (ignored in training and
        evaluation).
        """
        values = [a.get("iscrowd") for a in anns]
        arr = _column(values)
        if arr.dtype.kind in "iufb" and np.isin(arr, (0, 1)).all():
            return arr.astype(bool)
        out = np.zeros(len(values), dtype=bool)
        for j, v in enumerate(values):
            if v is None:
                continue
            if type(v) in (int, bool, float) and v in (0, 1):
                out[j] = bool(v)
                continue
            raise DataError(
                f"{self.path}: {self._record(anns[j])} has iscrowd={v!r:.40}; iscrowd must be "
                f"the number 0 or 1. A string is not read (tools that test its truth value "
                f"would take \"0\" for a crowd region): write 0 or 1 without quotes."
            )
        return out

    def _areas(self, anns: list) -> np.ndarray:
        """``float64[n]`` ``area`` (NaN when missing or null); a non-number is a ``DataError``."""
        values = [a.get("area") for a in anns]
        arr = _column(values)
        if arr.dtype.kind in "iuf":
            return arr.astype(np.float64)
        out = np.full(len(values), np.nan)
        for j, v in enumerate(values):
            if type(v) in (int, float):
                out[j] = v
            elif v is not None:
                raise DataError(
                    f"{self.path}: {self._record(anns[j])} has area={v!r:.40}; area is a number "
                    f"(pixels of the mask). Fix or remove the record."
                )
        return out

    def __call__(self, anns: list) -> None:
        n = len(anns)
        for a in anns:
            if not isinstance(a, dict):
                raise DataError(
                    f"{self.path}: {self._record(a)} is not an object; every annotation is a "
                    f"JSON object with 'id', 'image_id', 'category_id', ... Remove the record."
                )
        image_ids, _ = self._ints(anns, "image_id", required=True)
        category_ids, _ = self._ints(anns, "category_id", required=True)
        ids, has_id = self._ints(anns, "id", required=False)
        self.image_ids.append(image_ids)
        self.category_ids.append(category_ids)
        self.ids.append(ids)
        self.has_id.append(has_id)
        self.iscrowd.append(self._iscrowd(anns))
        self.areas.append(self._areas(anns))
        nan4 = [np.nan] * 4
        boxes = [a.get("bbox") or nan4 for a in anns]
        try:
            arr = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
        except (ValueError, TypeError):
            for a, b in zip(anns, boxes):
                if not (isinstance(b, list) and len(b) == 4):
                    raise DataError(
                        f"{self.path}: {self._record(a)} has bbox {b!r:.80}; a COCO "
                        f"bbox is [x, y, width, height] in pixels. Fix or remove the record."
                    ) from None
            raise
        self.bboxes.append(arr)
        if self.with_masks:
            base = self.count
            problems = self.segments.add_many([a.get("segmentation") for a in anns])
            self.problems.extend((base + j, problem) for j, problem in problems)
        if self.with_keypoints:
            kps = [a.get("keypoints") or [] for a in anns]
            flat = None
            if all(type(k) is list for k in kps):
                lengths = np.fromiter((len(k) for k in kps), np.int64, n)
                flat = M.finite_numbers([x for k in kps for x in k])
            if flat is None:
                bad = next(
                    a for a, k in zip(anns, kps)
                    if type(k) is not list or M.finite_numbers(k) is None
                )
                raise DataError(
                    f"{self.path}: {self._record(bad)} has keypoints "
                    f"{bad.get('keypoints')!r:.80}; keypoints are a list of numbers x, y, v "
                    f"per keypoint. Fix or remove the record."
                )
            flat = flat.astype(np.float32)
            self.keypoints.append((flat, lengths))
        self.count += n

    def finish(self) -> dict[str, np.ndarray]:
        def cat(parts, dtype, shape=(0,)):
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        out = {
            "ids": cat(self.ids, np.int64),
            "has_id": cat(self.has_id, np.bool_),
            "image_ids": cat(self.image_ids, np.int64),
            "category_ids": cat(self.category_ids, np.int64),
            "iscrowd": cat(self.iscrowd, np.bool_),
            "areas": cat(self.areas, np.float64),
            "bboxes": cat(self.bboxes, np.float64, (0, 4)),
        }
        return out


@dataclass
class CocoIndex:
    """Compact index of a COCO-style annotation file (kept annotations sorted by image).

    Attributes:
        source: the annotation file.
        image_ids: ``int64[I]`` COCO image ids, file order.
        file_names: ``str[I]`` (NumPy unicode array, no per-image Python object to be
            copied into each DataLoader worker) image paths relative to the image folder.
        heights / widths: ``int32[I]`` sizes written in the JSON.
        image_ann_offsets: ``int64[I + 1]``: annotations of image ``r`` are rows
            ``image_ann_offsets[r]:image_ann_offsets[r + 1]`` of the ``ann_*`` arrays.
        ann_ids: ``int64[N]`` annotation ids.
        ann_labels: ``int64[N]`` contiguous class indices.
        ann_boxes: ``float32[N, 4]`` x1y1x2y2 pixels, clipped to the image.
        ann_iscrowd: ``bool[N]``.
        ann_areas: ``float32[N]`` the JSON ``area`` (NaN when absent).
        ann_segments: ``int64[N]`` row in ``segments`` (-1 without masks).
        ann_keypoints: ``float32[N, K, 3]`` ``(x, y, v)`` in the continuous frame (the JSON's
            pixel indices + 0.5 where ``v > 0``; ``(0, 0, 0)`` unlabelled), or None.
        segments: the segmentations (rows in file order).
        categories: the JSON categories sorted by id (small dicts).
        image_lists: per-image integer lists kept from image records (LVIS federated
            lists): name -> ``(values, offsets[I + 1])``.
        skips: what was skipped or repaired.
    """

    source: Path
    image_ids: np.ndarray
    file_names: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    image_ann_offsets: np.ndarray
    ann_ids: np.ndarray
    ann_labels: np.ndarray
    ann_boxes: np.ndarray
    ann_iscrowd: np.ndarray
    ann_areas: np.ndarray
    ann_segments: np.ndarray
    ann_keypoints: np.ndarray | None
    segments: M.SegmentStore
    categories: list[dict]
    image_lists: dict[str, tuple[np.ndarray, np.ndarray]]
    skips: SkipReport

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_annotations(self) -> int:
        return len(self.ann_ids)

    @property
    def nbytes(self) -> int:
        total = self.segments.nbytes
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                total += value.nbytes
        return total

    @classmethod
    def build(
        cls,
        ann_file: str | os.PathLike,
        with_masks: bool = True,
        with_keypoints: bool = False,
        image_list_fields: tuple[str, ...] = (),
        file_name_of: Callable[[dict], str] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        num_keypoints: int | None = None,
    ) -> CocoIndex:
        """Parse ``ann_file`` into a compact index (see the module docstring for bad input).

        ``num_keypoints`` is the keypoint count when the categories do not name the keypoints
        (mmpose's face-landmark files have ``"keypoints": []``); None: the longest list of
        keypoint names of the categories.
        """
        path = Path(ann_file)
        builder = _AnnotationBuilder(path, with_masks, with_keypoints)
        top = load_json_chunked(path, "annotations", builder, chunk_bytes, reset=builder.reset)
        for key in ("images", "categories"):
            if not isinstance(top.get(key), list):
                raise DataError(
                    f"{path}: no '{key}' list at the top level; a COCO annotation file has "
                    f"'images', 'annotations' and 'categories'. Is this the right file?"
                )
        skips = SkipReport(str(path))
        images = top.pop("images")
        categories = check_categories(path, top.pop("categories"))
        del top

        # images
        try:
            image_ids = np.fromiter((im["id"] for im in images), np.int64, len(images))
            heights = np.fromiter((im["height"] for im in images), np.int32, len(images))
            widths = np.fromiter((im["width"] for im in images), np.int32, len(images))
        except (KeyError, TypeError, ValueError):
            for im in images:
                for key in ("id", "height", "width"):
                    if not isinstance(im, dict) or not isinstance(im.get(key), int):
                        raise DataError(
                            f"{path}: image record {im!r:.120} has no integer '{key}'; every "
                            f"image needs 'id', 'file_name', 'height' and 'width'."
                        ) from None
            raise
        if file_name_of is None:
            file_name_of = _coco_file_name(path)
        file_names = np.array([file_name_of(im) for im in images], dtype=str)
        lists = {}
        for name in image_list_fields:
            lists[name] = _ragged([im.get(name) or [] for im in images])
        del images
        order = np.argsort(image_ids, kind="stable")
        sorted_ids = image_ids[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(dup):
            raise DataError(
                f"{path}: image id {sorted_ids[dup[0]]} appears more than once in 'images'; "
                f"image ids must be unique. Remove the duplicate record."
            )

        ann = builder.finish()
        num = len(ann["ids"])
        keep = np.ones(num, dtype=bool)

        def describe(j: int) -> str:
            return f"annotation id={ann['ids'][j]} (image_id={ann['image_ids'][j]})"

        _check_unique_annotation_ids(path, ann["ids"], ann["has_id"], ann["image_ids"])

        def drop(where: np.ndarray, reason: str) -> None:
            count_records(skips, reason, np.flatnonzero(where & keep), describe)
            keep[where] = False

        # image rows
        pos = np.searchsorted(sorted_ids, ann["image_ids"])
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[pos] == ann["image_ids"]) if len(sorted_ids) else np.zeros(num, bool)
        drop(~found, "annotation for an image id not in 'images'")
        rows = np.where(found, order[pos] if len(order) else 0, 0).astype(np.int64)

        # categories
        cat_ids = np.array([c["id"] for c in categories], dtype=np.int64)
        cpos = np.minimum(np.searchsorted(cat_ids, ann["category_ids"]), max(len(cat_ids) - 1, 0))
        known = cat_ids[cpos] == ann["category_ids"] if len(cat_ids) else np.zeros(num, bool)
        if not known.all():
            bad = np.flatnonzero(~known)
            examples = ", ".join(
                f"{describe(j)} category_id={ann['category_ids'][j]}" for j in bad[:3]
            )
            raise DataError(
                f"{path}: {len(bad)} annotation(s) use a category id missing from 'categories' "
                f"(e.g. {examples}). The annotations and the categories list do not belong "
                f"together: add the category or remove those annotations."
            )
        labels = cpos.astype(np.int64)

        # segmentation problems found while parsing
        segments = builder.segments.finish()
        seg_rows = np.arange(num, dtype=np.int64) if with_masks else np.full(num, -1, np.int64)
        part_fixed = [j for j, p in builder.problems if p == M.BAD_POLYGON_PART]
        count_records(skips, M.BAD_POLYGON_PART, part_fixed, describe, fixed=True)
        for problem in (M.NO_VALID_POLYGON, M.BAD_SEGMENTATION, M.NON_NUMERIC_POLYGON):
            where = np.zeros(num, dtype=bool)
            where[[j for j, p in builder.problems if p == problem]] = True
            drop(where, problem)
        if with_masks:
            for problem, where in segments.rle_problems().items():
                drop(where, problem)
            none = segments.kind == M.NONE
            drop(none, "annotation without segmentation (masks requested)")
            is_rle = (segments.kind == M.RLE) | (segments.kind == M.RLE_UNCOMPRESSED)
            size_ok = (segments.rle_size[:, 0] == heights[rows]) & (
                segments.rle_size[:, 1] == widths[rows]
            )
            bad = np.flatnonzero(is_rle & ~size_ok & keep)
            if len(bad):
                j = bad[0]
                raise DataError(
                    f"{path}: {describe(j)} has an RLE of size "
                    f"{tuple(segments.rle_size[j].tolist())} but its image is "
                    f"{(int(heights[rows[j]]), int(widths[rows[j]]))} (h, w) "
                    f"({len(bad)} such annotation(s)). Re-encode the RLE at the image size or "
                    f"fix the image's height/width in 'images'."
                )

        # boxes: fill missing ones from the segmentation, clip, drop empty
        boxes = ann["bboxes"]
        missing = np.flatnonzero(np.isnan(boxes).any(axis=1) & keep)
        for j in missing:
            if with_masks and segments.kind[j] != M.NONE:
                boxes[j] = segments.bbox(j, int(heights[rows[j]]), int(widths[rows[j]]))
                skips.fix("bbox computed from the segmentation", describe(j))
        drop(np.isnan(boxes).any(axis=1), "annotation without bbox or segmentation")
        boxes = np.nan_to_num(boxes)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        limit = np.stack([widths[rows], heights[rows], widths[rows], heights[rows]], axis=1)
        clipped = np.clip(xyxy, 0, limit)
        moved = (np.abs(clipped - xyxy) > CLIP_EPS).any(axis=1) & keep
        count_records(
            skips, "box outside the image clipped", np.flatnonzero(moved), describe, fixed=True
        )
        drop((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]), "zero-area box")
        drop(ann["areas"] <= 0, "zero-area mask (area == 0)")

        # keypoints
        kps = None
        if with_keypoints:
            num_kp = max((len(c.get("keypoints") or []) for c in categories), default=0)
            if num_keypoints is not None:
                num_kp = int(num_keypoints)
            kps = np.zeros((num, num_kp, 3), dtype=np.float32)
            flat = np.concatenate([f for f, _ in builder.keypoints] or [np.zeros(0, np.float32)])
            lengths = np.concatenate([n for _, n in builder.keypoints] or [np.zeros(0, np.int64)])
            builder.keypoints.clear()
            wrong = np.flatnonzero((lengths != 0) & (lengths != 3 * num_kp))
            if len(wrong):
                j = wrong[0]
                raise DataError(
                    f"{path}: {describe(j)} has {lengths[j]} keypoint values, expected "
                    f"3 x {num_kp} (x, y, v per keypoint named in its category). Fix the "
                    f"record or the category's keypoints."
                )
            has = lengths > 0
            kps[has] = flat.reshape(-1, num_kp, 3)  # [N', K, 3]
            # COCO pixel indices -> continuous frame (pixel centres at +0.5): labelled only,
            # unlabelled keypoints stay (0, 0, 0). See the module docstring.
            labelled = kps[..., 2] > 0  # [N, K]
            kps[..., :2][labelled] += COCO_KEYPOINT_OFFSET

        # kept annotations, grouped by image
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(rows[kept], kind="stable")]
        counts = np.bincount(rows[kept], minlength=len(image_ids))
        skips.log_once()
        return cls(
            source=path,
            image_ids=image_ids,
            file_names=file_names,
            heights=heights,
            widths=widths,
            image_ann_offsets=M._offsets(counts),
            ann_ids=ann["ids"][kept],
            ann_labels=labels[kept],
            ann_boxes=clipped[kept].astype(np.float32),
            ann_iscrowd=ann["iscrowd"][kept],
            ann_areas=ann["areas"][kept].astype(np.float32),
            ann_segments=seg_rows[kept],
            ann_keypoints=None if kps is None else kps[kept],
            segments=segments,
            categories=categories,
            image_lists=lists,
            skips=skips,
        )

    def annotations_of(self, row: int) -> slice:
        """Rows of the ``ann_*`` arrays that belong to image row ``row``."""
        return slice(int(self.image_ann_offsets[row]), int(self.image_ann_offsets[row + 1]))


def check_categories(path: Path, categories: list) -> list[dict]:
    """The categories sorted by id; ``DataError`` for a record without an integer id or an id
    used twice (the class of that id's annotations would be ambiguous)."""
    for c in categories:
        if not isinstance(c, dict) or type(c.get("id")) is not int:
            raise DataError(
                f"{path}: category record {c!r:.120} has no integer 'id'; every category "
                f"needs 'id' and 'name'. Fix or remove the record."
            )
    categories = sorted(categories, key=lambda c: c["id"])
    for a, b in pairwise(categories):
        if a["id"] == b["id"]:
            raise DataError(
                f"{path}: category id {a['id']} appears more than once in 'categories' "
                f"(names {a.get('name')!r} and {b.get('name')!r}); category ids must be unique, "
                f"or annotations with category_id={a['id']} have no single class. Remove the "
                f"duplicate or renumber it (and its annotations)."
            )
    return categories


def _check_unique_annotation_ids(
    path: Path, ids: np.ndarray, has_id: np.ndarray, image_ids: np.ndarray
) -> None:
    """``DataError`` when two annotations share an id (records without an id are not checked).

    Evaluation (pycocotools ``COCOeval``) and result files refer to ground truth by id, so a
    shared id makes one of the two records unreachable.
    """
    rows = np.flatnonzero(has_id)
    order = rows[np.argsort(ids[rows], kind="stable")]
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        a, b = order[same[0]], order[same[0] + 1]
        raise DataError(
            f"{path}: annotation id {ids[a]} is used by more than one annotation (image_id="
            f"{image_ids[a]} and image_id={image_ids[b]}; {len(same)} repeated id(s) in all). "
            f"Annotation ids must be unique: renumber the annotations (e.g. id = position + 1)."
        )


def _coco_file_name(path: Path) -> Callable[[dict], str]:
    def file_name(im: dict) -> str:
        name = im.get("file_name")
        if not isinstance(name, str):
            raise DataError(
                f"{path}: image id={im.get('id')} has no 'file_name'; add it (the path of the "
                f"image relative to the image folder)."
            )
        return name

    return file_name


def coco_dataset_info(
    categories: list[dict], keypoint_sigmas: list[float] | None = None
) -> DatasetInfo:
    """``DatasetInfo`` of COCO categories (sorted by id); keypoint facts from the first
    category that names keypoints (skeleton converted from COCO's 1-based indices)."""
    kp_cat = next((c for c in categories if c.get("keypoints")), None)
    names, skeleton, sigmas = [], [], []
    if kp_cat is not None:
        names = list(kp_cat["keypoints"])
        skeleton = [(a - 1, b - 1) for a, b in kp_cat.get("skeleton") or []]
        if keypoint_sigmas is not None:
            sigmas = list(keypoint_sigmas)
        elif names == COCO_PERSON_KEYPOINT_NAMES:
            sigmas = list(COCO_PERSON_KEYPOINT_SIGMAS)
    return DatasetInfo(
        class_names=[c["name"] for c in categories],
        category_ids=[c["id"] for c in categories],
        isthing=[bool(c.get("isthing", 1)) for c in categories],
        keypoint_names=names,
        keypoint_flip_map=keypoint_flip_map(names),
        skeleton=skeleton,
        keypoint_sigmas=sigmas,
        palette=[tuple(c["color"]) for c in categories]
        if categories and all("color" in c for c in categories)
        else [],
    )


class CocoInstanceDataset(Dataset):
    """COCO instance segmentation / detection / keypoints, one ``Sample`` per image.

    Args:
        image_dir: folder the images' ``file_name`` are relative to.
        ann_file: COCO JSON (``instances_*.json`` or ``person_keypoints_*.json``).
        with_masks: decode instance masks (``Sample.instances.masks``); annotations without a
            segmentation are then skipped (counted).
        with_keypoints: return ``Sample.instances.keypoints`` ``[N, K, 3]`` (zeros for
            annotations without keypoints), in the continuous frame of the boxes: the JSON's
            pixel indices + 0.5 for labelled keypoints (module docstring).
        drop_empty: leave out images without any kept annotation (training usually does).
        keypoint_sigmas: OKS sigmas; default COCO's 17 when the keypoint names are COCO's.
        chunk_bytes: JSON slice size while indexing (memory vs. speed; tests use tiny ones).
        allow_absolute_paths: trust the file's image paths: absolute ``file_name`` values are
            opened as they are and relative ones may lead out of ``image_dir`` (``..``).
            Default: such a name is a ``DataError`` at index time
            (``io.check_paths_under_root``).

    Attributes:
        info: classes (sorted by COCO id), keypoint names / flip map / skeleton / sigmas.
        skips: skipped and repaired records (index time here, item time in each worker).
        index: the compact ``CocoIndex``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        with_masks: bool = True,
        with_keypoints: bool = False,
        drop_empty: bool = False,
        keypoint_sigmas: list[float] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        allow_absolute_paths: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.index = self._build_index(ann_file, chunk_bytes)
        check_paths_under_root(
            self.index.file_names, self.image_dir, self.index.source,
            lambda r: f"image id={self.index.image_ids[r]}", allow_absolute_paths,
        )
        self.skips = self.index.skips
        self.info = coco_dataset_info(self.index.categories, keypoint_sigmas)
        counts = np.diff(self.index.image_ann_offsets)
        self.rows = np.flatnonzero(counts > 0) if drop_empty else np.arange(len(counts))

    def _build_index(self, ann_file: str | os.PathLike, chunk_bytes: int) -> CocoIndex:
        return CocoIndex.build(
            ann_file, self.with_masks, self.with_keypoints, chunk_bytes=chunk_bytes
        )

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, i: int) -> Path:
        return self.image_dir / str(self.index.file_names[int(self.rows[i])])

    def annotation_ids(self, i: int) -> np.ndarray:
        """``int64[N]`` COCO annotation ids of the instances of item ``i`` (before
        item-time drops of empty masks)."""
        return self.index.ann_ids[self.index.annotations_of(int(self.rows[i]))]

    def __getitem__(self, i: int) -> Sample:
        idx = self.index
        row = int(self.rows[i])
        path = self.image_dir / str(idx.file_names[row])
        image = load_rgb(path, self.skips)
        h, w = int(idx.heights[row]), int(idx.widths[row])
        if image.shape[:2] != (h, w):
            raise DataError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} (h x w) but "
                f"{idx.source} says {h}x{w} for image id={idx.image_ids[row]}. The image or the "
                f"annotation file is from another release; use matching files."
            )
        sl = idx.annotations_of(row)
        masks = None
        keep = None
        if self.with_masks:
            masks = idx.segments.decode(idx.ann_segments[sl], h, w)  # [N, H, W]
            keep = masks.any(axis=(1, 2))
            if not keep.all():
                for j in np.flatnonzero(~keep):
                    note_item(
                        self.skips, "zero-area mask (decodes to no pixel)",
                        f"annotation id={idx.ann_ids[sl][j]} (image_id={idx.image_ids[row]})",
                    )
                masks = masks[keep]
        def pick(arr: np.ndarray) -> np.ndarray:
            arr = arr[sl]
            return arr if keep is None else arr[keep]

        targets = InstanceTargets(
            boxes=torch.from_numpy(pick(idx.ann_boxes).copy()),
            labels=torch.from_numpy(pick(idx.ann_labels).copy()),
            image_size=(h, w),
            masks=None if masks is None else torch.from_numpy(masks),
            iscrowd=torch.from_numpy(pick(idx.ann_iscrowd).copy()),
            keypoints=(
                torch.from_numpy(pick(idx.ann_keypoints).copy())
                if self.with_keypoints and idx.ann_keypoints is not None
                else None
            ),
        )
        meta = SampleMeta(image_id=int(idx.image_ids[row]), file_name=str(path), orig_size=(h, w))
        return Sample(image=image_tensor(image), meta=meta, instances=targets)
