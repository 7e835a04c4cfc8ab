"""A folder of images without labels: what ``lseg predict`` runs on.

Every image type PIL reads is listed (``IMAGE_SUFFIXES``, any case); the reader says how many
files it found of each type and how many other files it ignored. One unreadable image must not
stop a prediction run over thousands, so the images are checked when the dataset is built
(``io.check_image``: cheap, no full decode for PNG / JPEG) and an image that cannot be read is
left out, counted in ``dataset.skips`` with the file and the reason, and reported (logged once
after indexing, and again by the DataModule when the run ends). Batches therefore only ever
hold readable images.

Bad input, decided per case:

====================================  ===================================================
case                                  handling
====================================  ===================================================
folder missing / no image in it       construction: ``DataError`` (lists the suffixes)
file with another suffix              construction: ignored, counted in the log message
corrupt / truncated / not an image    construction: skipped, counted (file and reason)
image above ``max_image_pixels``      construction: skipped, counted (the reason says how to
(decompression-bomb guard)            raise the limit)
image changed or removed after        item time: ``DataError`` (``io.read_image``)
indexing (or ``check_images=False``)
grayscale / RGBA / 16-bit image       item time: converted to RGB, counted as repaired
====================================  ===================================================
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from lightning_seg.data.formats.common import image_tensor, load_rgb
from lightning_seg.data.io import DataError, check_image
from lightning_seg.data.skips import SkipReport
from lightning_seg.structures import Sample, SampleMeta

log = logging.getLogger("lightning_seg.data")

# What PIL reads (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
UNREADABLE = "image that cannot be read"


def list_images(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """``(images, others)``: files of ``folder`` with an image suffix (any case), sorted, and
    the other files (hidden files such as ``.DS_Store`` are not counted)."""
    pattern = "**/*" if recursive else "*"
    images, others = [], []
    for path in sorted(folder.glob(pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def _describe(paths: list[Path]) -> str:
    counts = Counter(p.suffix.lower() or "(no suffix)" for p in paths)
    return ", ".join(f"{n} {suffix}" for suffix, n in counts.most_common())


class ImageFolderDataset(Dataset):
    """The images of a folder, one ``Sample`` without targets per readable image.

    Args:
        folder: the folder.
        recursive: also look in subfolders (prediction files are named by the image's stem,
            so two images with one stem in different subfolders would overwrite each other).
        check_images: check every image at construction (``io.check_image``) and leave out
            the unreadable ones; False skips the check (faster for a huge folder you trust):
            an unreadable image then fails its batch with a ``DataError``.

    Attributes:
        paths: the images served, sorted by path.
        skips: the unreadable images left out (file and reason per example).
        num_found: image files found before the check.
        description: what was found, for messages (counts per suffix, other files ignored).

    ``Sample.meta``: ``image_id`` is the index in ``paths``, ``file_name`` the path,
    ``orig_size`` the size on disk.
    """

    def __init__(
        self, folder: str | os.PathLike, recursive: bool = False, check_images: bool = True
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: folder not found; pass a folder of images.")
        found, others = list_images(self.folder, recursive)
        self.num_found = len(found)
        self.skips = SkipReport(str(self.folder), max_examples=20)
        where = "and its subfolders " if recursive else ""
        if not found:
            raise DataError(
                f"{self.folder}: no image found in the folder {where}(looked for "
                f"{', '.join(IMAGE_SUFFIXES)} in any case"
                + (f"; {len(others)} other files: {_describe(others)}" if others else "")
                + "). Pass the folder that holds the images"
                + ("." if recursive else ", or search subfolders (recursive=True).")
            )
        self.description = f"found {len(found)} image(s) {where}({_describe(found)})" + (
            f"; ignored {len(others)} other file(s) ({_describe(others)})" if others else ""
        )
        log.info("%s: %s", self.folder, self.description)
        self.paths: list[Path] = []
        for path in found:
            problem = check_image(path) if check_images else None
            if problem is None:
                self.paths.append(path)
            else:
                self.skips.skip(UNREADABLE, f"{path.relative_to(self.folder)}: {problem}")
        if not self.paths:
            self.skips.log_once()
            details = "\n".join(self.skips.summary().splitlines()[1:])
            raise DataError(
                f"{self.folder}: none of the {len(found)} image(s) can be read:\n{details}"
            )
        self.skips.log_once()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Sample:
        path = self.paths[i]
        image = load_rgb(path, self.skips)
        meta = SampleMeta(image_id=i, file_name=str(path), orig_size=image.shape[:2])
        return Sample(image=image_tensor(image), meta=meta)
