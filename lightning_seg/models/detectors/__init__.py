"""Networks: wiring of parts (no maths), each following the contract of ``SemanticSegmentor``
(semantic) or ``MaskRCNN`` (instance): ``model(batch)`` gives loss terms in training mode and
typed predictions in eval mode."""

from lightning_seg.models.detectors.deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from lightning_seg.models.detectors.fcn import FCN
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.models.detectors.semantic import SemanticSegmentor
from lightning_seg.models.detectors.unet import UNet
from lightning_seg.models.detectors.yolact import Yolact

__all__ = ["FCN", "DeepLabV1", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "MaskRCNN", "SemanticSegmentor", "UNet",
           "Yolact"]
