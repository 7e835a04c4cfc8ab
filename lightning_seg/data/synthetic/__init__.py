"""The synthetic "shapes world": the embedded default dataset for demos, quickstart and tests.

Things (circle, triangle, square, star) of varied size, colour and rotation are painted in
depth order over textured stuff regions (sky, ground, water), so shapes occlude each other.
Everything is written in the formats of real datasets and read back by the same readers:

    python -m lightning_seg.data.synthetic --out DIR --num-images N --seed S [--video]

or ``generate_shapes_world(DIR, N, seed=S)``. Same arguments, byte-identical files; a folder
that already holds the same world (``DIR/world.json``) is not rewritten.

Layout of ``DIR/{train,val}/`` for still images (``NNNNNN.png`` names):

- ``images/*.png``: RGB images.
- ``instances.json``: COCO instances. Most objects are polygons (the shape's own vertices
  when it is fully visible, else the pixel outline of its visible part, which pycocotools
  decodes exactly); some are compressed RLE (string counts), a few uncompressed RLE (list
  counts); crowd groups are ``iscrowd=1`` uncompressed RLE. ``area`` is the visible pixel
  count, ``bbox`` the visible pixel extent ``[x, y, w, h]``.
- ``keypoints.json``: the same annotations plus COCO keypoints. Every thing category lists
  the keypoint names (``center, top, bottom, left_side, right_side``: the centre and the
  points where the shape's own up/down/left/right axes leave its outline) and a 1-based
  ``skeleton``; the top level has ``flip_map`` name pairs. Visibility: 2 visible, 1 hidden
  under another shape, 0 outside the image (x = y = 0). Crowd groups have no keypoints.
  Coordinates are COCO pixel indices (the scene's continuous ``(x, y)`` minus 0.5, the
  centre of pixel ``(i, j)`` being ``(j, i)``); the COCO reader adds the 0.5 back.
- ``panoptic.json`` + ``panoptic/*.png``: COCO panoptic, id = R + 256 G + 256^2 B,
  0 = void; segment id = ``category_id * 100000 + n`` (n = instance number, 0 for stuff).
- ``semantic/*.png``: mode L class indices, 255 = void (still images have no void pixels).

With ``--video`` (``video=True``) the folders hold sequences instead:
``frames/<video>/<frame:05d>.png``, YouTube-VIS ``video_instances.json`` (per-frame
compressed RLE / bbox / area, null where the object is absent), ``video_panoptic.json`` +
``video_panoptic/<video>/<frame:05d>.png`` (image entries carry ``video_id`` and
``frame_index``; a thing keeps its segment id ``category_id * 100000 + track_id`` through the
sequence, and ``track_id`` is its ``video_instances.json`` annotation id) and
``video_semantic/``. In a frame where an object's visible part is below the minimum area,
that part is void (panoptic 0, semantic 255).

Class order: one index space, **things first, then stuff** -- 0 circle, 1 triangle,
2 square, 3 star, 4 sky, 5 ground, 6 water (COCO ids 1, 2, 3, 4, 11, 12, 13). Semantic PNGs
store these indices (so a circle pixel has class 0); instance and keypoint data use the
four things. ``shapes_*_info()`` give the matching ``DatasetInfo``.
"""

from lightning_seg.data.synthetic.categories import (
    KEYPOINT_NAMES,
    STUFF_IDS,
    STUFF_NAMES,
    THING_IDS,
    THING_NAMES,
    shapes_instance_info,
    shapes_keypoint_info,
    shapes_panoptic_info,
    shapes_semantic_info,
)
from lightning_seg.data.synthetic.world import (
    SEGMENT_ID_BASE,
    WorldConfig,
    generate_shapes_world,
    read_world_config,
    render_image,
    render_video,
)

__all__ = [
    "KEYPOINT_NAMES",
    "SEGMENT_ID_BASE",
    "STUFF_IDS",
    "STUFF_NAMES",
    "THING_IDS",
    "THING_NAMES",
    "WorldConfig",
    "generate_shapes_world",
    "read_world_config",
    "render_image",
    "render_video",
    "shapes_instance_info",
    "shapes_keypoint_info",
    "shapes_panoptic_info",
    "shapes_semantic_info",
]
