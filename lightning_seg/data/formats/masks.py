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


def _offsets(lengths: list[int] | np.ndarray) -> np.ndarray:
    """``int64[n + 1]`` start offsets of consecutive runs with the given lengths."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


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

    @classmethod
    def empty(cls) -> SegmentStore:
        return SegmentStoreBuilder().finish()


class SegmentStoreBuilder:
    """Accumulates segmentations while a JSON file is parsed, then packs a ``SegmentStore``.

    Everything goes into compact buffers (``bytearray``, ``array.array``); polygon
    coordinates are buffered in a Python list and flushed to NumPy every ~1M values, so no
    per-annotation Python object outlives the parsed slice it came from.
    """

    _FLUSH = 1 << 20

    def __init__(self) -> None:
        self._kind = bytearray()  # one byte per segment
        self._rle_size = array("i")  # h, w of each RLE segment (both RLE kinds, file order)
        self._group_len = array("I")  # polygons per polygon segment
        self._poly_len = array("I")  # coordinates per polygon
        self._coords: list[float] = []
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
        """Store segmentations in order; returns ``(position in segs, problem)`` pairs."""
        problems = []
        kind = self._kind
        coords = self._coords
        poly_len = self._poly_len
        group_len = self._group_len
        for j, seg in enumerate(segs):
            if type(seg) is list and seg:
                num = 0
                bad = False
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
        if len(coords) > self._FLUSH:
            self._flush()
        return problems

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
        if self._coords:
            exact = np.array(self._coords, dtype=np.float64)
            self._coords = []
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
