"""Dataset constants, defined once: normalisation statistics, COCO's keypoint conventions."""

from __future__ import annotations

#: RGB mean and std of ImageNet for images in ``[0, 1]`` (torchvision's pretrained weights).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: COCO JSON keypoints are pixel indices (pixel column ``j`` at ``x = j``); in memory they are
#: in the continuous frame of boxes and masks (its centre at ``j + 0.5``), as detectron2:
#: readers add this offset to labelled keypoints, writers to COCO JSON subtract it.
COCO_KEYPOINT_OFFSET = 0.5

#: The 17 COCO person keypoints, in the dataset's order.
COCO_PERSON_KEYPOINT_NAMES: list[str] = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

#: OKS sigmas of the 17 COCO person keypoints (cocodataset/cocoapi, cocoeval.py).
COCO_PERSON_KEYPOINT_SIGMAS: list[float] = [
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
]  # fmt: skip

#: COCO 2017's thing and stuff category counts (panoptic), and LVIS v1's category count.
COCO_NUM_THINGS, COCO_NUM_STUFF, LVIS_NUM_CLASSES = 80, 53, 1203

# ---------------------------------------------------------------------------- keypoint datasets
#: MPII Human Pose's 16 joints in the order of its annotation files (and mmpose's JSON).
MPII_KEYPOINT_NAMES: list[str] = [
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
]  # fmt: skip
#: MPII limbs (0-based joint pairs), as mmpose's ``configs/_base_/datasets/mpii.py``.
MPII_SKELETON: list[tuple[int, int]] = [
    (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (8, 12),
    (12, 11), (11, 10), (8, 13), (13, 14), (14, 15),
]  # fmt: skip
#: Per-joint sigmas mmpose gives MPII (for OKS-style scores; MPII itself reports PCKh).
MPII_KEYPOINT_SIGMAS: list[float] = [
    0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072,
    0.179, 0.179, 0.072, 0.062,
]  # fmt: skip

#: Left/right landmark pairs of the face-alignment sets (0-based; the ``swap`` entries of
#: mmpose's dataset configs): 300-W / iBUG 68 points, WFLW 98, COFW 29, AFLW 19.
FACE_FLIP_PAIRS: dict[str, list[tuple[int, int]]] = {
    "300w": [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [
        (31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
        (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)],
    "wflw": [(i, 32 - i) for i in range(16)] + [
        (33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48),
        (41, 47), (55, 59), (56, 58), (60, 72), (61, 71), (62, 70), (63, 69), (64, 68),
        (65, 75), (66, 74), (67, 73), (76, 82), (77, 81), (78, 80), (83, 87), (84, 86),
        (88, 92), (89, 91), (93, 95), (96, 97)],
    "cofw": [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17),
             (18, 19), (22, 23)],
    "aflw": [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)],
}  # fmt: skip
#: Landmark count of each face set.
FACE_NUM_LANDMARKS: dict[str, int] = {"300w": 68, "wflw": 98, "cofw": 29, "aflw": 19}
#: The NME normaliser of each face set: a landmark pair (300-W and WFLW outer eye corners,
#: COFW pupils) or the name of the annotation field holding the length (AFLW's ``box_size``).
FACE_NME_NORM: dict[str, tuple[int, int] | str] = {
    "300w": (36, 45), "wflw": (60, 72), "cofw": (8, 9), "aflw": "box_size",
}
