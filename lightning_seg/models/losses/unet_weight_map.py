"""U-Net border weight map (Ronneberger et al., MICCAI 2015, eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1 / d2: distance to the border of the nearest / second nearest object; w_c balances class
frequencies. It gives the thin background gaps between touching objects a large weight, so the
network learns to separate them. Precompute it per training image (it depends only on the
labels) and multiply the per-pixel cross-entropy with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _object_border(mask: Tensor) -> Tensor:
    """Pixels of ``mask`` (``Tensor[H, W]`` bool) with a 4-neighbour outside it (or the image edge
    counts as inside, so only contact with the background makes a border)."""
    m = mask[None, None].float()
    # erosion with a cross: a pixel stays when it and its 4 neighbours are inside
    padded = F.pad(m, (1, 1, 1, 1), mode="replicate")
    neighbours = torch.stack(
        [padded[..., 1:-1, :-2], padded[..., 1:-1, 2:], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]]
    )
    eroded = (neighbours.amin(dim=0) > 0)[0, 0] & mask
    return mask & ~eroded


def object_distances(instance_map: Tensor, chunk_size: int = 65536) -> Tensor:
    """Euclidean distance from every pixel to every object (its nearest border pixel).

    Brute force, O(N_objects * H * W * border length): meant for precomputing weights of
    small / medium images (no SciPy needed).

    Args:
        instance_map: ``Tensor[H, W]`` int, 0 = background, each object a distinct id > 0.
        chunk_size: pixels per ``cdist`` call (bounds memory).

    Returns:
        ``Tensor[N, H, W]`` float32 distances (0 on the object's border pixels), N = number of
        distinct ids > 0, in increasing id order.
    """
    if instance_map.ndim != 2:
        raise ValueError(f"instance_map must be Tensor[H, W], got {tuple(instance_map.shape)}")
    h, w = instance_map.shape
    ids = [int(i) for i in torch.unique(instance_map) if i > 0]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys, xs], dim=-1).reshape(-1, 2).float()  # Tensor[H*W, 2]
    out = torch.empty(len(ids), h * w)
    for n, obj_id in enumerate(ids):
        border = _object_border(instance_map == obj_id)
        pts = coords[border.reshape(-1)]  # Tensor[M, 2]
        for start in range(0, h * w, chunk_size):
            d = torch.cdist(coords[start : start + chunk_size], pts)  # Tensor[chunk, M]
            out[n, start : start + chunk_size] = d.amin(dim=1)
    return out.reshape(len(ids), h, w)  # Tensor[N, H, W]


def unet_weight_map(
    instance_map: Tensor,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance_classes: bool = True,
    background_only: bool = True,
) -> Tensor:
    """Per-pixel loss weights of U-Net's eq. 2.

    Args:
        instance_map: ``Tensor[H, W]`` int, 0 = background, one id > 0 per object.
        w0: border weight (10 in the paper).
        sigma: border width in pixels (about 5 in the paper).
        balance_classes: ``w_c`` = inverse frequency of the pixel's class (foreground vs
            background), normalised so that ``w_c`` averages 1 over the image; False: ``w_c = 1``.
        background_only: add the border term only on background pixels (the gaps between
            objects, the usual reading of the paper); False adds it everywhere, with d1 = 0
            inside objects.

    Returns:
        ``Tensor[H, W]`` float32 weights. With fewer than two objects the border term is 0.
    """
    instance_map = instance_map.cpu()
    fg = instance_map > 0
    weights = torch.ones(instance_map.shape, dtype=torch.float32)
    if balance_classes:
        total = fg.numel()
        num_fg = int(fg.sum())
        num_bg = total - num_fg
        present = (num_fg > 0) + (num_bg > 0)
        if num_fg:
            weights[fg] = total / (present * num_fg)
        if num_bg:
            weights[~fg] = total / (present * num_bg)
    dist = object_distances(instance_map)  # Tensor[N, H, W]
    if dist.shape[0] >= 2:
        # inside an object the distance to its own border is not the gap: use 0 there
        ids = [int(i) for i in torch.unique(instance_map) if i > 0]
        for n, obj_id in enumerate(ids):
            dist[n][instance_map == obj_id] = 0.0
        d12 = dist.topk(2, dim=0, largest=False).values  # Tensor[2, H, W]: d1 <= d2
        border = w0 * torch.exp(-((d12[0] + d12[1]) ** 2) / (2 * sigma**2))
        if background_only:
            border = border * (~fg)
        weights = weights + border
    return weights
