"""Reading images and label maps with errors that name the file and the fix."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lightning_seg.errors import UserError

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's default: a quarter GiB of RGB pixels (~9459 x 9459)


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, the record and how to fix it."""


def escapes_root(name: str) -> bool:
    """Whether the relative path ``name`` leads outside the folder it is joined to.

    The check is lexical (``os.path.normpath``): ``a/../../b`` escapes, ``a/./b`` and
    ``a/../b`` do not. Symbolic links are followed as usual, since the dataset's owner placed
    them, not the annotation file.
    """
    norm = os.path.normpath(name)
    return norm == ".." or norm.startswith("../")


def check_paths_under_root(
    names: Sequence[str] | np.ndarray,
    root: str | os.PathLike,
    source: str | os.PathLike,
    record: Callable[[int], str],
    allow_absolute: bool = False,
    option: str | None = "allow_absolute_paths",
) -> None:
    """Refuse file names from an annotation file that would open a file outside ``root``.

    Readers join ``root / name`` for names read from an annotation or list file; a name such
    as ``../../../etc/passwd`` or ``/etc/passwd`` would otherwise open any file the process can
    read. Every reader that joins a folder with a name from a file calls this once, at index
    time.

    Args:
        names: the file names, in record order.
        root: the folder they are relative to.
        source: the annotation / list file (named in the message).
        record: ``record(i)`` describes the record of ``names[i]`` (e.g. ``"image id=7"``).
        allow_absolute: trust the file: absolute names are used as they are and relative
            names may lead outside ``root``.
        option: how the caller's user turns ``allow_absolute`` on (named in the message);
            None when the reader has no such option.

    Raises:
        DataError: naming the file, the record, the path and the fix.
    """
    if allow_absolute:
        return
    for i, name in enumerate(names):
        name = str(name)
        if not (name.startswith("/") or ".." in name):
            continue  # fast path: nothing to normalise
        if os.path.isabs(name):
            problem = "is absolute"
        elif escapes_root(name):
            problem = "leads out of that folder through '..'"
        else:
            continue
        raise DataError(
            f"{source}: {record(i)} has the file name {name!r}, which {problem}. File names in "
            f"this file are relative to {root}; other paths are refused so that an annotation "
            f"file cannot make the reader open any file on the machine. Make the path relative "
            f"to {root} (and move the file there)"
            + (f", or set {option}=True if you trust the file." if option else ".")
        )


def set_max_image_pixels(limit: int | None) -> None:
    """Largest image, in pixels, that the readers decode; None removes the limit.

    This is PIL's decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, process-wide): a
    small file can declare a huge size and take all memory when decoded. Readers refuse an
    image above the limit with a ``DataError`` (PIL itself only warns up to twice the limit).
    DataModules set it from their ``max_image_pixels`` option in every worker process.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"max_image_pixels must be a positive number of pixels or None, got {limit}")
    Image.MAX_IMAGE_PIXELS = limit


def max_image_pixels() -> int | None:
    """The current limit of ``set_max_image_pixels`` (None: no limit)."""
    return Image.MAX_IMAGE_PIXELS


def _too_large(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: {exc} The image is larger than the max_image_pixels limit "
        f"({max_image_pixels():,} pixels, PIL's decompression-bomb guard). If the image is "
        f"genuine, raise the limit: the DataModule option max_image_pixels (e.g. "
        f"--data.init_args.max_image_pixels 400000000, or null for no limit) or "
        f"lightning_seg.data.io.set_max_image_pixels(n) in Python; otherwise remove the file."
    )


@contextmanager
def _size_guard(path: Path) -> Iterator[None]:
    """PIL's decompression-bomb warning and error as a ``DataError`` naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(path, exc) from None


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: image file not found. Check the dataset root and the file name in the "
            f"annotation (paths are resolved relative to the image folder)."
        )
    try:
        with _size_guard(path):
            img = Image.open(path)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot decode image ({exc}). The file is corrupt or not an image; "
            f"re-download it or remove it from the annotation file."
        ) from exc
    return img


def check_image(path: str | os.PathLike) -> str | None:
    """Why the image file ``path`` cannot be read, or None when it can (cheaper than reading).

    PNG: ``verify()`` (every chunk and its checksum, no decoding); JPEG: decoded at 1/8 scale
    (``draft``: every block is still entropy-decoded, so a truncated or damaged stream is
    found); other formats: decoded. Images above ``max_image_pixels`` are refused too.
    """
    path = Path(path)
    try:
        with _size_guard(path), Image.open(path) as img:
            if img.format == "PNG":
                img.verify()
            else:
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except DataError as exc:
        return str(exc).removeprefix(f"{path}: ")
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"cannot decode image ({exc})"
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``uint8[H, W, 3]`` RGB.

    Grayscale is replicated to 3 channels, RGBA/LA/P are converted (alpha dropped), and
    16-bit or float images are rescaled to 0..255 by their own min/max, so every reader
    sees the same layout.
    """
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label PNG as ``int64[H, W]`` (palette indices for mode P)."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        raise DataError(
            f"{path}: label map is {img.mode}, expected one channel (mode L, P, I or I;16). "
            f"Colour-coded labels must be converted to class indices first."
        )
    return np.asarray(img).astype(np.int64)


def read_rgb_ids(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB-encoded id PNG (COCO panoptic) as ``int64[H, W]``: id = R + 256 G + 256^2 B."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    rgb = np.asarray(img).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image file without decoding its pixels."""
    path = Path(path)
    try:
        with _size_guard(path), Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file not found.") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc}); the file is corrupt.") from exc
    return h, w
