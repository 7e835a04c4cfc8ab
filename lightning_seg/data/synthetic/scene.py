"""Sampling and rendering shapes-world scenes: textured stuff, then shapes in painter's order.

A scene is a background of stuff regions (sky above a wavy horizon; ground and water below)
and a stack of layers. A layer is one thing: a single shape, or a crowd group (several small
shapes of one class annotated together with ``iscrowd=1``). Later layers occlude earlier
ones; the pixels a layer keeps on top are its visible mask, which is what gets annotated.
Every image scene draws from its own generator seeded by ``(seed, split, index)``, so an
image does not depend on how many images come before it.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lightning_seg.data.synthetic.categories import STUFF_NAMES, THING_NAMES
from lightning_seg.data.synthetic.coco import mask_bbox
from lightning_seg.data.synthetic.shapes import SHAPE_BUILDERS, Outline, shape_keypoints, shape_mask

SKY, GROUND, WATER = (STUFF_NAMES.index(n) for n in ("sky", "ground", "water"))
#: Annotation encodings a layer can ask for: polygon (falls back to RLE for masks with holes),
#: compressed RLE, uncompressed (list) RLE.
POLYGON, RLE, RLE_LIST = "polygon", "rle", "rle_list"


@dataclass(frozen=True)
class SceneParams:
    """How scenes are sampled (``generate_shapes_world`` fills this from its arguments).

    Attributes:
        max_objects: most single shapes per image (at least one, except the empty images).
        min_visible_area: layers with fewer visible pixels are not annotated (removed from
            still images; void pixels in the frames of a video).
        crowd_prob: probability that an image gets one crowd group.
        rle_prob: probability that a non-crowd object is written as RLE instead of polygons.
        rle_list_frac: fraction of those RLE objects written uncompressed (list counts).
        min_scale: smallest shape size, as a fraction of the image's shorter side.
        max_scale: largest shape size, same unit.
        max_rotation: shapes turn by at most this many degrees either way (below the 36-degree
            symmetry of the star, so that the top/left/right keypoints stay unambiguous).
        min_contrast: least RGB distance between a shape's colour and the stuff under it.
        overlap_prob: chance that a shape is placed against an earlier one (so that it
            occludes it), rather than anywhere.
    """

    max_objects: int = 6
    min_visible_area: int = 24
    crowd_prob: float = 0.1
    rle_prob: float = 0.2
    rle_list_frac: float = 0.3
    min_scale: float = 0.06
    max_scale: float = 0.2
    max_rotation: float = 30.0
    min_contrast: float = 100.0
    overlap_prob: float = 0.35


@dataclass
class Layer:
    """One thing in a scene.

    Attributes:
        label: thing class index (``THING_NAMES`` order).
        outlines: its shapes (one, or several for a crowd group).
        colors: one RGB colour per outline.
        iscrowd: True for a crowd group.
        encoding: the annotation encoding it asks for (``POLYGON``, ``RLE`` or ``RLE_LIST``).
        track_id: identity through a video (the video annotation id), 0 for still images.
        full: ``bool[H, W]`` union of its shapes' masks before occlusion.
    """

    label: int
    outlines: list[Outline]
    colors: list[tuple[int, int, int]]
    iscrowd: bool = False
    encoding: str = POLYGON
    track_id: int = 0
    full: np.ndarray | None = None


@dataclass
class Scene:
    """A rendered image and everything needed to annotate it.

    Attributes:
        image: ``uint8[H, W, 3]`` RGB.
        stuff: ``int64[H, W]`` stuff index (``STUFF_NAMES`` order) under the things.
        layers: things, bottom to top.
        owner: ``int64[H, W]`` index of the layer on top at each pixel, -1 where stuff shows.
        void: ``bool[H, W]`` unlabelled pixels (visible fragments below the minimum area).
    """

    image: np.ndarray
    stuff: np.ndarray
    layers: list[Layer]
    owner: np.ndarray
    void: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.void is None:
            self.void = np.zeros(self.owner.shape, dtype=bool)

    @property
    def size(self) -> tuple[int, int]:
        return self.owner.shape  # type: ignore[return-value]

    def visible(self, i: int) -> np.ndarray:
        """``bool[H, W]`` visible, labelled pixels of layer ``i``."""
        return (self.owner == i) & ~self.void

    def keypoints(self, i: int) -> np.ndarray:
        """``float[K, 3]`` COCO keypoints of a single-shape layer: ``(x, y, v)`` with v = 2
        visible, 1 hidden under a later layer, 0 outside the image (then x = y = 0)."""
        h, w = self.size
        points = shape_keypoints(self.layers[i].outlines[0])
        out = np.zeros((len(points), 3))
        for k, (x, y) in enumerate(np.round(points, 2).tolist()):
            if 0 <= x < w and 0 <= y < h:
                hidden = self.owner[int(y), int(x)] > i
                out[k] = (x, y, 1 if hidden else 2)
        return out

    def semantic(self, num_things: int = len(THING_NAMES), ignore_index: int = 255) -> np.ndarray:
        """``uint8[H, W]`` class index (things first, then stuff), ``ignore_index`` for void."""
        labels = np.array([layer.label for layer in self.layers] + [0], dtype=np.int64)
        sem = np.where(self.owner >= 0, labels[self.owner], num_things + self.stuff)
        sem[self.void] = ignore_index
        return sem.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Textures and stuff layout


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """``float32[H, W]`` unit-variance noise, smoothly interpolated over ``cell`` pixels."""
    gh, gw = height // cell + 2, width // cell + 2
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(coarse).resize((gw * cell, gh * cell), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)[:height, :width]


def _wave(
    rng: np.random.Generator, coord: np.ndarray, length: float, amplitude: float
) -> np.ndarray:
    """A sine of random phase and a period around ``length`` along ``coord``."""
    period = length * rng.uniform(0.5, 1.5)
    return amplitude * np.sin(2 * math.pi * coord / period + rng.uniform(0, 2 * math.pi))


def stuff_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``int64[H, W]`` stuff index: sky above a wavy horizon (usually), ground and water below.

    Water is a band at the bottom, or one side of a slanted wavy shore, or absent.
    """
    y = np.arange(height)[:, None] + 0.5  # [H, 1]
    x = np.arange(width)[None, :] + 0.5  # [1, W]
    stuff = np.full((height, width), GROUND, dtype=np.int64)
    horizon = 0.0
    if rng.random() < 0.9:
        horizon = height * rng.uniform(0.15, 0.55)
        stuff[y < horizon + _wave(rng, x, width, 0.04 * height)] = SKY
    layout = rng.random()
    if layout < 0.4:
        level = horizon + (height - horizon) * rng.uniform(0.3, 0.7)
        water = y > level + _wave(rng, x, width / 2, 0.03 * height)
    elif layout < 0.8:
        shore = width * rng.uniform(0.25, 0.75) + rng.uniform(-0.6, 0.6) * (y - height / 2)
        water = x > shore + _wave(rng, y, height / 2, 0.04 * width)
        if rng.random() < 0.5:
            water = ~water
    else:
        water = np.zeros((height, width), dtype=bool)
    stuff[water & (stuff == GROUND)] = WATER
    return stuff


def stuff_texture(rng: np.random.Generator, stuff: np.ndarray) -> np.ndarray:
    """``float32[H, W, 3]`` RGB (0..255) texture of every stuff region."""
    h, w = stuff.shape
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    jitter = rng.uniform(-20, 20, size=(3, 3)).astype(np.float32)

    top = np.array([70, 120, 215], np.float32) + jitter[0]
    bottom = np.array([175, 205, 240], np.float32) + jitter[0]
    clouds = np.clip(smooth_noise(rng, h, w, 12), 0, None)[..., None]
    sky = top + (bottom - top) * yy[..., None] + 45 * clouds

    soils = np.array([[125, 95, 60], [95, 120, 55], [150, 130, 95]], np.float32)
    soil = soils[rng.integers(len(soils))] + jitter[1]
    grain = rng.standard_normal((h, w, 1), dtype=np.float32)
    ground = soil + 16 * smooth_noise(rng, h, w, 5)[..., None] + 10 * grain

    sea = np.array([30, 85, 115], np.float32) + jitter[2]
    wavelength = np.float32(rng.uniform(3, 6))
    phase = 1.5 * smooth_noise(rng, h, w, 10)
    ripples = np.sin(2 * np.float32(math.pi) * yy * h / wavelength + phase)
    water = sea + 14 * ripples[..., None] + 5 * grain[::-1, ::-1]

    texture = np.empty((h, w, 3), dtype=np.float32)
    for index, region in ((SKY, sky), (GROUND, ground), (WATER, water)):
        where = stuff == index
        texture[where] = np.broadcast_to(region, (h, w, 3))[where]
    return texture


# --------------------------------------------------------------------------------------------
# Things


def _random_color(rng: np.random.Generator) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
    return np.array([r, g, b]) * 255


def contrasting_color(
    rng: np.random.Generator, under: np.ndarray, min_contrast: float, tries: int = 20
) -> tuple[int, int, int]:
    """A vivid colour at least ``min_contrast`` (RGB distance) from ``under`` (or the best of
    ``tries``)."""
    best, best_dist = None, -1.0
    for _ in range(tries):
        color = _random_color(rng)
        dist = float(np.linalg.norm(color - under))
        if dist > best_dist:
            best, best_dist = color, dist
        if dist >= min_contrast:
            break
    return tuple(int(c) for c in np.round(best))  # type: ignore[return-value]


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def paint_shape(
    rng: np.random.Generator, canvas: np.ndarray, outline: Outline, mask: np.ndarray, color
) -> None:
    """Fill ``mask`` on ``canvas`` (``float32[H, W, 3]``) with a shaded colour and dark rim."""
    if not mask.any():
        return
    x, y, w, h = mask_bbox(mask)
    box = (slice(y, y + h), slice(x, x + w))
    part = mask[box]
    yy, xx = np.mgrid[y : y + h, x : x + w] + 0.5
    light = rng.uniform(0, 2 * math.pi)
    along = (xx - outline.center[0]) * math.cos(light) + (yy - outline.center[1]) * math.sin(light)
    shade = 1 + 0.2 * np.clip(along / max(outline.size, 1.0), -1, 1)
    grain = rng.standard_normal((h, w, 1), dtype=np.float32)
    fill = np.asarray(color, np.float32) * shade[..., None] + 4 * grain
    rim = part & ~_erode(part)
    fill[rim] *= 0.55
    canvas[box][part] = fill[part]


def sample_outline(
    rng: np.random.Generator, kind: str, height: int, width: int, params: SceneParams
) -> Outline:
    """A shape of class ``kind`` at a random place, log-uniform size and bounded rotation."""
    side = min(height, width)
    size = side * math.exp(rng.uniform(math.log(params.min_scale), math.log(params.max_scale)))
    center = (rng.uniform(0, width), rng.uniform(0, height))
    angle = rng.uniform(-params.max_rotation, params.max_rotation)
    return SHAPE_BUILDERS[kind](center, size, angle)


def overlapping(rng: np.random.Generator, outline: Outline, below: Outline) -> Outline:
    """``outline`` moved next to ``below`` so that the two overlap partly."""
    heading = rng.uniform(0, 2 * math.pi)
    reach = rng.uniform(0.5, 1.3) * (outline.size + below.size)
    x, y = below.center
    center = (x + reach * math.cos(heading), y + reach * math.sin(heading))
    return SHAPE_BUILDERS[outline.kind](center, outline.size, outline.angle)


def sample_crowd(rng: np.random.Generator, height: int, width: int, params: SceneParams) -> Layer:
    """A crowd group: 5..8 small shapes of one class clustered around a point."""
    side = min(height, width)
    label = int(rng.integers(len(THING_NAMES)))
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    outlines = []
    for _ in range(int(rng.integers(5, 9))):
        center = (cx + rng.normal() * 0.08 * side, cy + rng.normal() * 0.08 * side)
        size = max(2.5, side * rng.uniform(0.025, 0.045))
        angle = rng.uniform(-params.max_rotation, params.max_rotation)
        outlines.append(SHAPE_BUILDERS[THING_NAMES[label]](center, size, angle))
    return Layer(label, outlines, [], iscrowd=True, encoding=RLE_LIST)


def sample_encoding(rng: np.random.Generator, params: SceneParams) -> str:
    if rng.random() >= params.rle_prob:
        return POLYGON
    return RLE_LIST if rng.random() < params.rle_list_frac else RLE


def rasterize(layers: list[Layer], height: int, width: int) -> None:
    """Fill ``layer.full`` with the union of each layer's shape masks."""
    for layer in layers:
        full = np.zeros((height, width), dtype=bool)
        for outline in layer.outlines:
            full |= shape_mask(outline, height, width)
        layer.full = full


def ownership(layers: list[Layer], height: int, width: int) -> np.ndarray:
    """``int64[H, W]`` index of the topmost layer at each pixel, -1 where none."""
    owner = np.full((height, width), -1, dtype=np.int64)
    for i, layer in enumerate(layers):
        owner[layer.full] = i
    return owner


def drop_hidden(layers: list[Layer], height: int, width: int, min_area: int) -> list[Layer]:
    """Remove layers with fewer than ``min_area`` visible pixels (removing one only uncovers
    the others, so the kept layers all stay above the minimum)."""
    owner = ownership(layers, height, width)
    areas = np.bincount(owner[owner >= 0], minlength=len(layers))
    return [layer for layer, area in zip(layers, areas) if area >= min_area]


def compose(
    rng: np.random.Generator,
    background: np.ndarray,
    stuff: np.ndarray,
    layers: list[Layer],
    min_visible_area: int = 0,
) -> Scene:
    """Paint the layers in order over the background; fragments below the area are void."""
    h, w = stuff.shape
    canvas = background.copy()
    for layer in layers:
        for outline, color in zip(layer.outlines, layer.colors):
            paint_shape(rng, canvas, outline, shape_mask(outline, h, w), color)
    owner = ownership(layers, h, w)
    areas = np.bincount(owner[owner >= 0], minlength=len(layers))
    small = np.flatnonzero(areas < min_visible_area)
    void = np.isin(owner, small) if len(small) else np.zeros((h, w), dtype=bool)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return Scene(image=image, stuff=stuff, layers=layers, owner=owner, void=void)


def color_layers(
    rng: np.random.Generator, layers: list[Layer], background: np.ndarray, params: SceneParams
) -> None:
    """Give every shape a colour that stands out from the stuff under it."""
    h, w = background.shape[:2]
    for layer in layers:
        layer.colors = []
        for outline in layer.outlines:
            mask = shape_mask(outline, h, w)
            under = background[mask].mean(axis=0) if mask.any() else background.mean(axis=(0, 1))
            layer.colors.append(contrasting_color(rng, under, params.min_contrast))


def sample_image_scene(
    rng: np.random.Generator, height: int, width: int, params: SceneParams, empty: bool = False
) -> Scene:
    """A still image: 1..max_objects shapes (none when ``empty``), sometimes a crowd group."""
    stuff = stuff_layout(rng, height, width)
    background = stuff_texture(rng, stuff)
    layers: list[Layer] = []
    if not empty:
        for _ in range(int(rng.integers(1, params.max_objects + 1))):
            label = int(rng.integers(len(THING_NAMES)))
            outline = sample_outline(rng, THING_NAMES[label], height, width, params)
            if layers and rng.random() < params.overlap_prob:
                below = layers[int(rng.integers(len(layers)))].outlines[0]
                outline = overlapping(rng, outline, below)
            layers.append(Layer(label, [outline], [], encoding=sample_encoding(rng, params)))
        if rng.random() < params.crowd_prob:
            depth = int(rng.integers(len(layers) + 1))
            layers.insert(depth, sample_crowd(rng, height, width, params))
    rasterize(layers, height, width)
    layers = drop_hidden(layers, height, width, params.min_visible_area)
    color_layers(rng, layers, background, params)
    return compose(rng, background, stuff, layers, params.min_visible_area)


def sample_video_scenes(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_frames: int,
    params: SceneParams,
    first_track_id: int = 1,
) -> list[Scene]:
    """A sequence over a still background: shapes drift, spin, grow or shrink, bounce off the
    borders or fly out, and pass in front of each other (the depth order is fixed).

    Objects that are never visible enough are removed; the others get consecutive
    ``track_id`` from ``first_track_id`` (depth order). Per frame, an object whose visible
    part is below ``min_visible_area`` is void (not annotated) in that frame.
    """
    stuff = stuff_layout(rng, height, width)
    background = stuff_texture(rng, stuff)
    side = min(height, width)
    num_objects = int(rng.integers(1, params.max_objects + 1))
    tracks = []  # per object: class label and its outline in every frame
    for _ in range(num_objects):
        label = int(rng.integers(len(THING_NAMES)))
        start = sample_outline(rng, THING_NAMES[label], height, width, params)
        speed, heading = rng.uniform(1.0, 0.06 * side), rng.uniform(0, 2 * math.pi)
        vx, vy = speed * math.cos(heading), speed * math.sin(heading)
        spin, growth, bounce = rng.uniform(-6, 6), rng.uniform(0.97, 1.03), rng.random() < 0.75
        (x, y), size, angle = start.center, start.size, start.angle
        outlines = []
        for _ in range(num_frames):
            outlines.append(SHAPE_BUILDERS[start.kind]((x, y), size, angle))
            if bounce and not 0 <= x + vx <= width:
                vx = -vx
            if bounce and not 0 <= y + vy <= height:
                vy = -vy
            x, y, angle = x + vx, y + vy, angle + spin
            size = float(np.clip(size * growth, params.min_scale * side, params.max_scale * side))
        tracks.append((label, outlines))

    def frame_layers(t: int, keep: list[int]) -> list[Layer]:
        layers = [
            Layer(tracks[j][0], [tracks[j][1][t]], [], track_id=first_track_id + n)
            for n, j in enumerate(keep)
        ]
        rasterize(layers, height, width)
        return layers

    keep = list(range(num_objects))
    best = np.zeros(num_objects, dtype=np.int64)
    for t in range(num_frames):
        owner = ownership(frame_layers(t, keep), height, width)
        best = np.maximum(best, np.bincount(owner[owner >= 0], minlength=num_objects))
    keep = [j for j in keep if best[j] >= params.min_visible_area]

    first = frame_layers(0, keep)
    color_layers(rng, first, background, params)
    colors = [layer.colors for layer in first]
    scenes = []
    for t in range(num_frames):
        layers = first if t == 0 else frame_layers(t, keep)
        for layer, color in zip(layers, colors):
            layer.colors = color
        scenes.append(compose(rng, background, stuff, layers, params.min_visible_area))
    return scenes
