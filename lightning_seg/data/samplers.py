"""Repeat-factor sampling for long-tailed instance datasets (LVIS).

Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance Segmentation", CVPR 2019,
section 4.2: with ``f(c)`` the fraction of training images that contain category ``c``, the
category repeat factor is ``r(c) = max(1, sqrt(t / f(c)))`` and an image's repeat factor is the
largest ``r(c)`` of the categories it contains; each epoch shows an image ``r`` times (about).
RefineMask's official LVIS config uses mmdetection's ``ClassBalancedDataset`` with
``oversample_thr=1e-3``, which repeats every image ``ceil(r)`` times (``rounding="ceil"``);
detectron2 rounds stochastically each epoch (``rounding="stochastic"``: ``floor(r)`` times plus
once more with probability ``r - floor(r)``). An image without annotations has ``r = 1``.

Usage: ``SegDataModule(repeat_factor_thresh=1e-3)`` (any instance DataModule), or
``RepeatFactorSampler(repeat_factors(item_categories(dataset), 1e-3))`` with a DataLoader. The
epoch length is printed by ``python -m lightning_seg.data.samplers ANNOTATION.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset

log = logging.getLogger("lightning_seg.data")

ROUNDINGS = ("ceil", "stochastic")


def repeat_factors(item_categories: Sequence[np.ndarray], thresh: float) -> np.ndarray:
    """Repeat factor of every item.

    Args:
        item_categories: per item, the category (class) indices of its annotations (repeats
            allowed; an item counts once per category).
        thresh: ``t``: categories in a smaller fraction of the items than ``t`` are repeated.

    Returns:
        ``float64[I]``, each ``>= 1``.
    """
    if thresh <= 0:
        raise ValueError(f"repeat-factor threshold must be > 0, got {thresh}")
    num_items = len(item_categories)
    if num_items == 0:
        return np.zeros(0, dtype=np.float64)
    unique = [np.unique(np.asarray(c, dtype=np.int64)) for c in item_categories]
    all_cats = np.concatenate(unique) if unique else np.zeros(0, dtype=np.int64)
    if all_cats.size and all_cats.min() < 0:
        raise ValueError(f"category indices must be >= 0, got {int(all_cats.min())}")
    counts = np.bincount(all_cats, minlength=1).astype(np.float64)  # items per category
    with np.errstate(divide="ignore"):
        freq = counts / num_items
        cat_repeat = np.maximum(1.0, np.sqrt(thresh / freq))  # inf for absent categories, unused
    return np.array([cat_repeat[c].max() if c.size else 1.0 for c in unique], dtype=np.float64)


def item_categories(dataset: Dataset) -> list[np.ndarray]:
    """Category indices of every item's annotations, read from the dataset's index (no image
    is decoded).

    Supports ``CocoInstanceDataset`` and its subclasses (LVIS), a ``Subset`` of one, a wrapper
    with the same items in ``.dataset`` (``TransformedDataset``), and any dataset with an
    ``item_categories()`` method returning the same.

    Raises:
        TypeError: the dataset cannot tell its items' categories without loading them.
    """
    if isinstance(dataset, Subset):
        inner = item_categories(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    own = getattr(dataset, "item_categories", None)
    if callable(own):
        return list(own())
    index, rows = getattr(dataset, "index", None), getattr(dataset, "rows", None)
    if index is None and isinstance(getattr(dataset, "dataset", None), Dataset):
        return item_categories(dataset.dataset)  # a wrapper with the same items (transforms)
    index, rows = getattr(dataset, "index", None), getattr(dataset, "rows", None)
    if index is not None and rows is not None and hasattr(index, "ann_labels"):
        labels, offsets = index.ann_labels, index.image_ann_offsets
        return [labels[offsets[int(r)] : offsets[int(r) + 1]] for r in rows]
    raise TypeError(
        f"repeat-factor sampling needs the categories of every item without loading it; "
        f"{type(dataset).__name__} has no annotation index (CocoInstanceDataset, LvisDataset) "
        f"and no item_categories() method: add one, or unset repeat_factor_thresh"
    )


class RepeatFactorSampler(Sampler[int]):
    """Each epoch, every item ``i`` appears about ``r_i`` times, in a shuffled order.

    The order (and, for stochastic rounding, the repeat counts) depend only on ``seed`` and the
    epoch, so every process of a distributed run draws the same list (Lightning splits it across
    devices). The epoch is set by ``set_epoch`` (Lightning calls it before each epoch); a pass
    not preceded by ``set_epoch`` takes the next epoch. ``len`` is the current epoch's length.

    Args:
        factors: ``float[I]`` repeat factors (``repeat_factors``).
        rounding: ``"ceil"`` (mmdetection's ``ClassBalancedDataset``, RefineMask's official
            LVIS config) or ``"stochastic"`` (detectron2, the LVIS paper's sampler).
        shuffle: shuffle the repeated list each epoch.
        seed: base seed.
    """

    def __init__(
        self, factors: Sequence[float] | np.ndarray, rounding: str = "ceil", shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        self.factors = np.asarray(factors, dtype=np.float64)
        if self.factors.size and self.factors.min() < 1:
            raise ValueError("repeat factors must be >= 1")
        self.rounding = rounding
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._pinned = True  # the next pass uses self.epoch as it is
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._pinned = True

    def indices(self, epoch: int) -> list[int]:
        """The items of ``epoch``, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
        if self.rounding == "ceil":
            counts = np.ceil(self.factors - 1e-9).astype(np.int64)
        else:
            whole = np.floor(self.factors)
            draw = torch.rand(len(self.factors), generator=g, dtype=torch.float64).numpy()
            counts = (whole + (draw < self.factors - whole)).astype(np.int64)
        items = np.repeat(np.arange(len(self.factors)), counts)
        if self.shuffle:
            items = items[torch.randperm(len(items), generator=g).numpy()]
        out = items.tolist()
        self._cache = (epoch, out)
        return out

    def __len__(self) -> int:
        return len(self.indices(self.epoch))

    def __iter__(self) -> Iterator[int]:
        if not self._pinned:  # a caller that never calls set_epoch still gets new epochs
            self.epoch += 1
        self._pinned = False
        yield from self.indices(self.epoch)


def describe(factors: np.ndarray, rounding: str = "ceil") -> str:
    """One line: items, items repeated, epoch length."""
    repeated = int((factors > 1).sum())
    length = int(np.ceil(factors - 1e-9).sum()) if rounding == "ceil" else float(factors.sum())
    return (f"repeat-factor sampling: {len(factors)} items, {repeated} repeated (max x"
            f"{factors.max() if factors.size else 1:.2f}); {length} items per epoch")


def main(argv: Sequence[str] | None = None) -> None:
    """Print the repeat-factor epoch length of a COCO / LVIS annotation file."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("ann_file")
    parser.add_argument("--thresh", type=float, default=1e-3)
    parser.add_argument("--rounding", choices=ROUNDINGS, default="ceil")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (all devices)")
    parser.add_argument("--drop-empty", action="store_true", help="leave images without annotations out")
    args = parser.parse_args(argv)
    from lightning_seg.data.formats.coco import CocoIndex

    def file_name(im: dict) -> str:  # LVIS v1 images have a coco_url instead of a file_name
        return str(im.get("file_name") or im.get("coco_url") or im.get("id"))

    index = CocoIndex.build(args.ann_file, with_masks=False, file_name_of=file_name)
    counts = np.diff(index.image_ann_offsets)
    rows = np.flatnonzero(counts > 0) if args.drop_empty else np.arange(len(counts))
    cats = [index.ann_labels[index.image_ann_offsets[r] : index.image_ann_offsets[r + 1]] for r in rows]
    factors = repeat_factors(cats, args.thresh)
    print(describe(factors, args.rounding))
    items = np.ceil(factors - 1e-9).sum() if args.rounding == "ceil" else factors.sum()
    print(f"steps per epoch at {args.batch_size} images: {math.ceil(items / args.batch_size)}")


if __name__ == "__main__":
    main()
