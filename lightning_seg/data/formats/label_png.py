"""Semantic segmentation from (image, label PNG) pairs: CamVid (SegNet layout), PASCAL VOC.

Cityscapes ``labelIds`` use the same dataset with a labelId -> trainId table
(``lightning_seg.data.formats.cityscapes.cityscapes_semantic_dataset``).

Label values are mapped through a lookup table (``label_lut``: raw value -> class index,
``ignore_index`` for void, -1 for "not a valid value"), so every dataset returns class indices
``0..K-1`` and ``255`` for void (``DatasetInfo.ignore_index``).

Bad input, decided per case (``DataError`` names the file, the record and the fix):

====================================  ===================================================
case                                  handling
====================================  ===================================================
list file missing / malformed line    construction: ``DataError`` (file and line number)
list entry leading out of the root    construction: ``DataError`` (file and line number);
(``../``)                             absolute list paths keep their last two parts
image or label file missing           construction: ``DataError`` (pair and list line);
                                      the folders are small, so checking is cheap
corrupt image or label PNG            item time: ``DataError`` (``io.read_image``)
RGB label PNG (colour-coded)          item time: ``DataError`` (convert to indices)
label PNG of another size             item time: ``DataError`` naming both files
label values out of range             item time: ``DataError`` naming the values (wrong
(not a class, not void)               dataset / class count; nothing is remapped silently)
grayscale / RGBA / 16-bit image       item time: converted to RGB, counted as repaired
====================================  ===================================================
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_seg.data.formats.common import image_tensor, load_rgb
from lightning_seg.data.formats.image_folder import list_images
from lightning_seg.data.io import DataError, check_paths_under_root, read_label_map
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import DatasetInfo, Sample, SampleMeta, default_palette

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_VOID = 11  # "Unlabelled" in the SegNet label PNGs
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip


def make_label_lut(
    num_values: int, mapping: dict[int, int], ignore_index: int = 255
) -> np.ndarray:
    """``int64[num_values]`` lookup table: ``mapping`` entries, every other value -1 (invalid)."""
    lut = np.full(num_values, -1, dtype=np.int64)
    for raw, index in mapping.items():
        lut[raw] = index
    return lut


def voc_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (index 0 black, bit-interleaved index bits)."""
    return default_palette(num_classes, first=0)


class LabelPngDataset(Dataset):
    """Semantic segmentation from explicit (image, label) file pairs.

    Args:
        pairs: ``(image_path, label_path)``; ``label_path`` None for unlabelled images
            (``Sample.semantic`` is then None).
        info: classes and ``ignore_index``.
        label_lut: raw label value -> class index / ``ignore_index`` / -1 (invalid); None
            means raw values are class indices already.
        source: name of the list file or folder, for messages and the skip report.

    Attributes:
        info, skips: as every reader.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
        info: DatasetInfo,
        label_lut: np.ndarray | None = None,
        source: str = "label png pairs",
    ) -> None:
        self.pairs = [(Path(i), None if lab is None else Path(lab)) for i, lab in pairs]
        self.info = info
        self.label_lut = None if label_lut is None else np.asarray(label_lut, dtype=np.int64)
        self.skips = SkipReport(source)
        for k, (image, label) in enumerate(self.pairs):
            for path in (image, label):
                if path is not None and not path.is_file():
                    raise DataError(
                        f"{source}: pair {k} ({image.name}) refers to a missing file {path}. "
                        f"Check the dataset root and the list file, or remove the line."
                    )
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.pairs)

    def _map_labels(self, raw: np.ndarray, label_path: Path) -> np.ndarray:
        lut = self.label_lut
        ignore = self.info.ignore_index
        if lut is not None:
            if raw.min() < 0 or raw.max() >= len(lut):
                bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])
                mapped = np.full_like(raw, -1)
            else:
                mapped = lut[raw]
                bad = np.unique(raw[mapped < 0])
        else:
            mapped = raw
            bad = np.unique(raw[((raw < 0) | (raw >= self.info.num_classes)) & (raw != ignore)])
        if len(bad):
            valid = (
                f"values with an entry in the label table of {self.skips.source}"
                if lut is not None
                else f"0..{self.info.num_classes - 1} or {ignore} (void)"
            )
            raise DataError(
                f"{label_path}: label values {bad[:10].tolist()} are out of range (expected "
                f"{valid}). The label map belongs to another dataset or class list: fix the "
                f"file or pass the matching DatasetInfo / label table."
            )
        return mapped

    def __getitem__(self, i: int) -> Sample:
        image_path, label_path = self.pairs[i]
        image = load_rgb(image_path, self.skips)
        semantic = None
        if label_path is not None:
            raw = read_label_map(label_path)
            if raw.shape != image.shape[:2]:
                raise DataError(
                    f"{label_path}: label map is {raw.shape[0]}x{raw.shape[1]} (h x w) but its "
                    f"image {image_path} is {image.shape[0]}x{image.shape[1]}. The pair is "
                    f"mismatched or one file was resized; regenerate the label at image size."
                )
            semantic = torch.from_numpy(self._map_labels(raw, label_path))
        meta = SampleMeta(image_id=i, file_name=str(image_path), orig_size=image.shape[:2])
        return Sample(image=image_tensor(image), meta=meta, semantic=semantic)


def _read_list(list_file: Path, root: Path, columns: int) -> list[list[Path]]:
    """Lines of paths; an absolute or prefixed path (``/SegNet/CamVid/train/x.png``) keeps
    only its last two components, relative to ``root``."""
    rows = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise DataError(
                f"{list_file}:{lineno}: expected {columns} path(s) per line, got {line!r}. "
                f"Fix the line (format: 'image_path label_path')."
            )
        names = [str(Path(*Path(p).parts[-2:])) for p in parts]
        check_paths_under_root(
            names, root, list_file,
            lambda i, n=lineno, p=parts: f"line {n} (path {p[i]!r}, read as its last two parts)",
            option=None,
        )
        rows.append([root / name for name in names])
    return rows


def camvid_info() -> DatasetInfo:
    return DatasetInfo(class_names=list(CAMVID_CLASSES), ignore_index=255)


def camvid_dataset(root: str | os.PathLike, split: str) -> LabelPngDataset:
    """CamVid in the SegNet layout: ``<root>/<split>/*.png``, ``<root>/<split>annot/*.png``.

    Pairs come from ``<root>/<split>.txt`` when present (lines may carry a
    ``/SegNet/CamVid/`` prefix, stripped), else from the two folders: every image of
    ``<split>/`` (any type PIL reads, ``image_folder.IMAGE_SUFFIXES``) with the label PNG of
    the same stem.
    Label 11 (Unlabelled) becomes 255 (void); 11 classes.
    """
    root = Path(root)
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        pairs = [tuple(r) for r in _read_list(list_file, root, 2)]
        source = str(list_file)
    else:
        image_dir, label_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir():
            raise DataError(
                f"{root}: neither {list_file.name} nor the folder {split}/ exists. Use a split "
                f"present in the dataset (train, val, test) or pass the CamVid root."
            )
        images, _ = list_images(image_dir)
        pairs = [(p, label_dir / f"{p.stem}.png") for p in images]
        source = str(image_dir)
    lut = make_label_lut(256, {**{k: k for k in range(CAMVID_VOID)}, CAMVID_VOID: 255, 255: 255})
    return LabelPngDataset(pairs, camvid_info(), label_lut=lut, source=source)


def voc_info() -> DatasetInfo:
    return DatasetInfo(
        class_names=list(VOC_CLASSES),
        isthing=[False] + [True] * 20,
        ignore_index=255,
        palette=voc_palette(21),
    )


def voc_dataset(root: str | os.PathLike, split: str) -> LabelPngDataset:
    """PASCAL VOC segmentation: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
    (palette indices, 255 = void), ids from ``ImageSets/Segmentation/<split>.txt``."""
    root = Path(root)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(
            f"{list_file}: split list not found. Pass the VOC year folder (the one holding "
            f"JPEGImages/ and SegmentationClass/) and a split such as train or val."
        )
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    check_paths_under_root(
        [f"{i}.jpg" for i in ids], root / "JPEGImages", list_file, lambda k: f"entry {k + 1}",
        option=None,
    )
    pairs = [
        (root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
    ]
    lut = make_label_lut(256, {**{k: k for k in range(21)}, 255: 255})
    return LabelPngDataset(pairs, voc_info(), label_lut=lut, source=str(list_file))
