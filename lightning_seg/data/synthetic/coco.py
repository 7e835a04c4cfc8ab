"""Encoding rendered masks as COCO segmentations: pixel-outline polygons and RLE.

``mask_to_polygons`` traces the pixel-edge outline of a mask. Its vertices lie on pixel
corners, and pycocotools rasterises such a polygon back to exactly the same pixels (a
horizontal outline edge at ``y = r`` spanning ``[c, c+1]`` toggles pixel ``(r, c)`` in its
column-wise even-odd fill), so a traced polygon is a lossless encoding of a hole-free mask.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def rle_compressed(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of ``bool[H, W]``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    height, width = (int(v) for v in rle["size"])
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}`` (column-major runs,
    starting with a run of zeros that may be empty)."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Pixel extent ``[x, y, w, h]`` of a non-empty mask (pycocotools ``toBbox`` convention)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


Vertex = tuple[int, int]


def _boundary_edges(mask: np.ndarray) -> dict[Vertex, list[Vertex]]:
    """Directed pixel-edge boundary, inside on the right (clockwise on screen): start -> ends."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    edges: dict[Vertex, list[Vertex]] = {}

    def add(selected: np.ndarray, start: Vertex, end: Vertex) -> None:
        for r, c in np.argwhere(selected).tolist():
            edges.setdefault((c + start[0], r + start[1]), []).append((c + end[0], r + end[1]))

    add(inner & ~m[:-2, 1:-1], (0, 0), (1, 0))  # top edge, going right
    add(inner & ~m[1:-1, 2:], (1, 0), (1, 1))  # right edge, going down
    add(inner & ~m[2:, 1:-1], (1, 1), (0, 1))  # bottom edge, going left
    add(inner & ~m[1:-1, :-2], (0, 1), (0, 0))  # left edge, going up
    return edges


def _trace_cycles(edges: dict[Vertex, list[Vertex]]) -> list[list[Vertex]]:
    """Chain directed edges into closed cycles of vertices.

    Where two cycles (or two parts of one) touch at a corner, the walk turns right, i.e. keeps
    hugging the pixel on its right: diagonal neighbours stay apart (4-connectivity).
    """
    cycles = []
    while edges:
        start = min(edges)
        first = edges[start].pop(0)
        if not edges[start]:
            del edges[start]
        cycle, prev, here = [start], start, first
        while True:
            heading = (here[0] - prev[0], here[1] - prev[1])
            right = (here[0] - heading[1], here[1] + heading[0])
            options = edges.get(here, []) + ([first] if here == start else [])
            nxt = right if right in options else options[0]
            if here == start and nxt == first:
                break
            cycle.append(here)
            edges[here].remove(nxt)
            if not edges[here]:
                del edges[here]
            prev, here = here, nxt
        cycles.append(cycle)
    return cycles


def _drop_collinear(cycle: list[Vertex]) -> list[Vertex]:
    """Remove vertices where the outline goes straight on."""
    n = len(cycle)
    keep = []
    for i in range(n):
        (x0, y0), (x1, y1), (x2, y2) = cycle[i - 1], cycle[i], cycle[(i + 1) % n]
        if (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1) != 0:
            keep.append(cycle[i])
    return keep


def _signed_area(cycle: list[Vertex]) -> float:
    x = np.array([p[0] for p in cycle], dtype=np.float64)
    y = np.array([p[1] for p in cycle], dtype=np.float64)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def mask_to_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Pixel-outline polygons (one per 4-connected part) that decode exactly to ``mask``.

    Args:
        mask: ``bool[H, W]``.

    Returns:
        COCO polygons ``[[x0, y0, x1, y1, ...], ...]``, or None when the mask has a hole (COCO
        polygons are unioned, so they cannot express holes: use RLE then).
    """
    cycles = [_drop_collinear(c) for c in _trace_cycles(_boundary_edges(mask))]
    if any(_signed_area(c) < 0 for c in cycles):
        return None
    return [[float(v) for p in c for v in p] for c in cycles]
