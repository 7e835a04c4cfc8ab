"""Classes and keypoints of the shapes world, and its ``DatasetInfo`` constructors.

Class order (one contiguous index space for semantic and panoptic): **things first, then
stuff**. Index 0..3 are the things circle, triangle, square, star (COCO ids 1..4); index 4..6
are the stuff classes sky, ground, water (COCO ids 11..13, a gap on purpose so that readers
must map ids to indices as for real COCO). Instance and keypoint datasets use the things only.
"""

from __future__ import annotations

from lightning_seg.structures.dataset_info import DatasetInfo

THING_NAMES: tuple[str, ...] = ("circle", "triangle", "square", "star")
THING_IDS: tuple[int, ...] = (1, 2, 3, 4)
STUFF_NAMES: tuple[str, ...] = ("sky", "ground", "water")
STUFF_IDS: tuple[int, ...] = (11, 12, 13)

#: Overlay colours (things saturated, stuff muted), in class-index order (things, then stuff).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 60, 60),
    (60, 200, 80),
    (60, 110, 230),
    (240, 200, 40),
    (150, 200, 240),
    (140, 110, 70),
    (30, 80, 120),
)

#: Keypoints of every shape: its centre and the points where the rays from the centre along
#: the shape's own (rotated) up, down, left and right axes leave its outline.
KEYPOINT_NAMES: tuple[str, ...] = ("center", "top", "bottom", "left_side", "right_side")
#: Limbs as 0-based keypoint index pairs (the JSON stores them 1-based like COCO).
SKELETON: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (0, 4))
#: OKS sigma of each keypoint (outline points are sharp, so one small value for all).
KEYPOINT_SIGMAS: tuple[float, ...] = (0.05,) * len(KEYPOINT_NAMES)
#: Version of the scene generator, stored in ``world.json`` so that a changed generator
#: regenerates cached worlds. 2: keypoints.json holds COCO pixel indices (continuous - 0.5).
GENERATOR_VERSION = 2


def flip_pairs_by_name(names: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
    """Index pairs ``(left_x, right_x)`` found by the ``left_`` / ``right_`` name prefixes."""
    index = {name: i for i, name in enumerate(names)}
    return [
        (i, index["right_" + name[len("left_") :]])
        for i, name in enumerate(names)
        if name.startswith("left_") and "right_" + name[len("left_") :] in index
    ]


def shapes_instance_info() -> DatasetInfo:
    """Things only: circle, triangle, square, star (ids 1..4 -> indices 0..3)."""
    return DatasetInfo(
        class_names=list(THING_NAMES),
        category_ids=list(THING_IDS),
        isthing=[True] * len(THING_NAMES),
        palette=list(PALETTE[: len(THING_NAMES)]),
    )


def shapes_semantic_info() -> DatasetInfo:
    """Things then stuff (7 classes); semantic PNGs store these indices, 255 = void."""
    return DatasetInfo(
        class_names=list(THING_NAMES + STUFF_NAMES),
        category_ids=list(THING_IDS + STUFF_IDS),
        isthing=[True] * len(THING_NAMES) + [False] * len(STUFF_NAMES),
        ignore_index=255,
        palette=list(PALETTE),
    )


def shapes_panoptic_info() -> DatasetInfo:
    """The panoptic class space: identical to the semantic one (things then stuff)."""
    return shapes_semantic_info()


def shapes_keypoint_info() -> DatasetInfo:
    """Things with the five shape keypoints, the left/right flip map, skeleton and sigmas."""
    return DatasetInfo(
        class_names=list(THING_NAMES),
        category_ids=list(THING_IDS),
        isthing=[True] * len(THING_NAMES),
        keypoint_names=list(KEYPOINT_NAMES),
        keypoint_flip_map=flip_pairs_by_name(KEYPOINT_NAMES),
        skeleton=list(SKELETON),
        keypoint_sigmas=list(KEYPOINT_SIGMAS),
        palette=list(PALETTE[: len(THING_NAMES)]),
    )
