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
