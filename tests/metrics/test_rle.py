"""COCO RLE helpers against pycocotools."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from lightning_seg.metrics.rle import encode_masks, encode_masks_transposed, rle_areas


def _random_masks(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """``bool[n, h, w]``: noise, blobs and stripes of every density, plus an empty and a full
    mask at the front."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    masks[1] = True
    for j in range(2, n):
        kind = j % 3
        if kind == 0:
            masks[j] = rng.random((h, w)) < rng.uniform(0.01, 0.99)
        elif kind == 1:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[j, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        else:
            masks[j, :, rng.integers(0, w) :: rng.integers(1, 4)] = True
    return masks


def _with_edge_pixels(masks: np.ndarray) -> np.ndarray:
    """Append masks whose only foreground is at the ends of the column-major order (the first
    or last pixel, the first or last column), where the 8-byte span search has its edges."""
    n, h, w = masks.shape
    extra = np.zeros((6, h, w), dtype=bool)
    extra[0, 0, 0] = True
    extra[1, -1, -1] = True
    extra[2, 0, 0] = extra[2, -1, -1] = True
    extra[3, :, 0] = True
    extra[4, :, -1] = True
    extra[5, -1, 0] = extra[5, 0, -1] = True
    return np.concatenate([masks, extra])


def _pycocotools_encode(masks: np.ndarray) -> list[dict]:
    """``pycocotools.mask.encode`` of ``bool[N, H, W]`` (Fortran-order ``uint8[H, W, N]``)."""
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 5), (7, 3), (37, 53), (64, 64), (2, 250)])
def test_encode_masks_is_byte_identical_to_pycocotools(shape):
    """Odd sizes (pixel counts below 8 and not multiples of 8), empty and full masks, masks
    with foreground only at the span edges, and 300+ masks in one call."""
    masks = _with_edge_pixels(_random_masks(7 * sum(shape), 300, *shape))
    reference = _pycocotools_encode(masks)
    for given in (
        torch.from_numpy(masks),  # bool
        torch.from_numpy(masks).to(torch.uint8) * 3,  # integer: non-zero is foreground
        torch.from_numpy(masks).float() * 0.5 + 0.25,  # probabilities: >= 0.5 is foreground
    ):
        ours = encode_masks(given)
        assert len(ours) == len(reference)
        for j, (a, b) in enumerate(zip(ours, reference)):
            assert isinstance(a["counts"], bytes) and a["counts"] == b["counts"], j
            assert list(a["size"]) == list(b["size"]) == list(shape), j
    # the transposed encoding is the standard RLE of each transposed mask
    transposed = _pycocotools_encode(masks.transpose(0, 2, 1))
    ours_t = encode_masks_transposed(torch.from_numpy(masks))
    assert [r["counts"] for r in ours_t] == [r["counts"] for r in transposed]
    assert all(list(a["size"]) == list(b["size"]) for a, b in zip(ours_t, transposed))


def test_encode_masks_of_no_masks():
    assert encode_masks(torch.zeros(0, 5, 7, dtype=torch.bool)) == []


def _uncompressed(mask: np.ndarray) -> dict:
    """The uncompressed RLE (``counts`` a list of runs, starting with zeros) of ``bool[H, W]``."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs.insert(0, 0)
    return {"size": list(mask.shape), "counts": runs}


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (37, 53), (64, 64)])
def test_rle_areas_equal_pycocotools_area_per_rle(shape):
    masks = _random_masks(sum(shape), 300, *shape)  # more than 256: pycocotools' list form fails
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    reference = np.array([mask_utils.area(r) for r in rles], dtype=np.int64)
    np.testing.assert_array_equal(reference, masks.reshape(len(masks), -1).sum(1))
    assert reference[0] == 0 and reference[1] == shape[0] * shape[1]  # empty and full masks
    areas = rle_areas(rles)
    assert areas.dtype == np.int64
    np.testing.assert_array_equal(areas, reference)
    as_str = [{"size": r["size"], "counts": r["counts"].decode()} for r in rles]
    np.testing.assert_array_equal(rle_areas(as_str), reference)
    mixed = [_uncompressed(m) if j % 2 else as_str[j] for j, m in enumerate(masks)]
    np.testing.assert_array_equal(rle_areas(mixed), reference)
    assert rle_areas([]).shape == (0,)
