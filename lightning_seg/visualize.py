"""Pictures of predictions: label overlays, instance masks and boxes, side-by-side grids.

Pure functions on uint8 arrays, built on ``torchvision.utils`` drawing helpers; callbacks and
tasks use them to log overlays and write prediction images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from lightning_seg.structures import InstancePredictions, InstanceTargets


def to_uint8_image(image: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """``Tensor[3, H, W]`` float in [0, 1] or uint8 -> uint8 ``Tensor[3, h, w]`` cropped to ``size``."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if size is not None:
        image = image[:, : size[0], : size[1]]
    return image.cpu()


def overlay_labels(
    image: Tensor,
    labels: Tensor,
    palette: Sequence[tuple[int, int, int]],
    ignore_index: int | None = 255,
    alpha: float = 0.5,
) -> Tensor:
    """Blend a label map over an image.

    Args:
        image: uint8 ``Tensor[3, H, W]``.
        labels: int ``Tensor[H, W]`` class indices; ``ignore_index`` pixels stay unpainted.
        palette: one RGB colour per class.
        ignore_index: label drawn as nothing.
        alpha: opacity of the colours.

    Returns:
        uint8 ``Tensor[3, H, W]``.
    """
    labels = labels.cpu()
    classes = [int(c) for c in labels.unique() if int(c) != ignore_index and 0 <= int(c) < len(palette)]
    if not classes:
        return image
    masks = torch.stack([labels == c for c in classes])  # [C', H, W]
    colors = [tuple(int(v) for v in palette[c]) for c in classes]
    return draw_segmentation_masks(image, masks, alpha=alpha, colors=colors)


def draw_instances(
    image: Tensor,
    instances: InstancePredictions | InstanceTargets,
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    score_thresh: float = 0.3,
    alpha: float = 0.45,
) -> Tensor:
    """Draw instance masks, boxes and ``class score`` captions over an image (uint8 ``[3, H, W]``)."""
    inst = instances.to("cpu")
    keep = torch.ones(len(inst), dtype=torch.bool)
    scores = getattr(inst, "scores", None)
    if scores is not None:
        keep = scores >= score_thresh
    if not bool(keep.any()):
        return image
    labels = inst.labels[keep].tolist()
    colors = [tuple(int(v) for v in palette[c % len(palette)]) for c in labels]
    out = image
    if inst.masks is not None:
        masks = inst.masks[keep]
        masks = masks > 0.5 if masks.dtype != torch.bool else masks
        h, w = image.shape[1:]
        out = draw_segmentation_masks(out, masks[:, :h, :w], alpha=alpha, colors=colors)
    captions = []
    for i, c in enumerate(labels):
        name = class_names[c] if c < len(class_names) else str(c)
        captions.append(f"{name} {float(scores[keep][i]):.2f}" if scores is not None else name)
    return draw_bounding_boxes(out, inst.boxes[keep], labels=captions, colors=colors, width=2)


def hstack(images: Sequence[Tensor], gap: int = 4) -> Tensor:
    """Place uint8 ``[3, H_i, W_i]`` images side by side on a white background."""
    h = max(im.shape[1] for im in images)
    w = sum(im.shape[2] for im in images) + gap * (len(images) - 1)
    canvas = torch.full((3, h, w), 255, dtype=torch.uint8)
    x = 0
    for im in images:
        canvas[:, : im.shape[1], x : x + im.shape[2]] = im
        x += im.shape[2] + gap
    return canvas


def vstack(images: Sequence[Tensor], gap: int = 4) -> Tensor:
    """Stack uint8 ``[3, H_i, W_i]`` images vertically on a white background."""
    return hstack([im.transpose(1, 2) for im in images], gap).transpose(1, 2).contiguous()


def to_numpy(image: Tensor) -> np.ndarray:
    """uint8 ``Tensor[3, H, W]`` -> ``uint8[H, W, 3]`` for PIL / W&B."""
    return image.permute(1, 2, 0).contiguous().numpy()


def draw_skeleton(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[tuple[int, int]],
    colors: Sequence[tuple[int, int, int]],
    score_thresh: float = 0.0,
    radius: int = 2,
    width: int = 1,
    limb_color: tuple[int, int, int] = (255, 255, 255),
) -> Tensor:
    """Draw keypoints (one colour per keypoint) and their limbs over an image.

    Args:
        image: uint8 ``Tensor[3, H, W]``.
        keypoints: ``Tensor[N, K, 3]`` ``(x, y, visibility or score)`` in the image's
            continuous pixel frame; points whose third value is ``<= score_thresh`` are not
            drawn (nor their limbs).
        skeleton: limbs as keypoint index pairs.
        colors: one RGB colour per keypoint.
        score_thresh: see ``keypoints``.
        radius: point radius in pixels.
        width: limb width in pixels.
        limb_color: colour of the limbs.

    Returns:
        uint8 ``Tensor[3, H, W]``.
    """
    from torchvision.utils import draw_keypoints

    kpts = keypoints.detach().float().cpu()
    if kpts.numel() == 0:
        return image
    xy = kpts[..., :2] - 0.5  # continuous frame -> pixel index (drawing convention)
    shown = kpts[..., 2] > score_thresh  # [N, K]
    out = image
    if skeleton:
        out = draw_keypoints(out, xy, connectivity=[tuple(p) for p in skeleton], colors=limb_color,
                             radius=0, width=width, visibility=shown)
    for k in range(kpts.shape[1]):
        color = tuple(int(c) for c in colors[k % len(colors)])
        out = draw_keypoints(out, xy[:, k : k + 1], colors=color, radius=radius,
                             visibility=shown[:, k : k + 1])
    return out


# ------------------------------------------------------------------------------ panoptic maps
#: Brightness shifts of successive instances of one class (mixed with white > 0, black < 0).
_INSTANCE_SHADES = (0.0, 0.35, -0.35, 0.6, -0.6, 0.2, -0.2)


def segment_colors(
    labels: Sequence[int], isthing: Sequence[bool], palette: Sequence[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """One colour per segment: stuff takes its class colour; the k-th instance of a thing class
    takes the class colour lightened or darkened by a step of ``_INSTANCE_SHADES`` so that
    touching instances of one class stay apart."""
    seen: dict[int, int] = {}
    colors = []
    for label, thing in zip(labels, isthing):
        base = palette[int(label) % len(palette)]
        if not thing:
            colors.append(tuple(int(v) for v in base))
            continue
        k = seen.get(int(label), 0)
        seen[int(label)] = k + 1
        shade = _INSTANCE_SHADES[k % len(_INSTANCE_SHADES)]
        target = 255 if shade > 0 else 0
        colors.append(tuple(round(v + abs(shade) * (target - v)) for v in base))
    return colors


def draw_panoptic(
    image: Tensor,
    segment_map: Tensor,
    ids: Tensor,
    labels: Tensor,
    isthing: Tensor,
    palette: Sequence[tuple[int, int, int]],
    alpha: float = 0.6,
    outline: tuple[int, int, int] = (255, 255, 255),
) -> Tensor:
    """Blend a panoptic segmentation over an image: a colour per segment (``segment_colors``),
    void pixels unpainted, and every segment's outline drawn in ``outline``.

    Args:
        image: uint8 ``Tensor[3, H, W]``.
        segment_map: ``Tensor[H, W]`` segment id per pixel, 0 void.
        ids: ``Tensor[S]`` the segment ids; labels / isthing: ``Tensor[S]`` per segment.
        palette: one RGB colour per class.
        alpha: opacity of the colours.
        outline: colour of the segment boundaries.

    Returns:
        uint8 ``Tensor[3, H, W]``.
    """
    seg = segment_map.cpu().to(torch.int64)
    ids = ids.cpu().to(torch.int64)
    colors = torch.tensor(
        [(0, 0, 0)] + segment_colors(labels.tolist(), isthing.tolist(), palette), dtype=torch.float32
    )  # [S + 1, 3], row 0 void
    index = torch.zeros_like(seg)  # [H, W] position in ids + 1, 0 void
    if len(ids):
        sorted_ids, order = ids.sort()
        pos = torch.searchsorted(sorted_ids, seg).clamp(max=len(ids) - 1)
        index = torch.where(sorted_ids[pos] == seg, order[pos] + 1, 0)
    painted = index > 0
    out = image.float().clone()
    color_map = colors[index].permute(2, 0, 1)  # [3, H, W]
    out = torch.where(painted[None], (1 - alpha) * out + alpha * color_map, out)
    edge = torch.zeros_like(painted)
    edge[:, :-1] |= index[:, :-1] != index[:, 1:]
    edge[:-1, :] |= index[:-1, :] != index[1:, :]
    out[:, edge] = torch.tensor(outline, dtype=torch.float32)[:, None]
    return out.round().clamp(0, 255).to(torch.uint8)


def panoptic_legend(
    labels: Sequence[int],
    isthing: Sequence[bool],
    class_names: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    width: int,
    line_height: int = 14,
) -> Tensor:
    """A legend strip (uint8 ``Tensor[3, h, width]``): a colour swatch and the name of every class
    present, things with their instance count (``person x5``), wrapped to ``width``."""
    from PIL import Image, ImageDraw, ImageFont

    counts: dict[int, int] = {}
    thing: dict[int, bool] = {}
    for label, t in zip(labels, isthing):
        counts[int(label)] = counts.get(int(label), 0) + 1
        thing[int(label)] = bool(t)
    entries = []
    for c in sorted(counts):
        name = class_names[c] if c < len(class_names) else str(c)
        entries.append((c, f"{name} x{counts[c]}" if thing[c] else name))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y = [], 4, 2
    for c, text in entries:
        w = int(probe.textlength(text, font=font)) + line_height + 10
        if x + w > width and x > 4:
            x, y = 4, y + line_height
        placed.append((x, y, c, text))
        x += w
    height = y + line_height + 2 if entries else 0
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, c, text in placed:
        color = tuple(int(v) for v in palette[c % len(palette)])
        draw.rectangle([x, y + 2, x + line_height - 4, y + line_height - 2], fill=color,
                       outline=(0, 0, 0))
        draw.text((x + line_height, y), text, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()
