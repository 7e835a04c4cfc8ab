"""The top-down affine crop (Newell et al. 2016; Xiao et al. 2018) and its exact inverse.

A top-down pose model sees one person (or face) at a time: the image is warped so that the
instance's box fills a fixed input of ``(H, W)`` pixels, optionally rotated, scaled and mirrored
for augmentation, and the predicted keypoints are mapped back through the inverse warp.

Frames: every point is in the continuous pixel frame of this repository, in which pixel
``(row i, column j)`` covers ``[j, j + 1] x [i, i + 1]`` and has its centre at ``(j + 0.5,
i + 0.5)`` (``COCO_KEYPOINT_OFFSET``). ``crop_matrix`` maps that frame of the source image to
the same frame of the crop, so a point maps to a point with no half-pixel bias whatever the scale
(the "unbiased data processing" of Huang et al., CVPR 2020, in this frame). ``warp_image`` turns
the matrix into OpenCV's pixel-index frame (pixel centres at integers) before resampling, so that
the image and the keypoints move together exactly: a test checks it on a linear image, which
bilinear resampling reproduces without error.

Matrices are ``Tensor[2, 3]`` float64 ``[A | b]`` acting as ``p' = A p + b`` on column vectors
``(x, y)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "apply_affine",
    "box_center_size",
    "crop_matrix",
    "invert_affine",
    "warp_image",
]


def _as3x3(matrix: Tensor) -> Tensor:
    out = torch.eye(3, dtype=torch.float64)
    out[:2] = matrix.to(torch.float64)
    return out


def crop_matrix(
    center: Sequence[float],
    size: Sequence[float],
    output_size: Sequence[int],
    rotation: float = 0.0,
    flip: bool = False,
) -> Tensor:
    """The affine map from a source image to a crop of ``output_size`` around a box.

    The box of ``size = (w, h)`` pixels centred at ``center = (cx, cy)`` fills the output:
    ``p' = S R (p - c) + (W / 2, H / 2)`` with ``S = diag(W / w, H / h)`` and ``R`` the rotation
    by ``rotation`` degrees; then, with ``flip``, the crop is mirrored (``x' -> W - x'``).

    Args:
        center: ``(cx, cy)`` of the box, continuous source pixels.
        size: ``(w, h)`` of the box, source pixels (both > 0). Give it the aspect ratio of the
            output (``box_center_size``) to keep the image undistorted.
        output_size: ``(H, W)`` of the crop.
        rotation: degrees; positive turns the content counter-clockwise as seen on screen
            (image ``y`` points down): a point right of the centre lands above it at 90.
        flip: mirror the crop left-right (keypoint identities are swapped by the caller).

    Returns:
        ``Tensor[2, 3]`` float64, source frame -> crop frame.
    """
    w, h = float(size[0]), float(size[1])
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"crop size must be positive and finite, got {tuple(size)}")
    out_h, out_w = float(output_size[0]), float(output_size[1])
    theta = math.radians(rotation)
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    scale = torch.diag(torch.tensor([out_w / w, out_h / h], dtype=torch.float64))
    a = scale @ rot  # [2, 2]
    ctr = torch.tensor([float(center[0]), float(center[1])], dtype=torch.float64)
    b = torch.tensor([out_w / 2, out_h / 2], dtype=torch.float64) - a @ ctr  # [2]
    m = torch.cat([a, b[:, None]], dim=1)  # [2, 3]
    if flip:
        mirror = torch.tensor([[-1.0, 0.0, out_w], [0.0, 1.0, 0.0]], dtype=torch.float64)
        m = mirror @ _as3x3(m)
    return m


def invert_affine(matrix: Tensor) -> Tensor:
    """The inverse of a ``Tensor[2, 3]`` affine map (float64, exact up to rounding)."""
    m = matrix.to(torch.float64)
    a, b = m[:, :2], m[:, 2]
    det = float(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0])
    if not math.isfinite(det) or abs(det) < 1e-300:
        raise ValueError(f"the affine map is singular (determinant {det})")
    a_inv = torch.stack([torch.stack([a[1, 1], -a[0, 1]]), torch.stack([-a[1, 0], a[0, 0]])]) / det
    return torch.cat([a_inv, (-a_inv @ b)[:, None]], dim=1)  # [2, 3]


def apply_affine(points: Tensor, matrix: Tensor) -> Tensor:
    """Map ``Tensor[..., 2]`` points ``(x, y)`` through ``matrix`` (computed in float64,
    returned in the dtype of ``points``)."""
    if points.shape[-1] != 2:
        raise ValueError(f"points must be Tensor[..., 2], got {tuple(points.shape)}")
    m = matrix.to(device=points.device, dtype=torch.float64)
    p = points.to(torch.float64)
    out = p @ m[:, :2].T + m[:, 2]  # [..., 2]
    return out.to(points.dtype)


def warp_image(
    image: Tensor | np.ndarray,
    matrix: Tensor,
    output_size: Sequence[int],
    interpolation: int = cv2.INTER_LINEAR,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample an image through ``matrix`` (source -> output, continuous frames).

    Args:
        image: ``uint8`` / ``float32`` ``[H, W, C]`` NumPy array or ``Tensor[C, H, W]``.
        matrix: ``Tensor[2, 3]`` from ``crop_matrix``.
        output_size: ``(H, W)`` of the result.
        interpolation: OpenCV interpolation flag (bilinear by default).
        fill: value outside the source image.

    Returns:
        ``[H', W', C]`` array of the input dtype.
    """
    if isinstance(image, Tensor):
        image = image.permute(1, 2, 0).contiguous().cpu().numpy()  # [C, H, W] -> [H, W, C]
    # continuous -> pixel index on both sides: p_idx' = A (p_idx + 0.5) + b - 0.5
    m = matrix.to(torch.float64).cpu().numpy().copy()
    m[:, 2] = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    h, w = int(output_size[0]), int(output_size[1])
    out = cv2.warpAffine(
        image, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill, fill, fill, fill),
    )
    return out if out.ndim == 3 else out[..., None]


def box_center_size(
    boxes: Tensor, aspect_ratio: float, padding: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Centres and crop sizes of x1y1x2y2 boxes, enlarged to an aspect ratio and padded.

    The shorter side (relative to ``aspect_ratio``) is extended so that ``w / h ==
    aspect_ratio`` (nothing of the box is cut), then both sides are multiplied by ``padding``
    (1.25 in SimpleBaseline / mmpose for COCO persons).

    Args:
        boxes: ``Tensor[N, 4]`` x1y1x2y2.
        aspect_ratio: ``W / H`` of the network input.
        padding: scale factor of the box.

    Returns:
        ``Tensor[N, 2]`` centres ``(cx, cy)`` and ``Tensor[N, 2]`` sizes ``(w, h)``.
    """
    if aspect_ratio <= 0 or padding <= 0:
        raise ValueError(f"aspect_ratio and padding must be positive, got {aspect_ratio}, {padding}")
    b = boxes.to(torch.float64)
    center = (b[:, :2] + b[:, 2:]) / 2  # [N, 2]
    w = (b[:, 2] - b[:, 0]).clamp(min=0)
    h = (b[:, 3] - b[:, 1]).clamp(min=0)
    w = torch.maximum(w, h * aspect_ratio)
    h = w / aspect_ratio
    size = torch.stack([w, h], dim=1) * padding  # [N, 2]
    return center.to(boxes.dtype), size.to(boxes.dtype)
