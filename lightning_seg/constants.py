"""Dataset constants, defined once: normalisation statistics, COCO's keypoint conventions."""

from __future__ import annotations

#: RGB mean and std of ImageNet for images in ``[0, 1]`` (torchvision's pretrained weights).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
