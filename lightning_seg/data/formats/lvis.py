"""LVIS (v0.5 / v1): COCO-like JSON with federated per-image category lists.

Differences from COCO handled here:
- images carry ``neg_category_ids`` (verified absent) and ``not_exhaustive_category_ids``
  (present but not all instances annotated); both are kept per image as NumPy ragged arrays
  and exposed by ``LvisDataset.neg_category_ids(i)`` / ``not_exhaustive_category_ids(i)``
  (dataset category ids) and ``federated_labels(i)`` (contiguous class indices);
- annotations have no ``iscrowd`` (read as 0);
- v1 images have no ``file_name``: the path is the last two parts of ``coco_url``
  (``train2017/000000391895.jpg``) relative to ``image_dir`` (the COCO root); when
  ``image_dir`` is itself that split folder, only the file name is used;
- categories carry ``frequency`` (``r``/``c``/``f``), exposed as ``category_frequency``.

Bad input is handled as in ``coco`` (same index).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightning_seg.data.formats.coco import CocoIndex, CocoInstanceDataset
from lightning_seg.data.formats.jsonio import DEFAULT_CHUNK_BYTES
from lightning_seg.data.io import DataError

FEDERATED_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")


class LvisDataset(CocoInstanceDataset):
    """LVIS instance segmentation, one ``Sample`` per image (see ``CocoInstanceDataset``).

    Args:
        image_dir: the COCO image root (holding ``train2017/``, ``val2017/``) or one split
            folder.
        ann_file: ``lvis_v1_{train,val}.json``.
        with_masks, drop_empty, chunk_bytes, allow_absolute_paths: as
            ``CocoInstanceDataset``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        with_masks: bool = True,
        drop_empty: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        allow_absolute_paths: bool = False,
    ) -> None:
        self._image_root = Path(image_dir)
        super().__init__(
            image_dir, ann_file, with_masks=with_masks, with_keypoints=False,
            drop_empty=drop_empty, chunk_bytes=chunk_bytes,
            allow_absolute_paths=allow_absolute_paths,
        )
        self.category_frequency = [c.get("frequency", "") for c in self.index.categories]
        self._cat_ids = np.asarray(self.info.category_ids, dtype=np.int64)

    def _build_index(self, ann_file: str | os.PathLike, chunk_bytes: int) -> CocoIndex:
        path = Path(ann_file)
        split_dir = self._image_root.name

        def file_name(im: dict) -> str:
            name = im.get("file_name")
            if isinstance(name, str):
                return name
            url = im.get("coco_url")
            if not isinstance(url, str):
                raise DataError(
                    f"{path}: image id={im.get('id')} has neither 'file_name' nor 'coco_url'; "
                    f"add one so the image file can be found."
                )
            split, base = url.rstrip("/").split("/")[-2:]
            return base if split == split_dir else f"{split}/{base}"

        return CocoIndex.build(
            path, self.with_masks, False, image_list_fields=FEDERATED_FIELDS,
            file_name_of=file_name, chunk_bytes=chunk_bytes,
        )

    def _list(self, name: str, i: int) -> np.ndarray:
        values, offsets = self.index.image_lists[name]
        row = int(self.rows[i])
        return values[offsets[row] : offsets[row + 1]]

    def neg_category_ids(self, i: int) -> np.ndarray:
        """``int64[n]`` category ids verified absent from item ``i``."""
        return self._list("neg_category_ids", i)

    def not_exhaustive_category_ids(self, i: int) -> np.ndarray:
        """``int64[n]`` category ids whose instances in item ``i`` are not all annotated."""
        return self._list("not_exhaustive_category_ids", i)

    def federated_labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(negative, not_exhaustive)`` as contiguous class indices (unknown ids dropped)."""
        out = []
        for ids in (self.neg_category_ids(i), self.not_exhaustive_category_ids(i)):
            pos = np.searchsorted(self._cat_ids, ids)
            pos = np.minimum(pos, len(self._cat_ids) - 1)
            out.append(pos[self._cat_ids[pos] == ids].astype(np.int64))
        return out[0], out[1]
