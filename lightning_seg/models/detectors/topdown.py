"""Top-down keypoint networks: Stacked Hourglass, SimpleBaseline, coordinate regression.

A top-down network sees one instance per sample, cut out of its image by the data
(``lightning_seg.data.topdown.TopDownAffine``; ``SampleMeta.crop`` records the crop), and
predicts its K keypoints. Wiring only: the backbone computes features, the head heatmaps or
coordinates (``lightning_seg.models.heads.keypoints``), the maths of decoding and of the flip
test is in ``lightning_seg.ops.heatmaps``, mapping back in ``models.postprocess.keypoints``.

Train (``train()`` mode): ``forward(batch)`` returns the head's loss terms
(``loss_heatmap_s0`` .. for a Stacked Hourglass, ``loss_heatmap`` for SimpleBaseline,
``loss_coord`` for regression); ``batch.keypoints`` hold one instance per sample in the input
frame.

Eval (``eval()`` mode): one ``KeypointPredictions`` per sample with its instance, in the frame
of the image on disk (``meta.orig_size``): keypoints ``(x, y, score)`` mapped through the
inverse crop, the instance score (``instance_scores``), the crop window as the box and the
decoded heatmaps (heatmap heads). With ``flip_test`` the mirrored input is predicted too and
merged (heatmaps averaged after flipping back with the dataset's left/right map).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from lightning_seg.models.backbones.hourglass import HourglassBackbone, stacked_hourglass_backbone
from lightning_seg.models.backbones.resnet import ResNetBackbone
from lightning_seg.models.heads.keypoints import (
    HeatmapOutput,
    HourglassHeatmapHead,
    RegressionHead,
    SimpleBaselineHead,
)
from lightning_seg.models.parts import PartFactory, build_part
from lightning_seg.models.postprocess.keypoints import instance_scores, to_original_frame
from lightning_seg.models.preprocess import ImagePreprocessor
from lightning_seg.structures import Batch, KeypointPredictions


def flip_permutation(num_keypoints: int, flip_map: Sequence[Sequence[int]]) -> list[int]:
    """Index permutation of a left/right flip map (pairs of keypoint indices)."""
    perm = list(range(num_keypoints))
    for pair in flip_map:
        i, j = int(pair[0]), int(pair[1])
        if not (0 <= i < num_keypoints and 0 <= j < num_keypoints):
            raise ValueError(f"keypoint_flip_map pair ({i}, {j}) is out of range for {num_keypoints} keypoints")
        perm[i], perm[j] = j, i
    return perm


class TopDownPoseNet(nn.Module):
    """Backbone + keypoint head, top-down (module docstring).

    Args:
        backbone: module with ``output_shape()``; ``forward(Tensor[B, 3, H, W]) -> {level:
            Tensor}`` on normalised images.
        head: a keypoint head (callable of the backbone's shapes, or a module):
            ``SimpleBaselineHead``, ``RegressionHead``, ``HourglassHeatmapHead``.
        preprocessor: normalisation and padding; None: ImageNet mean/std, size divisibility 32.
        keypoint_flip_map: left/right keypoint pairs (filled from the dataset); needed by the
            flip test.
        flip_test: also predict the mirrored input and merge (the papers' test protocol).
        keypoint_score_thresh: keypoint scores above it make the instance score (0.2).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: PartFactory,
        preprocessor: ImagePreprocessor | None = None,
        keypoint_flip_map: list[tuple[int, int]] | None = None,
        flip_test: bool = True,
        keypoint_score_thresh: float = 0.2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = build_part(head, backbone.output_shape())
        self.preprocessor = preprocessor or ImagePreprocessor(size_divisibility=32)
        self.flip_test = flip_test
        self.keypoint_flip_map = [tuple(p) for p in keypoint_flip_map or []]
        if flip_test and keypoint_flip_map is None:
            raise ValueError(
                f"{type(self).__name__}: flip_test needs keypoint_flip_map (filled from the "
                f"DataModule under `lseg`; pass [] for keypoints without left/right pairs)"
            )
        self.flip_permutation = flip_permutation(self.num_keypoints, self.keypoint_flip_map)
        self.keypoint_score_thresh = keypoint_score_thresh

    @property
    def num_keypoints(self) -> int:
        return self.head.num_keypoints

    def raw_outputs(self, images: Tensor):
        """The head's raw output for normalised images."""
        return self.head(self.backbone(images))

    def forward(self, batch: Batch) -> dict[str, Tensor] | list[KeypointPredictions]:
        """Losses in training mode, predictions in eval mode (see the module docstring)."""
        x = self.preprocessor(batch.images, batch.image_sizes)
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.training:
            if batch.keypoints is None:
                raise ValueError(
                    f"{type(self).__name__} in training mode needs batch.keypoints (a keypoint "
                    f"DataModule), or call .eval() to predict"
                )
            return self.head.loss(self.raw_outputs(x), batch.keypoints, input_size)
        raw = self.raw_outputs(x)
        if self.flip_test:
            raw = self.head.merge_flip(raw, self.raw_outputs(x.flip(-1)), self.flip_permutation)
        coords, scores = self.head.predict(raw, input_size)
        heatmaps = raw.heatmaps[-1] if isinstance(raw, HeatmapOutput) else None
        return self.postprocess(batch, coords, scores, heatmaps)

    def postprocess(
        self, batch: Batch, coords: Tensor, scores: Tensor, heatmaps: Tensor | None
    ) -> list[KeypointPredictions]:
        """One ``KeypointPredictions`` per sample in the frame of its image on disk.

        Args:
            batch: the batch predicted.
            coords: ``Tensor[B, K, 2]`` input-frame keypoints.
            scores: ``Tensor[B, K]`` keypoint scores.
            heatmaps: ``Tensor[B, K, h, w]`` decoded heatmaps, or None.
        """
        results = []
        for i, meta in enumerate(batch.meta):
            size = batch.image_sizes[i]
            xy = to_original_frame(coords[i].double(), meta, size).float()  # [K, 2]
            kpts = torch.cat([xy, scores[i, :, None].float()], dim=-1)[None]  # [1, K, 3]
            box_scores = None
            targets = batch.keypoints[i] if batch.keypoints is not None else None
            if targets is not None and targets.scores is not None and len(targets) == 1:
                box_scores = targets.scores.to(kpts.device)
            score = instance_scores(scores[i : i + 1].float(), box_scores, self.keypoint_score_thresh)
            if meta.crop is not None:
                box = meta.crop.window().to(kpts)[None]
            else:
                box = kpts.new_tensor([[0.0, 0.0, float(meta.orig_size[1]), float(meta.orig_size[0])]])
            results.append(
                KeypointPredictions(
                    keypoints=kpts,
                    scores=score,
                    image_size=(int(meta.orig_size[0]), int(meta.orig_size[1])),
                    boxes=box,
                    heatmaps=None if heatmaps is None else heatmaps[i : i + 1].detach(),
                )
            )
        return results


class StackedHourglass(TopDownPoseNet):
    """Stacked Hourglass network (Newell et al., "Stacked Hourglass Networks for Human Pose
    Estimation", ECCV 2016): an ``HourglassBackbone`` whose stacks each predict heatmaps with an
    ``HourglassHeatmapHead``; stack ``i``'s heatmaps, mapped back by a 1x1 conv, are added to
    stack ``i + 1``'s input (re-injection), and every stack is supervised (intermediate
    supervision, switchable on the head).

    Args:
        backbone: an ``HourglassBackbone`` (``style="newell"``).
        head: an ``HourglassHeatmapHead`` (callable of the backbone's shapes, or a module).
        preprocessor: None: ImageNet mean/std and the backbone's size divisibility (64).
        keypoint_flip_map, flip_test, keypoint_score_thresh: see ``TopDownPoseNet``.
    """

    def __init__(
        self,
        backbone: HourglassBackbone,
        head: PartFactory,
        preprocessor: ImagePreprocessor | None = None,
        keypoint_flip_map: list[tuple[int, int]] | None = None,
        flip_test: bool = True,
        keypoint_score_thresh: float = 0.2,
    ) -> None:
        if not isinstance(backbone, HourglassBackbone):
            raise TypeError(f"StackedHourglass needs an HourglassBackbone, got {type(backbone).__name__}")
        preprocessor = preprocessor or ImagePreprocessor(size_divisibility=backbone.size_divisibility)
        super().__init__(backbone, head, preprocessor, keypoint_flip_map, flip_test, keypoint_score_thresh)
        if not isinstance(self.head, HourglassHeatmapHead):
            raise TypeError(f"StackedHourglass needs an HourglassHeatmapHead, got {type(self.head).__name__}")

    def raw_outputs(self, images: Tensor) -> HeatmapOutput:
        heatmaps: list[Tensor] = []

        def inject(i: int, features: Tensor) -> Tensor:
            heatmaps.append(self.head.stack_heatmaps(i, features))
            return self.head.remap(i, heatmaps[-1])

        features = self.backbone(images, inject)
        last = self.head.levels[-1]
        heatmaps.append(self.head.stack_heatmaps(len(self.head.levels) - 1, features[last]))
        return HeatmapOutput(heatmaps, self.head.stride)


# ---------------------------------------------------------------------- builders
def stacked_hourglass(
    num_keypoints: int,
    keypoint_flip_map: list[tuple[int, int]],
    num_stacks: int = 8,
    intermediate_supervision: bool = True,
    **head_options,
) -> StackedHourglass:
    """Newell et al.'s network: ``num_stacks`` hourglasses of depth 4 and 256 features, the
    official 7 x 7 Gaussian targets and quarter-shift decoding (``HourglassHeatmapHead``
    arguments in ``head_options``). Equals ``experiments/models/hourglass_8stack.yaml`` with
    ``num_stacks=8``."""
    return StackedHourglass(
        stacked_hourglass_backbone(num_stacks),
        partial(HourglassHeatmapHead, num_keypoints=num_keypoints,
                intermediate_supervision=intermediate_supervision, **head_options),
        keypoint_flip_map=keypoint_flip_map,
    )


def simple_baseline_resnet(
    num_keypoints: int,
    keypoint_flip_map: list[tuple[int, int]],
    depth: int = 50,
    weights_backbone: str | None = None,
    **head_options,
) -> TopDownPoseNet:
    """SimpleBaseline (Xiao et al. 2018): ResNet + 3 deconvolutions + 1x1 conv, sigma-2
    heatmaps (``SimpleBaselineHead`` arguments in ``head_options``). Equals
    ``experiments/models/simplebaseline_r50.yaml`` with ``depth=50``."""
    return TopDownPoseNet(
        ResNetBackbone(depth=depth, weights=weights_backbone, out_features=("c5",)),
        partial(SimpleBaselineHead, num_keypoints=num_keypoints, **head_options),
        keypoint_flip_map=keypoint_flip_map,
    )


def regression_resnet(
    num_keypoints: int,
    keypoint_flip_map: list[tuple[int, int]],
    depth: int = 50,
    weights_backbone: str | None = None,
    **head_options,
) -> TopDownPoseNet:
    """Coordinate regression on the same ResNet (``RegressionHead`` arguments in
    ``head_options``). Equals ``experiments/models/regression_r50.yaml`` with ``depth=50``."""
    return TopDownPoseNet(
        ResNetBackbone(depth=depth, weights=weights_backbone, out_features=("c5",)),
        partial(RegressionHead, num_keypoints=num_keypoints, **head_options),
        keypoint_flip_map=keypoint_flip_map,
    )
