"""SSD box coding with variances (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016),
as YOLACT uses it (variances 0.1 for the centre, 0.2 for the size).

``dx = (gx - px) / (v0 * pw)``, ``dy = (gy - py) / (v0 * ph)``, ``dw = log(gw / pw) / v1``,
``dh = log(gh / ph) / v1`` with centres ``(x, y)`` and sizes ``(w, h)`` of the target ``g`` and
the anchor ``p``. The coding is invariant to a scaling of the x and y axes, so coding in pixels
equals YOLACT's coding in image-relative coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class SSDBoxCoder:
    """Encode x1y1x2y2 boxes against anchors as SSD deltas, and back.

    Args:
        variances: ``(v_centre, v_size)`` (SSD / YOLACT: ``(0.1, 0.2)``).
        max_log_size: upper clamp of the decoded ``dw * v1`` and ``dh * v1`` before ``exp`` so a
            wild prediction cannot overflow (``log(1000 / 16)``; YOLACT does not clamp, which
            changes nothing for trained weights).
    """

    def __init__(self, variances: Sequence[float] = (0.1, 0.2), max_log_size: float = 4.135) -> None:
        if len(variances) != 2 or min(variances) <= 0:
            raise ValueError(f"variances must be two positive numbers, got {variances}")
        self.variances = (float(variances[0]), float(variances[1]))
        self.max_log_size = float(max_log_size)

    def __repr__(self) -> str:
        return f"SSDBoxCoder(variances={self.variances})"

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas that move each anchor onto its box.

        Args:
            boxes: ``Tensor[..., 4]`` x1y1x2y2 targets (positive width and height).
            anchors: ``Tensor[..., 4]`` x1y1x2y2 anchors, broadcastable to ``boxes``.

        Returns:
            ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``.
        """
        v0, v1 = self.variances
        a_wh = anchors[..., 2:] - anchors[..., :2]
        a_c = anchors[..., :2] + 0.5 * a_wh
        b_wh = boxes[..., 2:] - boxes[..., :2]
        b_c = boxes[..., :2] + 0.5 * b_wh
        d_c = (b_c - a_c) / (v0 * a_wh)
        d_wh = torch.log(b_wh / a_wh) / v1
        return torch.cat((d_c, d_wh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from deltas.

        Args:
            deltas: ``Tensor[..., 4]`` ``(dx, dy, dw, dh)``.
            anchors: ``Tensor[..., 4]`` x1y1x2y2, broadcastable to ``deltas``.

        Returns:
            ``Tensor[..., 4]`` x1y1x2y2 in the dtype of ``deltas`` (not clipped).
        """
        v0, v1 = self.variances
        anchors = anchors.to(deltas.dtype)
        a_wh = anchors[..., 2:] - anchors[..., :2]
        a_c = anchors[..., :2] + 0.5 * a_wh
        c = a_c + deltas[..., :2] * v0 * a_wh
        wh = a_wh * torch.exp((deltas[..., 2:] * v1).clamp(max=self.max_log_size))
        return torch.cat((c - 0.5 * wh, c + 0.5 * wh), dim=-1)
