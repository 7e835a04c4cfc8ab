"""One function per shape: its outline, its mask and its keypoints.

Coordinates are continuous pixels: pixel ``(row r, column c)`` covers ``[c, c+1) x [r, r+1)``,
so its centre is ``(c + 0.5, r + 0.5)``, as in pycocotools' polygon rasteriser. Angles are
degrees, clockwise on screen (y points down). Every shape is mirror-symmetric about its own
vertical axis, so mirroring the image gives the same shape at ``-angle`` with its left and
right keypoints swapped (what the flip map says).

Polygon masks are rasterised by pycocotools from the same rounded vertices that the COCO JSON
stores, so a polygon annotation decodes to exactly the rendered mask; the circle is analytic
(pixel centres within the radius).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

#: Unit directions (local frame, y down) of the rays that define the outline keypoints, in
#: ``KEYPOINT_NAMES`` order after the centre: top, bottom, left_side, right_side.
_KEYPOINT_RAYS = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])

#: Circle radius per unit of shape size: sizes are chosen so that the shapes have similar areas.
CIRCLE_RADIUS = 0.85


@dataclass(frozen=True)
class Outline:
    """A placed shape.

    Attributes:
        kind: thing class name (``circle``, ``triangle``, ``square`` or ``star``).
        center: ``(x, y)`` in pixels.
        size: scale in pixels (the unit of the local frame).
        angle: rotation in degrees, clockwise on screen.
        local_vertices: ``[V, 2]`` outline in the local frame (unit size, y down), or None for
            the analytic circle.
    """

    kind: str
    center: tuple[float, float]
    size: float
    angle: float
    local_vertices: np.ndarray | None = None

    def to_image(self, local: np.ndarray) -> np.ndarray:
        """Local points ``[N, 2]`` -> image points ``[N, 2]`` (scale, rotate, translate)."""
        a = math.radians(self.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return local * self.size @ rot.T + np.asarray(self.center)

    @property
    def polygon(self) -> np.ndarray | None:
        """``[V, 2]`` image-space vertices rounded to 0.01 px (what the JSON stores), or None."""
        if self.local_vertices is None:
            return None
        return np.round(self.to_image(self.local_vertices), 2)


def _regular_points(num_points: int, radius: float, phase_deg: float = 0.0) -> np.ndarray:
    """``[num_points, 2]`` points on a circle, the first straight up, going clockwise."""
    angles = np.radians(phase_deg + 360.0 * np.arange(num_points) / num_points)
    return radius * np.stack([np.sin(angles), -np.cos(angles)], axis=1)


def circle(center: tuple[float, float], size: float, angle: float = 0.0) -> Outline:
    """Analytic circle of radius ``CIRCLE_RADIUS * size`` (its rotation is invisible, kept 0)."""
    return Outline("circle", center, size, 0.0)


def triangle(center: tuple[float, float], size: float, angle: float = 0.0) -> Outline:
    """Equilateral triangle, apex up, circumradius ``1.1 * size``."""
    return Outline("triangle", center, size, angle, _regular_points(3, 1.1))


def square(center: tuple[float, float], size: float, angle: float = 0.0) -> Outline:
    """Axis-aligned (before rotation) square of half-side ``0.8 * size``."""
    return Outline("square", center, size, angle, _regular_points(4, 0.8 * math.sqrt(2), 45.0))


def star(center: tuple[float, float], size: float, angle: float = 0.0) -> Outline:
    """Five-pointed star, a tip up; outer radius ``1.15 * size``, inner ``0.5 * size``."""
    outer = _regular_points(5, 1.15)
    inner = _regular_points(5, 0.5, 36.0)
    vertices = np.stack([outer, inner], axis=1).reshape(10, 2)  # [5, 2, 2] -> [10, 2] interleaved
    return Outline("star", center, size, angle, vertices)


#: Thing class name -> the function that builds its outline (class order of ``THING_NAMES``).
SHAPE_BUILDERS = {"circle": circle, "triangle": triangle, "square": square, "star": star}


def shape_mask(outline: Outline, height: int, width: int) -> np.ndarray:
    """``bool[H, W]`` pixels of the shape (parts outside the image are cut)."""
    if outline.local_vertices is None:
        cx, cy = outline.center
        radius = CIRCLE_RADIUS * outline.size
        yy, xx = np.ogrid[0:height, 0:width]
        return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2
    flat = outline.polygon.reshape(-1).tolist()
    rle = mask_utils.frPyObjects([flat], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _ray_exit(vertices: np.ndarray, direction: np.ndarray) -> float:
    """Distance from the origin along ``direction`` to where the ray leaves the polygon."""
    start, end = vertices, np.roll(vertices, -1, axis=0)
    edge = end - start
    # Solve t * d = a + s * e for every edge (2x2 systems by Cramer's rule).
    denom = direction[0] * -edge[:, 1] - direction[1] * -edge[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (start[:, 0] * -edge[:, 1] - start[:, 1] * -edge[:, 0]) / denom
        s = (direction[0] * start[:, 1] - direction[1] * start[:, 0]) / denom
    hit = (np.abs(denom) > 1e-12) & (s >= -1e-9) & (s <= 1 + 1e-9) & (t > 0)
    return float(t[hit].min())


def shape_keypoints(outline: Outline) -> np.ndarray:
    """``float[K, 2]`` image ``(x, y)`` of the centre and the four outline keypoints."""
    if outline.local_vertices is None:
        distances = np.full(len(_KEYPOINT_RAYS), CIRCLE_RADIUS)
    else:
        distances = np.array([_ray_exit(outline.local_vertices, d) for d in _KEYPOINT_RAYS])
    local = np.concatenate([np.zeros((1, 2)), _KEYPOINT_RAYS * distances[:, None]])
    return outline.to_image(local)
