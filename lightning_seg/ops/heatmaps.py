"""Gaussian keypoint heatmaps: rendering targets, decoding predictions, flip test.

A keypoint at ``(xc, yc)`` becomes the target ``exp(-((x - xc)^2 + (y - yc)^2) / (2 sigma^2))``
on the network's output grid (Tompson et al. 2014; Newell et al. 2016), and a predicted heatmap
is decoded back to coordinates by its arg-max with a sub-pixel refinement.

Frames. Points are in the continuous pixel frame of the network input (pixel ``(i, j)`` covers
``[j, j + 1] x [i, i + 1]``). A heatmap of stride ``s`` has cell ``(i, j)`` centred at the input
point ``((j + 0.5) s, (i + 0.5) s)``, so the *grid coordinate* of an input point is
``u = x / s - 0.5`` (cell centres at integers) and ``x = (u + 0.5) s`` maps back
(``grid_to_input``). In this frame a horizontal flip of the input (``x -> W - x``) is exactly a
flip of the heatmap columns (``j -> w - 1 - j``): the flip test needs no one-pixel shift.

Rendering (``render_heatmaps``), three encodings:

* ``"msra"`` (SimpleBaseline, Xiao et al. ECCV 2018; mmpose's ``MSRAHeatmap``): the centre is
  the cell that contains the keypoint (``round(u)``), the Gaussian has the given ``sigma`` (2 on
  a 64 x 48 grid) and is cut at ``radius_factor * sigma``.
* ``"hourglass"`` (Newell et al., official pose-hg-train, ``drawGaussian`` with ``hmGauss=1``):
  the same quantised centre and Torch's ``image.gaussian(7)``: a 7 x 7 kernel whose sigma is
  relative, ``0.25 * 7 = 1.75`` cells, peak 1. ``kernel_size`` changes the 7.
* ``"unbiased"`` (UDP, Huang et al. CVPR 2020; DARK, Zhang et al. CVPR 2020): the centre is the
  sub-pixel grid coordinate ``u`` itself, so decoding with a Taylor step (``refine_dark``)
  recovers the keypoint without the quantisation error of the two above.

Several instances are combined by the element-wise maximum (``combine="max"``), as the official
code's ``cmax``. Unlabelled keypoints (visibility 0) and keypoints whose centre falls outside the
grid get a zero map and target weight 0.

Decoding (``decode_heatmaps``): ``"argmax"``; ``"quarter"``, the arg-max moved a quarter cell
toward the higher neighbour in x and y (Newell et al.'s test-time step); ``"dark"``, a Newton
step on the log of the (optionally Gaussian-blurred) heatmap (Zhang et al. 2020); and
``"soft_argmax"``, the expectation of the grid under ``softmax(beta * heatmap)`` (integral
regression, Sun et al. ECCV 2018), optionally in a window around the arg-max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DECODERS",
    "ENCODINGS",
    "decode_heatmaps",
    "flip_back_heatmaps",
    "flip_keypoints",
    "gaussian_blur",
    "grid_to_input",
    "heatmap_argmax",
    "input_to_grid",
    "refine_dark",
    "refine_quarter",
    "render_heatmaps",
    "soft_argmax",
]

Encoding = Literal["msra", "hourglass", "unbiased"]
Decoder = Literal["argmax", "quarter", "dark", "soft_argmax"]
ENCODINGS: tuple[str, ...] = ("msra", "hourglass", "unbiased")
DECODERS: tuple[str, ...] = ("argmax", "quarter", "dark", "soft_argmax")


# ------------------------------------------------------------------------------ frames
def input_to_grid(points: Tensor, stride: float) -> Tensor:
    """Input-frame ``(x, y)`` -> heatmap grid coordinates ``x / s - 0.5`` (cell centres at
    integers)."""
    return points / stride - 0.5


def grid_to_input(points: Tensor, stride: float) -> Tensor:
    """Heatmap grid coordinates -> input-frame ``(x, y)``: ``(u + 0.5) * s``."""
    return (points + 0.5) * stride


# ------------------------------------------------------------------------------ rendering
def render_heatmaps(
    keypoints: Tensor,
    heatmap_size: Sequence[int],
    stride: float,
    sigma: float = 2.0,
    encoding: Encoding = "msra",
    kernel_size: int = 7,
    radius_factor: float = 3.0,
    combine: Literal["none", "max"] = "none",
) -> tuple[Tensor, Tensor]:
    """Gaussian target heatmaps and target weights of keypoints.

    Args:
        keypoints: ``Tensor[N, K, 3]`` ``(x, y, visibility)`` in the input frame; visibility 0
            is unlabelled.
        heatmap_size: ``(h, w)`` of the output grid.
        stride: input pixels per heatmap cell.
        sigma: Gaussian sigma in cells (``msra`` and ``unbiased``).
        encoding: ``"msra"``, ``"hourglass"`` or ``"unbiased"`` (module docstring).
        kernel_size: the official Hourglass kernel's size (odd); its sigma is
            ``0.25 * kernel_size`` cells (Torch ``image.gaussian``).
        radius_factor: ``msra`` / ``unbiased`` Gaussians are zero beyond
            ``radius_factor * sigma`` cells from the centre in x or y (3 as mmpose); ``inf``
            renders them whole.
        combine: ``"none"``: one map per instance; ``"max"``: instances combined by the
            element-wise maximum into one (``N = 1``; a weight is the maximum too).

    Returns:
        ``Tensor[N, K, h, w]`` float32 heatmaps (peak 1) and ``Tensor[N, K]`` float32 weights:
        1 for a labelled keypoint whose centre lies on the grid, else 0 (and a zero map).
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be Tensor[N, K, 3], got {tuple(keypoints.shape)}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if encoding == "hourglass" and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if encoding != "hourglass" and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    h, w = int(heatmap_size[0]), int(heatmap_size[1])
    n, k = keypoints.shape[:2]
    device = keypoints.device
    grid = input_to_grid(keypoints[..., :2].to(torch.float64), stride)  # [N, K, 2]
    labelled = keypoints[..., 2] > 0
    on_grid = (grid[..., 0] > -0.5) & (grid[..., 0] < w - 0.5)
    on_grid &= (grid[..., 1] > -0.5) & (grid[..., 1] < h - 0.5)
    weights = (labelled & on_grid & torch.isfinite(grid).all(-1)).to(torch.float32)  # [N, K]
    centre = torch.where(weights[..., None] > 0, grid, torch.zeros_like(grid))
    if encoding in ("msra", "hourglass"):
        centre = torch.floor(centre + 0.5)  # the cell containing the keypoint
    if encoding == "hourglass":
        sig = 0.25 * kernel_size
        radius = (kernel_size - 1) / 2
    else:
        sig = float(sigma)
        radius = radius_factor * sig
    xs = torch.arange(w, dtype=torch.float64, device=device)
    ys = torch.arange(h, dtype=torch.float64, device=device)
    dx = xs.view(1, 1, w) - centre[..., 0:1]  # [N, K, w]
    dy = ys.view(1, 1, h) - centre[..., 1:2]  # [N, K, h]
    gx = torch.exp(-(dx**2) / (2 * sig**2)) * (dx.abs() <= radius + 1e-9)
    gy = torch.exp(-(dy**2) / (2 * sig**2)) * (dy.abs() <= radius + 1e-9)
    heatmaps = gy[..., :, None] * gx[..., None, :]  # [N, K, h, w]
    heatmaps = (heatmaps * weights[..., None, None]).to(torch.float32)
    if combine == "max":
        if n == 0:
            return heatmaps.new_zeros(1, k, h, w), weights.new_zeros(1, k)
        return heatmaps.amax(0, keepdim=True), weights.amax(0, keepdim=True)
    if combine != "none":
        raise ValueError(f"combine must be 'none' or 'max', got {combine!r}")
    return heatmaps, weights


# ------------------------------------------------------------------------------ decoding
def heatmap_argmax(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Grid coordinates and value of each map's maximum.

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.

    Returns:
        ``Tensor[B, K, 2]`` float32 ``(u, v)`` integer cells (the first maximum in row-major
        order) and ``Tensor[B, K]`` the maxima.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be Tensor[B, K, h, w], got {tuple(heatmaps.shape)}")
    b, k, h, w = heatmaps.shape
    maxvals, idx = heatmaps.reshape(b, k, h * w).max(dim=-1)  # [B, K]
    coords = torch.stack([idx % w, idx // w], dim=-1).to(torch.float32)  # [B, K, 2]
    return coords, maxvals


def _gather(heatmaps: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """``heatmaps[b, k, ys[b, k], xs[b, k]]`` with indices clamped to the grid."""
    b, k, h, w = heatmaps.shape
    xs = xs.long().clamp(0, w - 1)
    ys = ys.long().clamp(0, h - 1)
    flat = heatmaps.reshape(b, k, h * w)
    return flat.gather(-1, (ys * w + xs)[..., None])[..., 0]  # [B, K]


def refine_quarter(heatmaps: Tensor, coords: Tensor) -> Tensor:
    """Move integer arg-max cells a quarter cell toward the higher neighbour (Newell et al.).

    Per axis, only where both neighbours exist (not on the grid border) and differ.

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.
        coords: ``Tensor[B, K, 2]`` integer grid coordinates (``heatmap_argmax``).

    Returns:
        ``Tensor[B, K, 2]`` refined grid coordinates.
    """
    h, w = heatmaps.shape[-2:]
    x, y = coords[..., 0], coords[..., 1]
    dx = _gather(heatmaps, x + 1, y) - _gather(heatmaps, x - 1, y)
    dy = _gather(heatmaps, x, y + 1) - _gather(heatmaps, x, y - 1)
    dx = torch.where((x > 0) & (x < w - 1), dx, torch.zeros_like(dx))
    dy = torch.where((y > 0) & (y < h - 1), dy, torch.zeros_like(dy))
    shift = 0.25 * torch.stack([torch.sign(dx), torch.sign(dy)], dim=-1)  # [B, K, 2]
    return coords + shift.to(coords.dtype)


def gaussian_blur(heatmaps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``Tensor[B, K, h, w]`` (kernel cut at 3 sigma, normalised,
    reflected borders as OpenCV's default), each map rescaled to keep its maximum (DARK's
    distribution modulation)."""
    if sigma <= 0:
        return heatmaps
    b, k, h, w = heatmaps.shape
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=heatmaps.dtype, device=heatmaps.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = heatmaps.reshape(b * k, 1, h, w)
    ry, rx = min(radius, h - 1), min(radius, w - 1)
    kx = kernel[radius - rx : radius + rx + 1]
    ky = kernel[radius - ry : radius + ry + 1]
    if rx > 0:
        x = F.conv2d(F.pad(x, (rx, rx, 0, 0), mode="reflect"), (kx / kx.sum()).view(1, 1, 1, -1))
    if ry > 0:
        x = F.conv2d(F.pad(x, (0, 0, ry, ry), mode="reflect"), (ky / ky.sum()).view(1, 1, -1, 1))
    blurred = x.reshape(b, k, h, w)
    before = heatmaps.amax(dim=(-2, -1), keepdim=True)
    after = blurred.amax(dim=(-2, -1), keepdim=True)
    return blurred * (before / after.clamp(min=1e-12))


def refine_dark(heatmaps: Tensor, coords: Tensor, blur_sigma: float = 0.0) -> Tensor:
    """DARK's Taylor refinement (Zhang et al., "Distribution-Aware Coordinate Representation
    for Human Pose Estimation", CVPR 2020).

    The log of a Gaussian is a quadratic, so one Newton step ``-H^-1 g`` from the arg-max on
    ``log(heatmap)`` lands on the centre exactly; for predicted maps, the optional blur first
    makes them closer to a Gaussian. The step uses central differences (the second derivatives
    over two cells, as the paper), is taken only where those neighbours exist and the Hessian
    is negative definite (a maximum), and is not otherwise clipped.

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.
        coords: ``Tensor[B, K, 2]`` integer grid coordinates (``heatmap_argmax``).
        blur_sigma: sigma (cells) of the Gaussian blur before the log; 0 disables it (the
            paper blurs with the training sigma).

    Returns:
        ``Tensor[B, K, 2]`` refined grid coordinates.
    """
    h, w = heatmaps.shape[-2:]
    hm = gaussian_blur(heatmaps.to(torch.float64), blur_sigma)
    logh = torch.log(hm.clamp(min=1e-10))
    x, y = coords[..., 0].long(), coords[..., 1].long()

    def at(dx: int, dy: int) -> Tensor:
        return _gather(logh, x + dx, y + dy)

    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    hyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy**2
    inside = (x >= 2) & (x <= w - 3) & (y >= 2) & (y <= h - 3)
    ok = inside & (det > 1e-12) & (hxx < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(-hxy * gx + hxx * gy) / safe
    offset = torch.stack([ox, oy], dim=-1) * ok[..., None]  # [B, K, 2]
    return coords + offset.to(coords.dtype)


def soft_argmax(heatmaps: Tensor, beta: float = 1.0, window: int | None = None) -> Tensor:
    """Expected grid coordinates under ``softmax(beta * heatmap)`` (integral regression).

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.
        beta: inverse temperature; large values approach the arg-max.
        window: only cells within ``window`` cells of the arg-max (in x and y) count; None:
            the whole map (Sun et al.'s integral regression).

    Returns:
        ``Tensor[B, K, 2]`` float32 grid coordinates.
    """
    b, k, h, w = heatmaps.shape
    logits = beta * heatmaps.to(torch.float64)
    if window is not None:
        peak, _ = heatmap_argmax(heatmaps)
        xs = torch.arange(w, device=heatmaps.device).view(1, 1, 1, w)
        ys = torch.arange(h, device=heatmaps.device).view(1, 1, h, 1)
        near = ((xs - peak[..., 0, None, None]).abs() <= window) & (
            (ys - peak[..., 1, None, None]).abs() <= window
        )  # [B, K, h, w]
        logits = logits.masked_fill(~near, -math.inf)
    prob = torch.softmax(logits.reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
    xs = torch.arange(w, dtype=torch.float64, device=heatmaps.device)
    ys = torch.arange(h, dtype=torch.float64, device=heatmaps.device)
    ex = (prob.sum(-2) * xs).sum(-1)  # [B, K]
    ey = (prob.sum(-1) * ys).sum(-1)  # [B, K]
    return torch.stack([ex, ey], dim=-1).to(torch.float32)


def decode_heatmaps(
    heatmaps: Tensor,
    method: Decoder = "quarter",
    blur_sigma: float = 0.0,
    beta: float = 1.0,
    window: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Keypoint grid coordinates and scores from heatmaps (module docstring).

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.
        method: ``"argmax"``, ``"quarter"``, ``"dark"`` or ``"soft_argmax"``.
        blur_sigma: ``dark`` only (``refine_dark``).
        beta, window: ``soft_argmax`` only.

    Returns:
        ``Tensor[B, K, 2]`` grid coordinates (``grid_to_input`` maps them to the input) and
        ``Tensor[B, K]`` scores: the maximum of each map.
    """
    if method not in DECODERS:
        raise ValueError(f"method must be one of {DECODERS}, got {method!r}")
    heatmaps = heatmaps.detach().float()
    coords, maxvals = heatmap_argmax(heatmaps)
    if method == "quarter":
        coords = refine_quarter(heatmaps, coords)
    elif method == "dark":
        coords = refine_dark(heatmaps, coords, blur_sigma)
    elif method == "soft_argmax":
        coords = soft_argmax(heatmaps, beta, window)
    return coords, maxvals


# ------------------------------------------------------------------------------ flip test
def flip_back_heatmaps(heatmaps: Tensor, flip_permutation: Sequence[int]) -> Tensor:
    """Heatmaps predicted on a mirrored input, mapped back to the input's frame: columns
    reversed and left/right channels swapped (``DatasetInfo.flip_permutation()``).

    Args:
        heatmaps: ``Tensor[B, K, h, w]``.
        flip_permutation: K indices; channel ``k`` of the result is channel
            ``flip_permutation[k]`` of the input.
    """
    perm = torch.as_tensor(list(flip_permutation), dtype=torch.long, device=heatmaps.device)
    if perm.numel() != heatmaps.shape[1]:
        raise ValueError(
            f"flip_permutation has {perm.numel()} entries for {heatmaps.shape[1]} keypoints"
        )
    return heatmaps.flip(-1)[:, perm]


def flip_keypoints(keypoints: Tensor, flip_permutation: Sequence[int], width: float) -> Tensor:
    """Keypoints of a mirrored image of ``width`` mapped back: ``x -> width - x`` and left/right
    swapped. ``keypoints``: ``Tensor[B, K, >=2]``."""
    perm = torch.as_tensor(list(flip_permutation), dtype=torch.long, device=keypoints.device)
    if perm.numel() != keypoints.shape[1]:
        raise ValueError(
            f"flip_permutation has {perm.numel()} entries for {keypoints.shape[1]} keypoints"
        )
    out = keypoints.clone()
    out[..., 0] = width - out[..., 0]
    return out[:, perm]
