"""Top-down keypoint heads: Gaussian heatmaps (Stacked Hourglass, SimpleBaseline) and direct
coordinate regression, on any backbone.

Every head follows the head API: ``forward(features) -> raw``, ``loss(raw, targets,
input_size) -> dict``, ``predict(raw, input_size) -> (keypoints, scores)``, plus
``merge_flip(raw, raw_of_mirrored_input, flip_permutation)`` for the flip test. Coordinates are
in the continuous pixel frame of the network input (``lightning_seg.ops.heatmaps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_seg.models.assigners.heatmap import GaussianHeatmapTargets, stack_one
from lightning_seg.models.losses.keypoints import (
    coordinate_weights,
    weighted_coordinate_loss,
    weighted_heatmap_mse,
)
from lightning_seg.ops.heatmaps import (
    DECODERS,
    Decoder,
    Encoding,
    decode_heatmaps,
    flip_back_heatmaps,
    grid_to_input,
)
from lightning_seg.structures import KeypointTargets
from lightning_seg.structures.dataset_info import require_fact
from lightning_seg.structures.specs import FeatureShapes


@dataclass
class HeatmapOutput:
    """Raw output of a heatmap head.

    Attributes:
        heatmaps: one ``Tensor[B, K, h, w]`` per supervised output (per stack of a Stacked
            Hourglass; one for SimpleBaseline); the last is the prediction.
        stride: input pixels per heatmap cell.
    """

    heatmaps: list[Tensor]
    stride: int


@dataclass
class RegressionOutput:
    """Raw output of a regression head: ``coords`` ``Tensor[B, K, 2]``, keypoints as fractions
    of the input width and height (``(x / W, y / H)``)."""

    coords: Tensor


class HeatmapHeadBase(nn.Module):
    """Loss, decoding and flip merging shared by heatmap heads.

    Args:
        num_keypoints: K (filled from the dataset).
        sigma: target Gaussian sigma in output cells.
        encoding: target encoding, ``"msra"``, ``"hourglass"`` or ``"unbiased"``
            (``lightning_seg.ops.heatmaps``).
        kernel_size: the official Hourglass kernel size (``encoding="hourglass"``).
        decoder: ``"argmax"``, ``"quarter"`` (the paper's quarter-cell shift), ``"dark"`` or
            ``"soft_argmax"``.
        dark_blur_sigma: Gaussian blur before DARK's Taylor step (the paper: the training
            sigma); None uses ``sigma``.
        soft_argmax_beta: inverse temperature of ``"soft_argmax"``.
        soft_argmax_window: cells around the arg-max that ``"soft_argmax"`` averages over
            (None: the whole map). The default 6 is 3 sigma of the default targets.
        loss_weight: multiplier of every heatmap term.
    """

    def __init__(
        self,
        num_keypoints: int | None = None,
        sigma: float = 2.0,
        encoding: Encoding = "msra",
        kernel_size: int = 7,
        decoder: Decoder = "quarter",
        dark_blur_sigma: float | None = None,
        soft_argmax_beta: float = 10.0,
        soft_argmax_window: int | None = 6,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_keypoints = int(require_fact(num_keypoints, "num_keypoints", type(self).__name__))
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.targets = GaussianHeatmapTargets(sigma, encoding, kernel_size)
        self.decoder = decoder
        self.dark_blur_sigma = sigma if dark_blur_sigma is None else float(dark_blur_sigma)
        self.soft_argmax_beta = soft_argmax_beta
        self.soft_argmax_window = soft_argmax_window
        self.loss_weight = loss_weight

    def loss_names(self, num_outputs: int) -> list[str]:
        """Names of the loss terms of ``num_outputs`` supervised outputs."""
        return ["loss_heatmap"] if num_outputs == 1 else [f"loss_heatmap_s{i}" for i in range(num_outputs)]

    def supervised(self, raw: HeatmapOutput) -> list[tuple[str, Tensor]]:
        """The outputs that get a loss, with their term names (every output by default)."""
        return list(zip(self.loss_names(len(raw.heatmaps)), raw.heatmaps))

    def loss(
        self, raw: HeatmapOutput, targets: Sequence[KeypointTargets], input_size: Sequence[int]
    ) -> dict[str, Tensor]:
        """Weighted MSE of every supervised output against the same Gaussian targets.

        Args:
            raw: the head's output.
            targets: one ``KeypointTargets`` per sample (one instance each, input frame).
            input_size: ``(H, W)`` of the network input (unused: the grid is the output's).
        """
        final = raw.heatmaps[-1]
        heatmaps, weights = self.targets(targets, final.shape[-2:], raw.stride)
        heatmaps, weights = heatmaps.to(final.device), weights.to(final.device)
        return {
            name: self.loss_weight * weighted_heatmap_mse(pred, heatmaps, weights)
            for name, pred in self.supervised(raw)
        }

    def predict(self, raw: HeatmapOutput, input_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Decode the last output: ``Tensor[B, K, 2]`` input-frame ``(x, y)`` and
        ``Tensor[B, K]`` scores (the heatmap maxima)."""
        coords, scores = decode_heatmaps(
            raw.heatmaps[-1], self.decoder, blur_sigma=self.dark_blur_sigma,
            beta=self.soft_argmax_beta, window=self.soft_argmax_window,
        )
        return grid_to_input(coords, raw.stride), scores

    def merge_flip(
        self, raw: HeatmapOutput, flipped: HeatmapOutput, flip_permutation: Sequence[int]
    ) -> HeatmapOutput:
        """The flip test: the last heatmaps averaged with those of the mirrored input, mapped
        back (columns reversed, left/right swapped)."""
        back = flip_back_heatmaps(flipped.heatmaps[-1], flip_permutation)
        return HeatmapOutput([*raw.heatmaps[:-1], (raw.heatmaps[-1] + back) / 2], raw.stride)


class HourglassHeatmapHead(HeatmapHeadBase):
    """Per-stack heatmaps of a Stacked Hourglass with intermediate supervision (Newell et al.).

    Each stack ``i`` predicts K heatmaps with a 1x1 conv of its features; ``remap(i, h)`` maps
    them back to the feature width with another 1x1 conv, which ``StackedHourglass`` adds to the
    next stack's input. Every stack is supervised with the same targets (the official
    ``ParallelCriterion`` of MSE terms of weight 1), or only the last one with
    ``intermediate_supervision=False`` (the paper's ablation).

    Args:
        input_shape: the backbone's shapes ``{"s0": ..., "s<n-1>": ...}``.
        num_keypoints: K (filled from the dataset).
        intermediate_supervision: supervise every stack (True, the paper) or the last only.
        sigma, encoding, kernel_size, decoder, dark_blur_sigma, soft_argmax_beta,
            soft_argmax_window, loss_weight: see ``HeatmapHeadBase``. The defaults are the
            official code's: the 7 x 7 Torch Gaussian (sigma 1.75) and the quarter shift.

    Loss terms: ``loss_heatmap_s0`` .. ``loss_heatmap_s<n-1>`` (only the last one without
    intermediate supervision).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_keypoints: int | None = None,
        intermediate_supervision: bool = True,
        sigma: float = 1.75,
        encoding: Encoding = "hourglass",
        kernel_size: int = 7,
        decoder: Decoder = "quarter",
        dark_blur_sigma: float | None = None,
        soft_argmax_beta: float = 10.0,
        soft_argmax_window: int | None = 6,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(num_keypoints, sigma, encoding, kernel_size, decoder, dark_blur_sigma,
                         soft_argmax_beta, soft_argmax_window, loss_weight)
        levels = sorted(input_shape, key=lambda name: int(name.lstrip("s")))
        if not levels or any(not name.startswith("s") for name in levels):
            raise ValueError(
                f"HourglassHeatmapHead reads the stacks 's0'.. of an HourglassBackbone, got "
                f"{list(input_shape)}"
            )
        strides = {input_shape[name].stride for name in levels}
        if len(strides) != 1:
            raise ValueError(f"every stack must have the same stride, got {sorted(strides)}")
        self.levels = levels
        self.stride = strides.pop()
        self.intermediate_supervision = intermediate_supervision
        k = self.num_keypoints
        self.outputs = nn.ModuleList(nn.Conv2d(input_shape[n].channels, k, 1) for n in levels)
        self.remaps = nn.ModuleList(nn.Conv2d(k, input_shape[n].channels, 1) for n in levels[:-1])

    @property
    def num_stacks(self) -> int:
        return len(self.levels)

    def stack_heatmaps(self, i: int, features: Tensor) -> Tensor:
        """``Tensor[B, K, h, w]`` heatmaps of stack ``i`` from its features."""
        return self.outputs[i](features)

    def remap(self, i: int, heatmaps: Tensor) -> Tensor:
        """Stack ``i``'s heatmaps mapped to the feature width (added to stack ``i + 1``)."""
        return self.remaps[i](heatmaps)

    def forward(self, features: dict[str, Tensor]) -> HeatmapOutput:
        """Heatmaps of every stack from already computed features (without re-injection)."""
        return HeatmapOutput(
            [self.stack_heatmaps(i, features[n]) for i, n in enumerate(self.levels)], self.stride
        )

    def supervised(self, raw: HeatmapOutput) -> list[tuple[str, Tensor]]:
        names = [f"loss_heatmap_s{i}" for i in range(len(raw.heatmaps))]
        pairs = list(zip(names, raw.heatmaps))
        return pairs if self.intermediate_supervision else pairs[-1:]


class SimpleBaselineHead(HeatmapHeadBase):
    """Deconvolution head of SimpleBaseline (Xiao et al., "Simple Baselines for Human Pose
    Estimation and Tracking", ECCV 2018): 3 x (4x4 deconv stride 2, 256, BN, ReLU) on the last
    backbone level, then a 1x1 conv to K heatmaps (stride 4 on a ResNet's ``c5``).

    Args:
        input_shape: the backbone's shapes.
        num_keypoints: K (filled from the dataset).
        in_feature: the level it reads (``c5``).
        num_deconv_layers: deconvolutions (3).
        deconv_channels: their width (256).
        deconv_kernel: their kernel size (4; 2 and 3 are also valid).
        final_kernel: kernel of the last conv (1).
        sigma, encoding, kernel_size, decoder, dark_blur_sigma, soft_argmax_beta,
            soft_argmax_window, loss_weight: see ``HeatmapHeadBase`` (SimpleBaseline: sigma 2,
            ``msra`` targets, quarter shift).

    Loss term: ``loss_heatmap``.
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_keypoints: int | None = None,
        in_feature: str = "c5",
        num_deconv_layers: int = 3,
        deconv_channels: int = 256,
        deconv_kernel: int = 4,
        final_kernel: int = 1,
        sigma: float = 2.0,
        encoding: Encoding = "msra",
        kernel_size: int = 7,
        decoder: Decoder = "quarter",
        dark_blur_sigma: float | None = None,
        soft_argmax_beta: float = 10.0,
        soft_argmax_window: int | None = 6,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__(num_keypoints, sigma, encoding, kernel_size, decoder, dark_blur_sigma,
                         soft_argmax_beta, soft_argmax_window, loss_weight)
        if in_feature not in input_shape:
            raise ValueError(f"in_feature {in_feature!r} is not a backbone level ({list(input_shape)})")
        padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}.get(deconv_kernel, (None, None))
        if padding is None:
            raise ValueError(f"deconv_kernel must be 2, 3 or 4, got {deconv_kernel}")
        self.in_feature = in_feature
        layers: list[nn.Module] = []
        channels = input_shape[in_feature].channels
        for _ in range(num_deconv_layers):
            layers += [
                nn.ConvTranspose2d(channels, deconv_channels, deconv_kernel, stride=2,
                                   padding=padding, output_padding=output_padding, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = deconv_channels
        self.deconvs = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, self.num_keypoints, final_kernel, padding=final_kernel // 2)
        self.stride = input_shape[in_feature].stride // 2**num_deconv_layers
        if self.stride < 1:
            raise ValueError(f"{num_deconv_layers} deconvolutions overshoot stride {input_shape[in_feature].stride}")
        for m in self.deconvs.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, features: dict[str, Tensor]) -> HeatmapOutput:
        return HeatmapOutput([self.final(self.deconvs(features[self.in_feature]))], self.stride)


class RegressionHead(nn.Module):
    """Direct coordinate regression (DeepPose, Toshev and Szegedy, CVPR 2014; mmpose's
    ``RegressionHead``): global average pooling of the last level and a linear layer to
    ``2 K`` numbers, the keypoints as fractions of the input size.

    The baseline that heatmap regression is compared with ("heatmaps beat direct regression").

    Args:
        input_shape: the backbone's shapes.
        num_keypoints: K (filled from the dataset).
        in_feature: the level it reads (``c5``).
        loss: ``"l1"`` (mmpose's regression baseline), ``"smooth_l1"`` or ``"mse"``
            (DeepPose's L2).
        loss_weight: multiplier of the term.

    Loss term: ``loss_coord``. Keypoint scores are 1 (regression has no confidence).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_keypoints: int | None = None,
        in_feature: str = "c5",
        loss: str = "l1",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_keypoints = int(require_fact(num_keypoints, "num_keypoints", type(self).__name__))
        if in_feature not in input_shape:
            raise ValueError(f"in_feature {in_feature!r} is not a backbone level ({list(input_shape)})")
        if loss not in ("l1", "smooth_l1", "mse"):
            raise ValueError(f"loss must be 'l1', 'smooth_l1' or 'mse', got {loss!r}")
        self.in_feature = in_feature
        self.loss_kind = loss
        self.loss_weight = loss_weight
        self.fc = nn.Linear(input_shape[in_feature].channels, 2 * self.num_keypoints)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.constant_(self.fc.bias, 0.5)  # start at the centre of the crop

    def forward(self, features: dict[str, Tensor]) -> RegressionOutput:
        pooled = features[self.in_feature].mean(dim=(-2, -1))  # [B, C]
        return RegressionOutput(self.fc(pooled).view(-1, self.num_keypoints, 2))  # [B, K, 2]

    def loss(
        self, raw: RegressionOutput, targets: Sequence[KeypointTargets], input_size: Sequence[int]
    ) -> dict[str, Tensor]:
        h, w = int(input_size[0]), int(input_size[1])
        keypoints = torch.cat([stack_one(t) for t in targets]).to(raw.coords.device)  # [B, K, 3]
        weights = coordinate_weights(keypoints, (h, w))
        scale = keypoints.new_tensor([w, h])
        target = torch.nan_to_num(keypoints[..., :2] / scale) * (weights[..., None] > 0)
        loss = weighted_coordinate_loss(raw.coords, target, weights, self.loss_kind)
        return {"loss_coord": self.loss_weight * loss}

    def predict(self, raw: RegressionOutput, input_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        h, w = int(input_size[0]), int(input_size[1])
        coords = raw.coords.detach().float() * raw.coords.new_tensor([w, h]).float()
        return coords, torch.ones(coords.shape[:2], device=coords.device)

    def merge_flip(
        self, raw: RegressionOutput, flipped: RegressionOutput, flip_permutation: Sequence[int]
    ) -> RegressionOutput:
        perm = torch.as_tensor(list(flip_permutation), dtype=torch.long, device=raw.coords.device)
        back = flipped.coords[:, perm].clone()
        back[..., 0] = 1.0 - back[..., 0]
        return RegressionOutput((raw.coords + back) / 2)
