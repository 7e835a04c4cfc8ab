"""Pasting fixed-size RoI masks back into the image (Mask R-CNN inference).

He et al., "Mask R-CNN", ICCV 2017, section 3: the ``M x M`` mask predicted for a box is
resized to the box and thresholded at 0.5. The geometry is torchvision's
``paste_masks_in_image`` (a 1-pixel zero border around the mask, the box enlarged by
``(M + 2) / M`` and truncated to integers, bilinear resizing with ``align_corners=False``), so
that the results equal torchvision's.

Two implementations compute the same function:

- ``"per_box"``: one ``F.interpolate`` per mask into its box's integer extent; equal to
  torchvision pixel for pixel. The faster path on CPU, where the work is the box area and a
  Python loop of ``N`` small ops costs little.
- ``"chunked"``: the masks are sorted by visible box area and split into chunks; each chunk is
  sampled with one ``F.grid_sample`` on windows of the chunk's largest visible box (one window
  per mask, over its box), and written into the canvas with one indexed copy. Chunks are
  bounded by a working-memory budget in bytes and, on CPU, by the padding they add. No per-mask
  kernel launches, which is what matters on a GPU; equal to ``"per_box"`` within float
  rounding (< 1e-5).

``"auto"`` (the default) picks ``"chunked"`` for CUDA tensors and ``"per_box"`` otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PASTE_IMPLS = ("auto", "per_box", "chunked")
DEFAULT_CHUNK_BYTES = 1 << 30
# Bytes of working memory per sampled pixel in the chunked path: the float32 (x, y) grid, the
# float32 sample and its masked or cast copy.
_BYTES_PER_SAMPLE = 4 * 4
# Default ``chunk_overhead_px`` on CPU: one more chunk (about 20 small ops) costs about as much
# as sampling and writing this many pixels; the fastest of 0, 8k, 32k, 128k and unbounded on a
# 2-core CPU for the cases of benchmarks/mask_paste.py (unbounded was 2-5x slower).
CPU_CHUNK_OVERHEAD_PX = 8_192


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``Tensor[N, 4]`` x1y1x2y2 boxes about their centres."""
    centers = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # [N, 2]
    half_sizes = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale  # [N, 2]
    return torch.cat([centers - half_sizes, centers + half_sizes], dim=1)  # [N, 4]


def _integer_boxes(boxes: Tensor, mask_size: int, padding: int) -> Tensor:
    """The inclusive integer pixel extent ``Tensor[N, 4]`` (int64 x1y1x2y2) of each padded mask.

    The box is enlarged by ``(M + 2p) / M`` so that the padded mask covers it at the same
    scale, then truncated toward zero (torchvision's rounding, kept for parity).
    """
    scale = float(mask_size + 2 * padding) / mask_size
    return _expand_boxes(boxes.to(torch.float32), scale).to(torch.int64)


def _paste_per_box(padded: Tensor, int_boxes: Tensor, canvas: Tensor) -> None:
    """Resize each ``padded[i]`` (``Tensor[N, P, P]``) to its box and write it into ``canvas``."""
    h_img, w_img = canvas.shape[-2:]
    for i, (x1, y1, x2, y2) in enumerate(int_boxes.tolist()):
        x_start, x_end = max(x1, 0), min(x2 + 1, w_img)
        y_start, y_end = max(y1, 0), min(y2 + 1, h_img)
        if x_end <= x_start or y_end <= y_start:
            continue
        resized = F.interpolate(
            padded[i][None, None], size=(y2 - y1 + 1, x2 - x1 + 1), mode="bilinear",
            align_corners=False,
        )[0, 0]  # [box_h, box_w]
        canvas[i, y_start:y_end, x_start:x_end] = resized[
            y_start - y1 : y_end - y1, x_start - x1 : x_end - x1
        ]


def _chunks(
    sizes: list[list[int]], max_chunk_bytes: int, chunk_overhead_px: float
) -> list[tuple[int, int]]:
    """Split ``(h, w)`` windows, sorted largest first, into ``[start, end)`` runs sampled together.

    A run is sampled on windows of its largest height and width: ``len(run) * h_max * w_max``
    pixels. Greedily, the next window joins the run if that stays within ``max_chunk_bytes``
    (at ``_BYTES_PER_SAMPLE`` bytes a pixel) and adds at most ``chunk_overhead_px`` pixels
    beyond the window's own (the pixels one more chunk's fixed cost is worth); otherwise it
    starts the next run. A run holds at least one window, so a single box over the budget is
    still pasted (alone).
    """
    runs = []
    start = 0
    while start < len(sizes):
        h_max, w_max = sizes[start]
        end = start + 1
        while end < len(sizes):
            h, w = sizes[end]
            new_h, new_w = max(h_max, h), max(w_max, w)
            padded = (end - start + 1) * new_h * new_w
            added = padded - (end - start) * h_max * w_max
            if padded * _BYTES_PER_SAMPLE > max_chunk_bytes or added > h * w + chunk_overhead_px:
                break
            h_max, w_max = new_h, new_w
            end += 1
        runs.append((start, end))
        start = end
    return runs


def _paste_chunked(
    padded: Tensor,
    int_boxes: Tensor,
    canvas: Tensor,
    max_chunk_bytes: int,
    chunk_overhead_px: float,
    zero_border: bool,
) -> None:
    """Sample ``padded`` (``Tensor[N, P, P]``) into ``canvas`` chunk by chunk with grid_sample.

    Each mask is sampled on a window of its chunk's common size placed over the visible part
    of its box (shifted inside the image where the window is wider than that part), and the
    window is written into the mask's own canvas plane, zero outside the box.

    Geometry: for output column ``x`` of a box starting at integer ``x1`` with ``w`` pixels,
    bilinear resizing with ``align_corners=False`` reads the padded mask at
    ``(x - x1 + 0.5) * P / w - 0.5`` clamped to ``[0, P - 1]``; in grid_sample's normalised
    coordinates (``align_corners=False``; ``padding_mode="border"`` does the clamp) that is
    ``(2 * (x - x1) + 1) / w - 1``, independent of ``P``. The same holds for rows.

    Args:
        padded: ``Tensor[N, P, P]`` masks with their zero border.
        int_boxes: ``Tensor[N, 4]`` int64 inclusive x1y1x2y2 extents (``_integer_boxes``).
        canvas: ``Tensor[N, H, W]`` zeros, written in place.
        max_chunk_bytes: working-memory budget of one chunk.
        chunk_overhead_px: padding pixels a mask may add to a chunk rather than start one.
        zero_border: the masks have a zero border (padding >= 1), so the border clamp already
            gives exact zeros outside each box and no masking is needed.
    """
    h_img, w_img = canvas.shape[-2:]
    device = canvas.device
    x1, y1, x2, y2 = int_boxes.unbind(1)  # [N] each
    vis_x0, vis_y0 = x1.clamp(min=0), y1.clamp(min=0)  # [N]
    vis_x1, vis_y1 = (x2 + 1).clamp(max=w_img), (y2 + 1).clamp(max=h_img)  # [N] exclusive
    vis_w, vis_h = vis_x1 - vis_x0, vis_y1 - vis_y0  # [N]
    keep = ((vis_w > 0) & (vis_h > 0)).nonzero()[:, 0]  # [N']
    if keep.numel() == 0:
        return
    keep = keep[torch.argsort(vis_w[keep] * vis_h[keep], descending=True, stable=True)]
    vis = torch.stack([vis_x0, vis_y0, vis_x1, vis_y1], dim=1)[keep]  # [N', 4]
    box_start = torch.stack([x1, y1], dim=1)[keep].to(torch.float32)  # [N', 2]
    box_size = torch.stack([x2 - x1 + 1, y2 - y1 + 1], dim=1)[keep].to(torch.float32)  # [N', 2]
    sizes = torch.stack([vis_h, vis_w], dim=1)[keep].tolist()  # N' x [h, w]
    for start, end in _chunks(sizes, max_chunk_bytes, chunk_overhead_px):
        chunk = slice(start, end)
        n = end - start
        win_h = max(h for h, _ in sizes[chunk])
        win_w = max(w for _, w in sizes[chunk])
        # Window origins: the visible part's corner, moved back so the window fits the image.
        org_x = vis[chunk, 0].clamp(max=w_img - win_w)  # [n]
        org_y = vis[chunk, 1].clamp(max=h_img - win_h)  # [n]
        xs = org_x[:, None] + torch.arange(win_w, device=device)  # [n, win_w]
        ys = org_y[:, None] + torch.arange(win_h, device=device)  # [n, win_h]
        gx = (2.0 * (xs - box_start[chunk, 0:1]) + 1.0) / box_size[chunk, 0:1] - 1.0  # [n, win_w]
        gy = (2.0 * (ys - box_start[chunk, 1:2]) + 1.0) / box_size[chunk, 1:2] - 1.0  # [n, win_h]
        grid = torch.stack(
            [gx[:, None, :].expand(n, win_h, win_w), gy[:, :, None].expand(n, win_h, win_w)],
            dim=-1,
        )  # [n, win_h, win_w, 2]
        sources = padded[keep[chunk]].to(torch.float32)[:, None]  # [n, 1, P, P]
        values = F.grid_sample(
            sources, grid, mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0]  # [n, win_h, win_w]
        if not zero_border:
            in_x = (xs >= vis[chunk, 0:1]) & (xs < vis[chunk, 2:3])  # [n, win_w]
            in_y = (ys >= vis[chunk, 1:2]) & (ys < vis[chunk, 3:4])  # [n, win_h]
            values = values * (in_y[:, :, None] & in_x[:, None, :])  # [n, win_h, win_w]
        canvas[keep[chunk, None, None], ys[:, :, None], xs[:, None, :]] = values.to(canvas.dtype)


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    padding: int = 1,
    *,
    impl: str = "auto",
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    chunk_overhead_px: float | None = None,
) -> Tensor:
    """Paste per-box soft masks into a full image canvas.

    Args:
        masks: ``Tensor[N, 1, M, M]`` or ``Tensor[N, M, M]`` mask probabilities of each box.
        boxes: ``Tensor[N, 4]`` x1y1x2y2 in pixels of the target image.
        image_size: ``(H, W)`` of the target image.
        padding: zero border added around each mask before resizing (removes the bias of
            bilinear interpolation at the box edges; torchvision and detectron2 use 1).
        impl: ``"per_box"`` (one resize per mask, torchvision's arithmetic), ``"chunked"``
            (one ``grid_sample`` per chunk of masks) or ``"auto"``: chunked for CUDA tensors,
            per-box otherwise (the faster choice on CPU, see BENCHMARKS.md).
        max_chunk_bytes: budget of the chunked path's working memory per chunk, counted as
            ``16 * n * h * w`` bytes for ``n`` masks sampled on ``h x w`` windows (float32
            grid, samples and their copy); a single mask over the budget is pasted alone.
        chunk_overhead_px: chunked path: a mask joins the current chunk (sampled on that
            chunk's largest window) if that adds at most this many pixels beyond its own box;
            otherwise it starts a new chunk. None: ``CPU_CHUNK_OVERHEAD_PX`` on CPU, unbounded
            on CUDA (chunks bounded by ``max_chunk_bytes`` only: extra pixels are cheap there
            next to kernel launches).

    Returns:
        ``Tensor[N, H, W]`` soft masks in the dtype of ``masks`` (zero outside each box);
        threshold them to get binary masks.
    """
    if impl not in PASTE_IMPLS:
        raise ValueError(f"paste_masks_in_image: impl={impl!r}; use one of {PASTE_IMPLS}")
    if chunk_overhead_px is not None and chunk_overhead_px < 0:
        raise ValueError(
            f"paste_masks_in_image: chunk_overhead_px={chunk_overhead_px} must be >= 0 (or None)"
        )
    if max_chunk_bytes <= 0:
        raise ValueError(f"paste_masks_in_image: max_chunk_bytes={max_chunk_bytes} must be > 0")
    if masks.ndim == 4:
        masks = masks[:, 0]  # [N, M, M]
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(
            f"paste_masks_in_image: boxes of shape {tuple(boxes.shape)} for {masks.shape[0]} "
            "masks; pass one x1y1x2y2 box per mask (Tensor[N, 4])"
        )
    h_img, w_img = int(image_size[0]), int(image_size[1])
    num_masks, mask_size = masks.shape[0], masks.shape[-1]
    canvas = masks.new_zeros((num_masks, h_img, w_img))
    if num_masks == 0:
        return canvas
    padded = F.pad(masks, (padding,) * 4)  # [N, M + 2p, M + 2p]
    int_boxes = _integer_boxes(boxes, mask_size, padding)  # [N, 4]
    if impl == "auto":
        impl = "chunked" if masks.is_cuda else "per_box"
    if impl == "per_box":
        _paste_per_box(padded, int_boxes, canvas)
    else:
        if chunk_overhead_px is None:
            chunk_overhead_px = math.inf if masks.is_cuda else CPU_CHUNK_OVERHEAD_PX
        _paste_chunked(
            padded, int_boxes, canvas, max_chunk_bytes, chunk_overhead_px, zero_border=padding > 0
        )
    return canvas
