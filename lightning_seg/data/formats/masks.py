"""Compact storage of COCO-style segmentations (polygons, RLE) and lazy decoding to bitmaps.

A COCO-scale annotation file holds ~860k segmentations. Keeping them as the parsed Python
lists costs gigabytes, so readers copy every segmentation once into flat NumPy arrays
(``SegmentStore``) while parsing, and decode the few masks of one image at item time with
pycocotools (``frPyObjects`` + ``merge`` + ``decode``, exactly what ``COCO.annToMask`` does).

Segment kinds:
    ``NONE``: no segmentation (e.g. a keypoint-only record, or an empty video frame).
    ``POLYGON``: one or more polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels.
    ``RLE``: compressed RLE ``{"size": [h, w], "counts": "<LEB128 string>"}``.
    ``RLE_UNCOMPRESSED``: ``{"size": [h, w], "counts": [n0, n1, ...]}`` (column-major runs).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

NONE, POLYGON, RLE, RLE_UNCOMPRESSED = 0, 1, 2, 3
COORD_SCALE = 100.0  # polygon coordinates are stored as integer hundredths when lossless
KIND_NAMES = {NONE: "none", POLYGON: "polygon", RLE: "rle", RLE_UNCOMPRESSED: "uncompressed rle"}

# Problems ``SegmentStoreBuilder.add`` reports (the caller turns them into skips / fixes).
BAD_POLYGON_PART = "polygon part with fewer than 3 points (or an odd number of coordinates) dropped"
NO_VALID_POLYGON = "polygon with fewer than 3 points"
BAD_SEGMENTATION = "unreadable segmentation (neither polygons nor an RLE dict)"
NON_NUMERIC_POLYGON = "polygon with a coordinate that is not a finite number"
# Problems ``SegmentStore.rle_problems`` reports.
BAD_RLE_STRING = "compressed RLE counts unreadable (not a pycocotools RLE string)"
BAD_RLE_SUM = "RLE counts do not sum to height * width"
_MAX_RLE_CHARS = 7  # 7 x 5 bits: any count of an image below 2**32 pixels fits
_UINT32 = 1 << 32


def _offsets(lengths: list[int] | np.ndarray) -> np.ndarray:
    """``int64[n + 1]`` start offsets of consecutive runs with the given lengths."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


def _run_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``int64[R]`` exact sums of ``values[offsets[r]:offsets[r + 1]]`` (0 when empty)."""
    cum = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cum[offsets[1:]] - cum[offsets[:-1]]


def finite_numbers(values: list) -> np.ndarray | None:
    """``float64[n]`` of ``values`` when every one is a finite JSON number, else None.

    One NumPy conversion: a list holding a string, ``None``, a list or only booleans does not
    become a 1-D numeric array.
    """
    if not values:
        return np.zeros(0, dtype=np.float64)
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        return None
    arr = arr.astype(np.float64, copy=False)
    return arr if np.isfinite(arr).all() else None


def _all_finite_numbers(part: list) -> bool:
    """Whether every value of ``part`` is an int or a finite float (booleans are not)."""
    for v in part:
        t = type(v)
        if t is float:
            if not math.isfinite(v):
                return False
        elif t is not int:
            return False
    return True


def decode_rle_strings(
    chars: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode compressed COCO RLE strings, vectorised, without trusting them.

    The format is pycocotools' ``rleFrString``: each count is written in 5-bit groups, least
    significant first, as characters ``48 + group`` (bit 0x20: another group follows; bit
    0x10 of the last group: negative), and count ``m >= 3`` is stored as the difference to
    count ``m - 2``. pycocotools decodes without any check, and ``decode`` then writes
    ``sum(counts)`` pixels into an ``h * w`` buffer, so a garbage string reads or writes out
    of bounds; here a string is flagged unreadable instead.

    Args:
        chars: ``uint8[M]`` the strings back to back.
        offsets: ``int64[R + 1]`` string ``r`` is ``chars[offsets[r]:offsets[r + 1]]``.

    Returns:
        ``(counts int64[C], count_offsets int64[R + 1], readable bool[R])``: the run lengths
        of string ``r`` are ``counts[count_offsets[r]:count_offsets[r + 1]]`` (none for an
        unreadable string). A string is unreadable when it holds a character outside
        ``'0'..'o'``, ends inside a count, spends more than 7 characters on one count, or
        decodes to a count outside ``[0, 2**32)``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    num = len(offsets) - 1
    lengths = np.diff(offsets)
    rle_of_char = np.repeat(np.arange(num), lengths)  # [M]
    c = chars.astype(np.int64) - 48
    readable = np.ones(num, dtype=bool)
    readable[rle_of_char[(c < 0) | (c > 63)]] = False
    more = (c & 0x20) != 0
    nonempty = np.flatnonzero(lengths > 0)
    readable[nonempty[more[offsets[1:][nonempty] - 1]]] = False  # ends inside a count
    # keep the characters of the strings still readable: every count ends inside its string
    keep = readable[rle_of_char]
    c, more, rle_of_char = c[keep], more[keep], rle_of_char[keep]
    ends = np.flatnonzero(~more)  # last character of each count
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)[: len(ends)]
    num_chars = ends - starts + 1  # [C]
    rle_of_count = rle_of_char[starts]
    readable[rle_of_count[num_chars > _MAX_RLE_CHARS]] = False
    shift = 5 * np.minimum(np.arange(len(c)) - np.repeat(starts, num_chars), _MAX_RLE_CHARS)
    x = np.add.reduceat((c & 0x1F) << shift, starts) if len(starts) else np.zeros(0, np.int64)
    width = 5 * np.minimum(num_chars, _MAX_RLE_CHARS + 1)
    x = np.where((c[ends] & 0x10) != 0, x - (np.int64(1) << width), x)  # sign extension
    # undo the differences: counts 1, 3, 5, ... and 2, 4, 6, ... are running sums
    per_rle = np.bincount(rle_of_count, minlength=num)
    first = np.concatenate([[0], np.cumsum(per_rle)[:-1]])
    m = np.arange(len(x)) - first[rle_of_count]
    chain = rle_of_count * 3 + np.where(m == 0, 0, np.where(m % 2 == 1, 1, 2))
    order = np.argsort(chain, kind="stable")
    xs = x[order]
    sums = np.cumsum(xs)
    head = np.concatenate([[True], chain[order][1:] != chain[order][:-1]]) if len(xs) else xs
    head_pos = np.flatnonzero(head)
    group = np.cumsum(head) - 1
    counts = np.empty_like(x)
    counts[order] = sums - (sums[head_pos] - xs[head_pos])[group]
    readable[rle_of_count[(counts < 0) | (counts >= _UINT32)]] = False
    kept = readable[rle_of_count]
    counts = counts[kept]
    count_offsets = _offsets(np.bincount(rle_of_count[kept], minlength=num))
    return counts, count_offsets, readable


@dataclass
class SegmentStore:
    """Every segmentation of a dataset in flat arrays; one row per segment.

    Attributes:
        kind: ``uint8[S]`` one of ``NONE, POLYGON, RLE, RLE_UNCOMPRESSED``.
        ref: ``int64[S]`` row of the segment in its kind's table (-1 for ``NONE``).
        rle_size: ``int32[S, 2]`` ``(h, w)`` written in an RLE (0 for polygons).
        poly_group_offsets: ``int64[G + 1]`` first polygon of each polygon group.
        poly_offsets: ``int64[P + 1]`` first coordinate of each polygon in ``coords``.
        coords: ``[M]`` all polygon coordinates ``x1, y1, x2, y2, ...``: ``float64``, or
            hundredths (``uint16`` when all lie in ``[0, 655.35]``, else ``int32``) when
            every coordinate of the file is exactly such a value (COCO writes 2 decimals):
            ``coords / COORD_SCALE`` gives back the very same float64 values, at a quarter
            (half) of the memory.
        rle_chars: ``uint8[Mc]`` all compressed RLE strings, back to back.
        rle_char_offsets: ``int64[R + 1]``.
        rle_counts: ``uint32[Mu]`` all uncompressed RLE counts, back to back.
        rle_count_offsets: ``int64[U + 1]``.
    """

    kind: np.ndarray
    ref: np.ndarray
    rle_size: np.ndarray
    poly_group_offsets: np.ndarray
    poly_offsets: np.ndarray
    coords: np.ndarray
    rle_chars: np.ndarray
    rle_char_offsets: np.ndarray
    rle_counts: np.ndarray
    rle_count_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.__dataclass_fields__)

    def polygons(self, i: int) -> list[np.ndarray]:
        """The polygons of segment ``i`` (``float64[2 * points]`` each; empty for non-polygons)."""
        if self.kind[i] != POLYGON:
            return []
        g = self.ref[i]
        p0, p1 = self.poly_group_offsets[g], self.poly_group_offsets[g + 1]
        offs = self.poly_offsets[p0 : p1 + 1]
        coords = self.coords[offs[0] : offs[-1]]
        if coords.dtype != np.float64:
            coords = coords / COORD_SCALE  # exact: checked when the store was built
        offs = offs - offs[0]
        return [coords[offs[j] : offs[j + 1]] for j in range(len(offs) - 1)]

    def to_rle(self, i: int, height: int, width: int) -> dict | None:
        """Segment ``i`` as one compressed pycocotools RLE (polygons rasterised at ``h x w``).

        Returns None for a segment of kind ``NONE``. Polygon rasterisation equals
        ``pycocotools.COCO.annToRLE`` (same coordinates in float64, same calls).
        """
        kind = self.kind[i]
        r = self.ref[i]
        if kind == POLYGON:
            polys = [p.tolist() for p in self.polygons(i)]
            return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        if kind == RLE:
            chars = self.rle_chars[self.rle_char_offsets[r] : self.rle_char_offsets[r + 1]]
            h, w = self.rle_size[i]
            return {"size": [int(h), int(w)], "counts": chars.tobytes()}
        if kind == RLE_UNCOMPRESSED:
            counts = self.rle_counts[self.rle_count_offsets[r] : self.rle_count_offsets[r + 1]]
            h, w = self.rle_size[i]
            return mask_utils.frPyObjects(
                {"size": [int(h), int(w)], "counts": counts.tolist()}, int(h), int(w)
            )
        return None

    def decode(self, indices: np.ndarray | list[int], height: int, width: int) -> np.ndarray:
        """Decode segments to ``bool[N, H, W]`` (a ``NONE`` segment decodes to all False)."""
        n = len(indices)
        out = np.zeros((n, height, width), dtype=bool)
        rles, rows = [], []
        for row, i in enumerate(indices):
            rle = self.to_rle(int(i), height, width)
            if rle is not None:
                rles.append(rle)
                rows.append(row)
        if rles:
            decoded = mask_utils.decode(rles)  # uint8[H, W, n'] column-major
            out[rows] = decoded.transpose(2, 0, 1).astype(bool)  # [n', H, W]
        return out

    def bbox(self, i: int, height: int, width: int) -> np.ndarray:
        """``float64[4]`` xywh box of segment ``i`` (zeros for ``NONE``), without decoding."""
        if self.kind[i] == POLYGON:
            c = np.concatenate(self.polygons(i))
            xs, ys = c[0::2], c[1::2]
            return np.array([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()])
        rle = self.to_rle(i, height, width)
        if rle is None:
            return np.zeros(4)
        return np.asarray(mask_utils.toBbox(rle), dtype=np.float64)

    def rle_problems(self, block_chars: int = 1 << 22) -> dict[str, np.ndarray]:
        """RLE segments that cannot be decoded safely (pycocotools does not check them).

        Args:
            block_chars: compressed strings are decoded about this many characters at a time
                (bounds the temporary arrays).

        Returns:
            ``{BAD_RLE_STRING: bool[S], BAD_RLE_SUM: bool[S]}``: a compressed string that is
            unreadable (``decode_rle_strings``), and an RLE (either kind) whose run lengths do
            not add up to the ``h * w`` written in it.
        """
        unreadable = np.zeros(len(self), dtype=bool)
        wrong_sum = np.zeros(len(self), dtype=bool)
        area = self.rle_size[:, 0].astype(np.int64) * self.rle_size[:, 1]
        rows = np.flatnonzero(self.kind == RLE)  # row r holds string self.ref[r] (file order)
        offs = self.rle_char_offsets
        start = 0
        while start < len(rows):
            stop = int(np.searchsorted(offs, offs[start] + block_chars, side="right"))
            stop = min(max(stop - 1, start + 1), len(rows))
            block = offs[start : stop + 1]
            counts, count_offs, readable = decode_rle_strings(
                self.rle_chars[block[0] : block[-1]], block - block[0]
            )
            totals = _run_sums(counts, count_offs)
            here = rows[start:stop]
            unreadable[here] = ~readable
            wrong_sum[here] = readable & (totals != area[here])
            start = stop
        rows = np.flatnonzero(self.kind == RLE_UNCOMPRESSED)
        if len(rows):
            totals = _run_sums(self.rle_counts, self.rle_count_offsets)
            wrong_sum[rows] = totals != area[rows]
        return {BAD_RLE_STRING: unreadable, BAD_RLE_SUM: wrong_sum}

    @classmethod
    def empty(cls) -> SegmentStore:
        return SegmentStoreBuilder().finish()


class SegmentStoreBuilder:
    """Accumulates segmentations while a JSON file is parsed, then packs a ``SegmentStore``.

    Everything goes into compact buffers (``bytearray``, ``array.array``); polygon
    coordinates are converted to NumPy per call and packed every ~1M values, so no
    per-annotation Python object outlives the parsed slice it came from.
    """

    _FLUSH = 1 << 20
    _BUFFERS = (
        "_kind", "_rle_size", "_group_len", "_poly_len", "_chars", "_char_len", "_counts",
        "_count_len",
    )

    def __init__(self) -> None:
        self._kind = bytearray()  # one byte per segment
        self._rle_size = array("i")  # h, w of each RLE segment (both RLE kinds, file order)
        self._group_len = array("I")  # polygons per polygon segment
        self._poly_len = array("I")  # coordinates per polygon
        self._coord_chunks_exact: list[np.ndarray] = []  # float64, not yet packed
        self._num_exact = 0
        self._coord_chunks: list[np.ndarray] = []
        self._chars = bytearray()  # compressed RLE strings back to back
        self._char_len = array("q")
        self._counts = array("I")  # uncompressed RLE counts back to back
        self._count_len = array("q")

    def add(self, seg: object) -> str | None:
        """Store one segmentation; returns a problem string (``BAD_*``/``NO_*``) or None.

        A polygon part with fewer than 3 points (or an odd number of coordinates) is dropped
        (pycocotools would read a 4-number part as a box); when no part is left the segment
        is stored as ``NONE`` and ``NO_VALID_POLYGON`` is returned.
        """
        problems = self.add_many([seg])
        return problems[0][1] if problems else None

    def add_many(self, segs: list) -> list[tuple[int, str]]:
        """Store segmentations in order; returns ``(position in segs, problem)`` pairs.

        Polygon coordinates must be finite JSON numbers: the coordinates of the whole call
        are converted at once, and only when that finds a non-number (a string, ``null``, a
        nested list) are the segmentations parsed again one value at a time, so that each
        polygon holding one is stored as ``NONE`` with ``NON_NUMERIC_POLYGON`` (a numeric
        string such as ``"12.5"`` is not read as a number). A boolean among numbers reads as
        0 / 1, as in pycocotools (``np.array(poly, np.double)``).
        """
        state = self._state()
        problems, coords = self._add_many(segs, strict=False)
        exact = finite_numbers(coords)
        if exact is None:
            self._restore(state)
            problems, coords = self._add_many(segs, strict=True)
            exact = np.array(coords, dtype=np.float64)
        if len(exact):
            self._coord_chunks_exact.append(exact)
            self._num_exact += len(exact)
            if self._num_exact > self._FLUSH:
                self._flush()
        return problems

    def _add_many(self, segs: list, strict: bool) -> tuple[list[tuple[int, str]], list]:
        problems = []
        coords: list = []
        kind = self._kind
        poly_len = self._poly_len
        group_len = self._group_len
        for j, seg in enumerate(segs):
            if type(seg) is list and seg:
                num = 0
                bad = False
                if strict and not all(
                    type(part) is not list or _all_finite_numbers(part) for part in seg
                ):
                    kind.append(NONE)
                    problems.append((j, NON_NUMERIC_POLYGON))
                    continue
                for part in seg:
                    n = len(part) if type(part) is list else 0
                    if n < 6 or n & 1:
                        bad = True
                        continue
                    coords.extend(part)
                    poly_len.append(n)
                    num += 1
                if num:
                    kind.append(POLYGON)
                    group_len.append(num)
                    if bad:
                        problems.append((j, BAD_POLYGON_PART))
                else:
                    kind.append(NONE)
                    problems.append((j, NO_VALID_POLYGON))
            elif seg is None or seg == []:
                kind.append(NONE)
            else:
                problem = self._add_rle(seg)
                if problem is not None:
                    problems.append((j, problem))
        return problems, coords

    def _state(self) -> tuple[int, ...]:
        """Lengths of every buffer, to undo a partly added call (``_restore``)."""
        return tuple(len(getattr(self, name)) for name in self._BUFFERS)

    def _restore(self, state: tuple[int, ...]) -> None:
        for name, n in zip(self._BUFFERS, state):
            del getattr(self, name)[n:]

    def _add_rle(self, seg: object) -> str | None:
        if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
            self._kind.append(NONE)
            return BAD_SEGMENTATION
        counts = seg["counts"]
        try:
            h, w = (int(v) for v in seg["size"])
            if isinstance(counts, str):
                counts = counts.encode("ascii")
            if isinstance(counts, bytes):
                self._chars += counts
                self._char_len.append(len(counts))
                self._kind.append(RLE)
            elif isinstance(counts, list):
                self._counts.extend(counts)
                self._count_len.append(len(counts))
                self._kind.append(RLE_UNCOMPRESSED)
            else:
                raise TypeError
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
            self._kind.append(NONE)
            return BAD_SEGMENTATION
        self._rle_size.extend((h, w))
        return None

    def _flush(self) -> None:
        if self._coord_chunks_exact:
            exact = np.concatenate(self._coord_chunks_exact)
            self._coord_chunks_exact = []
            self._num_exact = 0
            hundredths = np.round(exact * COORD_SCALE)
            lo, hi = hundredths.min(), hundredths.max()
            if not np.array_equal(hundredths / COORD_SCALE, exact) or max(-lo, hi) >= 2**31:
                self._coord_chunks.append(exact)
            elif lo >= 0 and hi < 2**16:  # images up to 655 px (all of COCO): 2 bytes
                self._coord_chunks.append(hundredths.astype(np.uint16))
            else:
                self._coord_chunks.append(hundredths.astype(np.int32))

    def _pack_coords(self) -> np.ndarray:
        """Concatenate the coordinate chunks, freeing each once copied (peak: total + 1)."""
        chunks = self._coord_chunks
        self._coord_chunks = []
        dtype = np.result_type(np.uint16, *(c.dtype for c in chunks))
        out = np.empty(sum(len(c) for c in chunks), dtype=dtype)
        pos = 0
        chunks.reverse()
        while chunks:
            c = chunks.pop()
            if dtype == np.float64 and c.dtype != np.float64:
                c = c / COORD_SCALE
            out[pos : pos + len(c)] = c
            pos += len(c)
            del c
        return out

    def finish(self) -> SegmentStore:
        """Pack the buffers (and reset the builder)."""
        self._flush()
        coords = self._pack_coords()
        kind = np.frombuffer(bytes(self._kind), dtype=np.uint8).copy()
        ref = np.full(len(kind), -1, dtype=np.int64)
        for k in (POLYGON, RLE, RLE_UNCOMPRESSED):
            rows = np.flatnonzero(kind == k)
            ref[rows] = np.arange(len(rows))
        rle_size = np.zeros((len(kind), 2), dtype=np.int32)
        is_rle = (kind == RLE) | (kind == RLE_UNCOMPRESSED)
        rle_size[is_rle] = np.frombuffer(self._rle_size, dtype=np.int32).reshape(-1, 2)
        store = SegmentStore(
            kind=kind,
            ref=ref,
            rle_size=rle_size,
            poly_group_offsets=_offsets(np.frombuffer(self._group_len, dtype=np.uint32)),
            poly_offsets=_offsets(np.frombuffer(self._poly_len, dtype=np.uint32)),
            coords=coords,
            rle_chars=np.frombuffer(bytes(self._chars), dtype=np.uint8).copy(),
            rle_char_offsets=_offsets(np.frombuffer(self._char_len, dtype=np.int64)),
            rle_counts=np.frombuffer(self._counts, dtype=np.uint32).copy(),
            rle_count_offsets=_offsets(np.frombuffer(self._count_len, dtype=np.int64)),
        )
        self.__init__()  # release the buffers
        return store


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """``float32[N, 4]`` x1y1x2y2 pixel boxes enclosing ``bool[N, H, W]`` masks (x2/y2 exclusive).

    An empty mask gets the box ``(0, 0, 0, 0)``.
    """
    n = masks.shape[0]
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    rows = masks.any(axis=2)  # [N, H]
    cols = masks.any(axis=1)  # [N, W]
    for i in range(n):
        ys = np.flatnonzero(rows[i])
        xs = np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
