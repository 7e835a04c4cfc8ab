"""VGG16 backbone (Simonyan and Zisserman, ICLR 2015) as used by FCN (Long et al., CVPR 2015):
pool3 / pool4 / pool5 features and the classifier's fc6 / fc7 recast as convolutions.

State-dict key layout: ``features.<i>.*`` has torchvision's indices (conv, ReLU, ..., max
pool), so ``torchvision.models.vgg16().state_dict()`` maps 1:1 for the convolutions;
``fc6.weight`` is torchvision's ``classifier.0.weight`` reshaped to ``[4096, 512, 7, 7]`` and
``fc7.weight`` is ``classifier.3.weight`` reshaped to ``[4096, 4096, 1, 1]``
(``load_torchvision_state_dict`` does it).

Difference from the Caffe FCN: conv1_1 is padded by 1 (not 100) and fc6 by 3, so every
feature is exactly aligned when the input is a multiple of 32 (FCN pads to that inside and
crops back) and no crop offsets are needed.

DeepLab v1 (Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully
Connected CRFs", ICLR 2015) makes the same network atrous: ``output_stride=8`` turns pool4 and
pool5 into 3x3 / stride-1 poolings and dilates conv5 by 2 (the "hole" algorithm), and its
"LargeFOV" head is a 3x3 fc6 with dilation 12 and 1024 channels (``fc6_kernel_size=3,
fc6_dilation=12, fc_channels=1024``), all poolings 3x3 with padding 1 (``pool_kernel_size=3``).
ImageNet fc6 / fc7 weights are then decimated into the smaller layers as DeepLab does
(``load_torchvision_state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn

from lightning_seg.layers.conv import NativeBackwardConv2d
from lightning_seg.models.weights import load_checkpoint_file, torchvision_weights
from lightning_seg.structures.specs import FeatureShapesMixin

_LEVELS = ("pool1", "pool2", "pool3", "pool4", "pool5", "fc7")
_OUTPUT_STRIDES = (8, 16, 32)


def decimate_indices(size: int, keep: int) -> list[int]:
    """``keep`` evenly spread indices of ``range(size)``, the first and last included when
    ``keep > 1`` (DeepLab's decimation of fc6: 7x7 -> 3x3 keeps 0, 3, 6)."""
    if keep == 1:
        return [size // 2]
    return [round(i * (size - 1) / (keep - 1)) for i in range(keep)]


class VGGBackbone(FeatureShapesMixin, nn.Module):
    """VGG16 (configuration D) returning pooled stage outputs and optionally fc7.

    Args:
        stage_channels: output channels of the 5 stages (VGG16: 64, 128, 256, 512, 512).
        convs_per_stage: 3x3 convs per stage (VGG16: 2, 2, 3, 3, 3).
        fc_channels: width of fc6 / fc7 as convolutions (4096 in VGG16), or None to build
            neither (then ``"fc7"`` cannot be requested).
        fc6_kernel_size: kernel of fc6 (7 in VGG16, "same" padding; 3 in DeepLab-LargeFOV).
        fc6_dilation: atrous rate of fc6 (1; 12 in DeepLab-LargeFOV).
        fc_dropout: dropout after fc6 and fc7 (0.5 in VGG16 / FCN).
        output_stride: 32 (plain VGG), 16 (pool5 stride 1) or 8 (pool4 and pool5 stride 1,
            conv5 dilated 2: DeepLab v1). Stride-1 poolings are 3x3 with padding 1.
        pool_kernel_size: kernel of the stride-2 max poolings: 2 (VGG16, FCN) or 3 with
            padding 1 (DeepLab's Caffe model).
        batch_norm: add BatchNorm after every conv (torchvision's ``vgg16_bn`` layout).
        out_features: levels to return, among ``pool1..pool5`` and ``fc7``.
        weights: name of a torchvision ``VGG16_Weights`` member (``"IMAGENET1K_V1"``), or None.
        weights_path: local checkpoint of a torchvision VGG16 (state dict).

    Attributes:
        out_channels: level -> channels (pool3 256, pool4 512, pool5 512, fc7 4096 for VGG16).
        strides: level -> stride (pool3 8, pool4 16, pool5 32, fc7 32; with output stride 8:
            pool4, pool5 and fc7 8).

    Shapes:
        ``forward(Tensor[B, 3, H, W])`` (normalised) ``-> {level: Tensor[B, C_l, H // s_l, W // s_l]}``.
    """

    def __init__(
        self,
        stage_channels: Sequence[int] = (64, 128, 256, 512, 512),
        convs_per_stage: Sequence[int] = (2, 2, 3, 3, 3),
        fc_channels: int | None = 4096,
        fc6_kernel_size: int = 7,
        fc6_dilation: int = 1,
        fc_dropout: float = 0.5,
        output_stride: int = 32,
        pool_kernel_size: int = 2,
        batch_norm: bool = False,
        out_features: Sequence[str] = ("pool3", "pool4", "fc7"),
        weights: str | None = None,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if len(stage_channels) != 5 or len(convs_per_stage) != 5:
            raise ValueError("stage_channels and convs_per_stage need 5 entries (one per VGG stage)")
        out_features = tuple(out_features)
        bad = [f for f in out_features if f not in _LEVELS]
        if bad or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {_LEVELS}, got {out_features}")
        if "fc7" in out_features and fc_channels is None:
            raise ValueError("out_features has 'fc7' but fc_channels is None: set fc_channels (4096 in VGG16)")
        if output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {_OUTPUT_STRIDES}, got {output_stride}")
        if pool_kernel_size not in (2, 3):
            raise ValueError(f"pool_kernel_size must be 2 (VGG16) or 3 (DeepLab), got {pool_kernel_size}")
        self.out_features = tuple(f for f in _LEVELS if f in out_features)
        self.output_stride = output_stride

        layers: list[nn.Module] = []
        self._pool_index: dict[str, int] = {}
        self._all_strides: dict[str, int] = {}
        in_ch, stride, dilation = 3, 1, 1
        for stage, (ch, n) in enumerate(zip(stage_channels, convs_per_stage)):
            for _ in range(n):
                layers.append(nn.Conv2d(in_ch, ch, 3, padding=dilation, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(ch))
                layers.append(nn.ReLU(inplace=True))
                in_ch = ch
            if stride * 2 <= output_stride:  # a pooling that halves the map
                stride *= 2
                pad = 1 if pool_kernel_size == 3 else 0
                layers.append(nn.MaxPool2d(pool_kernel_size, 2, padding=pad))
            else:  # atrous: keep the resolution, dilate everything after (DeepLab's hole algorithm)
                dilation *= 2
                layers.append(nn.MaxPool2d(3, 1, padding=1))
            self._pool_index[f"pool{stage + 1}"] = len(layers) - 1
            self._all_strides[f"pool{stage + 1}"] = stride
        self._all_strides["fc7"] = stride
        uses_fc = "fc7" in self.out_features
        last_index = len(layers) - 1 if uses_fc else self._pool_index[self.out_features[-1]]
        # stages deeper than the deepest requested level are not built (no unused parameters)
        self.features = nn.Sequential(*layers[: last_index + 1])

        self.fc6: nn.Module | None = None
        self.fc7: nn.Module | None = None
        if uses_fc:
            # a plain Conv2d on GPUs; on the CPU its backward avoids a ~50x slow oneDNN path
            self.fc6 = NativeBackwardConv2d(
                in_ch, fc_channels, fc6_kernel_size, padding=fc6_dilation * (fc6_kernel_size // 2),
                dilation=fc6_dilation,
            )
            self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
            self.fc_act = nn.ReLU(inplace=True)
            self.fc_dropout = nn.Dropout(fc_dropout)
        all_channels = {f"pool{i + 1}": c for i, c in enumerate(stage_channels)}
        all_channels["fc7"] = fc_channels or 0
        self.out_channels: dict[str, int] = {f: all_channels[f] for f in self.out_features}
        self.strides: dict[str, int] = {f: self._all_strides[f] for f in self.out_features}

        if weights is not None:
            self.load_torchvision_state_dict(torchvision_weights("vgg16_bn" if batch_norm else "vgg16", weights))
        if weights_path is not None:
            self.load_torchvision_state_dict(load_checkpoint_file(weights_path, "weights_path"))

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load torchvision VGG16 weights; fc6 / fc7 come from ``classifier.0`` / ``classifier.3``.

        Layers this backbone does not build (deeper stages, fc8 = ``classifier.6``) are dropped.
        A smaller fc6 / fc7 (DeepLab-LargeFOV: 3x3, 1024 channels) receives the ImageNet layers
        decimated, as DeepLab initialises it: every ``4096 / fc_channels``-th filter (and input
        channel of fc7) and the kernel positions ``decimate_indices(7, k)`` of fc6.

        Raises:
            KeyError: naming the missing / unexpected keys when the layouts differ.
        """
        converted: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            if key.startswith("features."):
                if int(key.split(".")[1]) < len(self.features):
                    converted[key] = value
            elif self.fc6 is not None and key.startswith("classifier.0."):
                converted["fc6." + key.split(".")[-1]] = self._fit_fc(value, self.fc6, first=True)
            elif self.fc7 is not None and key.startswith("classifier.3."):
                converted["fc7." + key.split(".")[-1]] = self._fit_fc(value, self.fc7, first=False)
        result = self.load_state_dict(converted, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise KeyError(
                f"VGG16 checkpoint does not match: missing {result.missing_keys[:8]}, "
                f"unexpected {result.unexpected_keys[:8]} (is it a torchvision vgg16 state dict?)"
            )

    @staticmethod
    def _fit_fc(value: Tensor, layer: nn.Conv2d, first: bool) -> Tensor:
        """torchvision's ``classifier.0`` (``first``) / ``classifier.3`` weight or bias as
        ``layer`` takes it: reshaped to a conv, decimated when ``layer`` is smaller
        (DeepLab-LargeFOV: 4096 -> 1024 filters, fc6 kernel 7x7 -> 3x3)."""
        out_ch, in_ch, k_new = layer.weight.shape[0], layer.weight.shape[1], layer.weight.shape[-1]
        src = value.shape[0]
        if src % out_ch:
            raise KeyError(f"cannot decimate VGG16's {src}-wide fc layers to {out_ch} channels "
                           f"(fc_channels must divide {src})")
        step = src // out_ch
        if value.ndim == 1:  # bias
            return value[::step].contiguous()
        if first:
            k = round(math.sqrt(value.shape[1] / in_ch))
            weight = value.reshape(src, in_ch, k, k)[::step]  # Tensor[out, C_in, k, k]
            if k_new != k:
                if k_new > k:
                    raise KeyError(f"fc6 kernel {k_new} is larger than the checkpoint's {k}: nothing to decimate")
                idx = decimate_indices(k, k_new)
                weight = weight[:, :, idx][:, :, :, idx]  # Tensor[out, C_in, k_new, k_new]
        else:
            weight = value[::step, ::step].reshape(out_ch, in_ch, 1, 1)  # Tensor[out, in, 1, 1]
        return weight.contiguous()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args:
            x: ``Tensor[B, 3, H, W]`` normalised images.

        Returns:
            ``{level: Tensor[B, out_channels[level], H // strides[level], W // strides[level]]}``.
        """
        out: dict[str, Tensor] = {}
        wanted = {self._pool_index[f]: f for f in self.out_features if f != "fc7"}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        if self.fc6 is not None and self.fc7 is not None:
            x = self.fc_dropout(self.fc_act(self.fc6(x)))
            out["fc7"] = self.fc_dropout(self.fc_act(self.fc7(x)))
        return out
