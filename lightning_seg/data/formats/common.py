"""Helpers shared by the readers: counted image conversion, item-time skips, tensors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lightning_seg.data.io import read_image
from lightning_seg.data.skips import SkipReport

log = logging.getLogger("lightning_seg.data")


def load_rgb(path: str | os.PathLike, skips: SkipReport) -> np.ndarray:
    """Read an image as ``uint8[H, W, 3]``; a grayscale / RGBA / 16-bit / palette file is
    converted (``lightning_seg.data.io.read_image``) and counted as a repair in ``skips``.

    Raises:
        DataError: the file is missing or cannot be decoded (message names the file and fix).
    """
    arr = read_image(path)
    with Image.open(path) as img:
        mode = img.mode
    if mode != "RGB":
        note_item(skips, f"converted {mode} image to RGB", str(path), fixed=True)
    return arr


def note_item(skips: SkipReport, reason: str, record: str, fixed: bool = False) -> None:
    """Count an item-time skip or repair; log the first of each reason in this process.

    Item-time counts live in the process that read the item (a DataLoader worker keeps its
    own copy of the dataset), so each worker logs the first occurrence of each reason.
    """
    counter = skips.fixed if fixed else skips.skipped
    first = reason not in counter
    (skips.fix if fixed else skips.skip)(reason, record)
    if first:
        level = logging.INFO if fixed else logging.WARNING
        log.log(level, "%s: %s %s (%s); further cases are counted in dataset.skips",
                skips.source, "repaired" if fixed else "skipped", reason, record)


def image_tensor(arr: np.ndarray) -> Tensor:
    """``uint8[H, W, 3]`` -> ``Tensor[3, H, W]`` uint8 (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()  # [3, H, W]


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
