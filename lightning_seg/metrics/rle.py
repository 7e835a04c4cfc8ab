"""Run-length encoding of masks in the COCO format, fast and checked.

COCO stores a mask as the run lengths of its pixels read in column-major (Fortran) order,
compressed into an ASCII string (``pycocotools.mask``). Two helpers encode batches of masks,
byte-identical to ``pycocotools.mask.encode`` but several times faster on instance masks:
they find each mask's first and last foreground byte on 8-byte words and compute the runs of
that span only (objects are small against the image), then let ``frPyObjects`` compress them.

* ``encode_masks`` gives the standard RLE of each mask (for results files).
* ``encode_masks_transposed`` gives the RLE of each mask's *transpose* without a copy: a
  C-contiguous ``[N, H, W]`` tensor read row by row is the column-major order of the
  transposed masks. Mask IoU, crowd IoU, area and the Boundary-IoU band (a square structuring
  element and a radius from the image diagonal) are unchanged by transposing both masks of a
  pair, so the streaming metric works on these RLEs and skips one transposing copy per mask.

``rle_areas`` gives the area of many RLEs: ``pycocotools.mask.area`` on a list of 256 RLEs
or more raises ``OverflowError: Python integer 256 out of bounds for uint8`` (pycocotools
2.0.11 with numpy 2.4), so never call it on a list directly.

``validate_rles`` checks compressed RLE strings with a vectorised decoder (valid characters,
no truncated run, no negative run, runs summing to ``H * W``) so that a malformed results file
fails with the record's index instead of crashing or giving a silently wrong number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor


def binarize_masks(masks: Tensor, mask_thresh: float = 0.5) -> Tensor:
    """Binary masks from bool, integer or float (probability) masks.

    Args:
        masks: ``Tensor[N, H, W]`` bool, integer (non-zero is foreground) or float
            probabilities (``>= mask_thresh`` is foreground).
        mask_thresh: threshold for float masks.

    Returns:
        ``Tensor[N, H, W]`` bool, on the input's device.
    """
    if masks.dtype == torch.bool:
        return masks
    if masks.is_floating_point():
        return masks >= mask_thresh
    return masks != 0


def _nonzero_spans(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``uint8[N, L]``: a span ``[start, stop)`` holding all its non-zero bytes.

    Found on 8-byte words (so a span may include up to 7 zero bytes at each end); an all-zero
    row gets ``start == stop == 0``.
    """
    n, length = flat.shape
    num_words = length // 8
    start = np.zeros(n, dtype=np.int64)
    stop = np.zeros(n, dtype=np.int64)
    if num_words:
        strides = (flat.strides[0], 8)
        words = np.ndarray((n, num_words), dtype=np.uint64, buffer=flat, strides=strides)
        nonzero = words != 0  # [N, L // 8]
        found = nonzero.any(axis=1)
        first = nonzero.argmax(axis=1)
        last = num_words - 1 - nonzero[:, ::-1].argmax(axis=1)
        start[found] = 8 * first[found]
        stop[found] = 8 * (last[found] + 1)
    else:
        found = np.zeros(n, dtype=bool)
    if length % 8:
        in_tail = flat[:, 8 * num_words :].any(axis=1)
        start[in_tail & ~found] = 8 * num_words
        stop[in_tail] = length
    return start, stop


def _encode_rows(flat: np.ndarray, size: list[int]) -> list[dict]:
    """COCO RLE of each row of ``uint8[N, L]`` (0/1), read as the column-major pixel order.

    Only the span between a row's first and last non-zero byte is scanned (objects are usually
    small against the image), and ``pycocotools.mask.frPyObjects`` compresses the runs, so the
    output is byte-identical to ``pycocotools.mask.encode``.
    """
    n, length = flat.shape
    if n == 0:
        return []
    start, stop = _nonzero_spans(flat)
    objs = []
    for i in range(n):
        a, b = int(start[i]), int(stop[i])
        if a == b:
            objs.append({"size": size, "counts": [length]})
            continue
        span = flat[i, a:b]
        change = np.flatnonzero(span[1:] != span[:-1])  # last index of each run but the last
        bounds = np.empty(change.size + 2, dtype=np.int64)
        bounds[0], bounds[-1] = 0, span.size
        bounds[1:-1] = change + 1
        counts = (bounds[1:] - bounds[:-1]).tolist()
        if span[0]:
            counts.insert(0, 0)  # RLE counts start with a run of zeros
        counts[0] += a
        if span[-1]:
            if length > b:
                counts.append(length - b)
        else:
            counts[-1] += length - b
        objs.append({"size": size, "counts": counts})
    return mask_utils.frPyObjects(objs, size[0], size[1])


def encode_masks_transposed(masks: Tensor, mask_thresh: float = 0.5) -> list[dict]:
    """RLE of the transpose of each mask, without a transposing copy.

    The returned RLEs have ``size == [W, H]``; use them only against RLEs produced the same
    way (IoU and area are those of the untransposed masks).

    Args:
        masks: ``Tensor[N, H, W]`` (see ``binarize_masks``), on any device.
        mask_thresh: threshold for float masks.

    Returns:
        N dicts ``{"size": [W, H], "counts": bytes}``.
    """
    binary = binarize_masks(masks, mask_thresh).contiguous().cpu()
    n, h, w = binary.shape
    flat = binary.view(torch.uint8).numpy().reshape(n, h * w)  # row-major == column-major of mask.T
    return _encode_rows(flat, [w, h])


def encode_masks(masks: Tensor, mask_thresh: float = 0.5) -> list[dict]:
    """Standard COCO RLE of each mask (as ``pycocotools.mask.encode``).

    Args:
        masks: ``Tensor[N, H, W]`` (see ``binarize_masks``), on any device.
        mask_thresh: threshold for float masks.

    Returns:
        N dicts ``{"size": [H, W], "counts": bytes}``.
    """
    binary = binarize_masks(masks, mask_thresh)
    n, h, w = binary.shape
    columns = binary.transpose(1, 2).contiguous().cpu()  # [N, W, H]: column-major pixel order
    return _encode_rows(columns.view(torch.uint8).numpy().reshape(n, w * h), [h, w])


def decode_rle_strings(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode many compressed COCO RLE strings at once (vectorised ``rleFrString``).

    Each run is stored as 5-bit groups (least significant first, ``0x20`` = more groups follow,
    ``0x10`` of the last group = sign), offset by 48 into printable ASCII; runs after the third
    are stored as the difference to the run two places before.

    Args:
        strings: R compressed ``counts`` strings (bytes).

    Returns:
        ``counts`` int64 [M]: all runs, string after string; ``owner`` int64 [M]: the string
        index of each run; ``ok`` bool [R]: False for a string with an invalid character, a
        truncated last run, an overlong run or a negative run.
    """
    num = len(strings)
    lens = np.fromiter((len(s) for s in strings), dtype=np.int64, count=num)
    ok = np.ones(num, dtype=bool)
    if lens.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), ok
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    char_owner = np.repeat(np.arange(num), lens)
    ok &= np.bincount(char_owner[(chars < 0) | (chars > 63)], minlength=num) == 0
    chars &= 63  # keep the arithmetic bounded for strings already marked bad

    more = (chars & 0x20) != 0
    last_char = np.cumsum(lens)[lens > 0] - 1
    ok[lens > 0] &= ~more[last_char]  # the last run of a string must be complete
    run_end = ~more
    run_end[last_char] = True  # never let a run continue into the next string
    run_start = np.flatnonzero(np.concatenate(([True], run_end[:-1])))
    run_of_char = np.cumsum(run_end) - run_end
    group = np.arange(chars.size) - run_start[run_of_char]  # 5-bit group index within the run
    overlong = group >= 8  # a 32-bit run needs at most 7 groups
    ok &= np.bincount(char_owner[overlong], minlength=num) == 0
    group = np.minimum(group, 7)

    values = np.add.reduceat((chars & 0x1F) << (5 * group), run_start)
    last = np.flatnonzero(run_end)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (group[last][negative] + 1))

    owner = char_owner[last]
    runs_per_string = np.bincount(owner, minlength=num)
    first_run = np.cumsum(runs_per_string) - runs_per_string
    index = np.arange(values.size) - first_run[owner]  # run index m within its string
    # m > 2 stores cnt[m] - cnt[m - 2]: prefix sums along the odd runs (from m = 1) and the
    # even runs (from m = 2) of each string.
    for parity, start in ((1, 1), (0, 2)):
        sel = np.flatnonzero((index % 2 == parity) & (index >= start))
        if sel.size == 0:
            continue
        part = values[sel]
        csum = np.cumsum(part)
        seg_first = np.concatenate(([True], owner[sel][1:] != owner[sel][:-1]))
        seg_id = np.cumsum(seg_first) - 1
        values[sel] = csum - (csum - part)[seg_first][seg_id]
    ok &= np.bincount(owner[values < 0], minlength=num) == 0
    return values, owner, ok


def validate_rles(rles: Sequence[dict]) -> list[tuple[int, str]]:
    """Check COCO RLE dicts; returns ``(index, reason)`` for every bad one (empty when all good).

    Accepts compressed (``counts`` str/bytes) and uncompressed (``counts`` list of ints) RLEs.
    A valid RLE has ``size == [h, w]`` with non-negative integers and runs that are
    non-negative and sum to ``h * w``.
    """
    bad: list[tuple[int, str]] = []
    str_index: list[int] = []
    str_counts: list[bytes] = []
    areas: list[int] = []
    for i, rle in enumerate(rles):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            bad.append((i, "RLE must be a dict with 'size' [h, w] and 'counts'"))
            continue
        size = rle["size"]
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in size)
        ):
            bad.append((i, f"RLE 'size' must be [height, width] integers, got {size!r}"))
            continue
        counts = rle["counts"]
        total = int(size[0]) * int(size[1])
        if isinstance(counts, str):
            counts = counts.encode("ascii", errors="replace")
        if isinstance(counts, bytes):
            str_index.append(i)
            str_counts.append(counts)
            areas.append(total)
        elif isinstance(counts, (list, tuple)):
            if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
                bad.append((i, "uncompressed RLE 'counts' must be non-negative integers"))
            elif sum(counts) != total:
                bad.append((i, f"RLE runs sum to {sum(counts)}, expected h*w = {total}"))
        else:
            bad.append((i, f"RLE 'counts' must be a string or a list, got {type(counts).__name__}"))
    if str_counts:
        values, owner, ok = decode_rle_strings(str_counts)
        totals = np.bincount(owner, weights=values.astype(np.float64), minlength=len(str_counts))
        for j, i in enumerate(str_index):
            if not ok[j]:
                bad.append((i, "compressed RLE string is malformed (bad character or cut run)"))
            elif int(round(totals[j])) != areas[j]:
                total = int(round(totals[j]))
                bad.append((i, f"RLE runs sum to {total}, expected h*w = {areas[j]}"))
    return sorted(bad)


_AREA_CHUNK = 128  # pycocotools.mask.area on a list fails from 256 RLEs (see the module doc)


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """Foreground pixel count of each COCO RLE (``pycocotools.mask.area``, one per RLE).

    Use this instead of ``pycocotools.mask.area`` on a list, which raises ``OverflowError``
    from 256 RLEs (pycocotools 2.0.11 with numpy 2.4). Compressed strings are measured by
    pycocotools in lists of 128 (its C decoder: 7x faster than one call per RLE and 25x faster
    than decoding with numpy, on 10^5 instance masks); an uncompressed RLE's area is the sum of
    its odd-indexed runs (runs alternate 0s and 1s, starting with 0s).

    Args:
        rles: R dicts with ``size`` and ``counts`` as a compressed string (bytes or str) or a
            list of runs. Compressed strings are not checked (``validate_rles`` does that).

    Returns:
        ``int64[R]``.
    """
    areas = np.zeros(len(rles), dtype=np.int64)
    compressed: list[int] = []
    for i, rle in enumerate(rles):
        counts = rle["counts"]
        if isinstance(counts, (bytes, str)):
            compressed.append(i)
        else:
            areas[i] = sum(int(c) for c in counts[1::2])
    for a in range(0, len(compressed), _AREA_CHUNK):
        index = compressed[a : a + _AREA_CHUNK]
        areas[index] = mask_utils.area([rles[i] for i in index])
    return areas
