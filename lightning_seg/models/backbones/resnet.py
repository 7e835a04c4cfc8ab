"""ResNet backbone (He et al., CVPR 2016) on torchvision's implementation, with atrous
output stride (DeepLab), multi-grid rates, frozen BatchNorm and frozen stages (detectron2).

State-dict key layout: the torchvision ResNet modules are direct children with their
torchvision names, so a ``torchvision.models.resnetXX().state_dict()`` maps 1:1::

    conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
    layer1.0.conv1.weight, layer1.0.bn1.*, ..., layer1.0.downsample.0.weight,
    layer1.0.downsample.1.*, ..., layer4.2.bn3.*

``fc.*`` (the classifier) is not kept, nor are the layers deeper than the deepest requested
feature (``out_features=("c2", "c3")`` drops ``layer3``/``layer4``). Torchvision's detection
models prefix these keys with ``backbone.body.``, its segmentation models with ``backbone.``.

Deformable stages (``deform_stages``, YOLACT++ / DCNv2): the 3x3 conv of a chosen block becomes
a ``lightning_seg.layers.DeformConv2d`` (on ``torchvision.ops.deform_conv2d``, no compiled
extension) with the same ``weight`` key, plus ``conv2.bias`` and the zero-initialised offset
branch ``conv2.offset.{weight,bias}``; ImageNet weights load into ``weight`` and the block starts
as the plain convolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from lightning_seg.layers.deform import DeformConv2d
from lightning_seg.layers.norm import freeze_batchnorm
from lightning_seg.models.weights import load_checkpoint_file, torchvision_weights
from lightning_seg.structures.specs import FeatureShapesMixin

_DEPTHS = (18, 34, 50, 101, 152)
_LEVELS = ("c2", "c3", "c4", "c5")
_LAYER_OF = {"c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"}


def _set_conv_dilation(conv: nn.Conv2d, dilation: int) -> None:
    """Make a ``k x k`` conv atrous with "same" padding and stride 1 (in place)."""
    k = conv.kernel_size[0]
    conv.stride = (1, 1)
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (k - 1) // 2, dilation * (k - 1) // 2)


def _deformable(conv: nn.Conv2d, modulated: bool) -> DeformConv2d:
    """A ``DeformConv2d`` with the geometry and the weights of ``conv`` (bias 0)."""
    if conv.groups != 1:
        raise ValueError("deformable ResNet stages need ungrouped 3x3 convs (no ResNeXt)")
    deform = DeformConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
        padding=conv.padding[0], dilation=conv.dilation[0], bias=True, modulated=modulated,
    )
    deform.weight.data.copy_(conv.weight.data)
    nn.init.zeros_(deform.bias)
    return deform


def _dilate_layer(layer: nn.Sequential, dilations: Sequence[int]) -> None:
    """Remove the stride of a ResNet stage and give block ``i`` the atrous rate ``dilations[i]``.

    Works for ``Bottleneck`` (stride and dilation on ``conv2``) and ``BasicBlock`` (both 3x3
    convs dilated; torchvision refuses dilation there, the maths is the same).
    """
    for block, rate in zip(layer, dilations, strict=True):
        if isinstance(block, Bottleneck):
            _set_conv_dilation(block.conv2, rate)
        elif isinstance(block, BasicBlock):
            _set_conv_dilation(block.conv1, rate)
            _set_conv_dilation(block.conv2, rate)
        else:  # pragma: no cover - torchvision ResNets only hold these two
            raise TypeError(f"unexpected ResNet block {type(block).__name__}")
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class ResNetBackbone(FeatureShapesMixin, nn.Module):
    """Torchvision ResNet-18/34/50/101/152 returning the stage outputs ``c2..c5``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        weights: name of a torchvision ``ResNet{depth}_Weights`` member (e.g. ``"IMAGENET1K_V1"``,
            downloaded by torchvision), or None for random init.
        weights_path: local checkpoint of a torchvision ResNet (a state dict, or a dict holding
            one under ``"state_dict"`` or ``"model"``); loaded after ``weights``.
        out_features: which of ``"c2".."c5"`` to return; stages deeper than the deepest one
            are not built.
        output_stride: 32 (plain), 16 (``layer4`` atrous) or 8 (``layer3`` and ``layer4``
            atrous), as DeepLab.
        multi_grid: DeepLab v3 unit rates of the blocks of ``layer4`` (e.g. ``(1, 2, 4)``):
            block ``i`` gets rate ``layer4_rate * multi_grid[i]``. None keeps torchvision's
            rates (first block of an atrous stage keeps the previous rate).
        frozen_bn: replace every BatchNorm by ``torchvision.ops.FrozenBatchNorm2d``.
        freeze_at: 0 trains everything; 1 freezes the stem (conv1, bn1); 2 the stem and
            ``layer1`` (res2); ... 5 everything (detectron2's ``FREEZE_AT``). Frozen stages
            also get frozen BatchNorm.
        num_blocks: blocks per stage overriding the depth's (e.g. ``(1, 1, 1, 1)`` for a tiny
            BasicBlock "ResNet-10" in tests); pretrained weights then no longer fit.
        deform_stages: levels (``"c3"``, ``"c4"``, ``"c5"``...) whose blocks get a deformable
            3x3 conv (the Bottleneck's ``conv2``, the BasicBlock's second conv); YOLACT++:
            ``("c3", "c4", "c5")``.
        deform_interval: in those stages, block ``i`` is deformable when ``i % deform_interval
            == 0`` (YOLACT++ R50: 1, every block; R101: 3, blocks 0, 3, 6...).
        deform_modulated: DCNv2 (modulated, YOLACT++) rather than DCNv1.

    Attributes:
        out_channels: level -> channels (R50: c2 256, c3 512, c4 1024, c5 2048; R18: 64..512).
        strides: level -> stride w.r.t. the input (4, 8, 16, 32 at output stride 32).

    Shapes:
        ``forward(Tensor[B, 3, H, W])`` (already normalised) ``-> {level: Tensor[B, C_l,
        ceil(H / s_l), ceil(W / s_l)]}``.
    """

    def __init__(
        self,
        depth: int = 50,
        weights: str | None = None,
        weights_path: str | Path | None = None,
        out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
        frozen_bn: bool = False,
        freeze_at: int = 0,
        num_blocks: Sequence[int] | None = None,
        deform_stages: Sequence[str] = (),
        deform_interval: int = 1,
        deform_modulated: bool = True,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {_DEPTHS}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5 (0 = train all), got {freeze_at}")
        out_features = tuple(out_features)
        unknown = [f for f in out_features if f not in _LEVELS]
        if unknown or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {_LEVELS}, got {out_features}")
        self.depth = depth
        self.out_features = tuple(f for f in _LEVELS if f in out_features)
        self.output_stride = output_stride

        norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        if num_blocks is None:
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm_layer)
        else:
            if len(num_blocks) != 4:
                raise ValueError(f"num_blocks needs 4 entries (one per stage), got {tuple(num_blocks)}")
            block = Bottleneck if depth >= 50 else BasicBlock
            net = torchvision.models.resnet.ResNet(block, list(num_blocks), norm_layer=norm_layer)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        num_stages = _LEVELS.index(self.out_features[-1]) + 1
        self._stage_names = [f"layer{i + 1}" for i in range(num_stages)]
        for name in self._stage_names:
            setattr(self, name, getattr(net, name))

        expansion = 4 if depth >= 50 else 1
        widths = {"c2": 64, "c3": 128, "c4": 256, "c5": 512}
        self.out_channels: dict[str, int] = {f: widths[f] * expansion for f in self.out_features}
        all_strides = {"c2": 4, "c3": 8, "c4": min(16, output_stride), "c5": output_stride}
        self.strides: dict[str, int] = {f: all_strides[f] for f in self.out_features}

        self._make_atrous(output_stride, multi_grid)
        self._make_deformable(tuple(deform_stages), deform_interval, deform_modulated)

        if weights is not None:
            self.load_torchvision_state_dict(torchvision_weights(f"resnet{depth}", weights))
        if weights_path is not None:
            self.load_torchvision_state_dict(load_checkpoint_file(weights_path, "weights_path"))

        self.freeze_at = freeze_at
        self._freeze(freeze_at)

    def _make_atrous(self, output_stride: int, multi_grid: Sequence[int] | None) -> None:
        """Replace strides by dilation in ``layer3``/``layer4`` to reach ``output_stride``."""
        rate = 1
        for name, dilate in (("layer3", output_stride <= 8), ("layer4", output_stride <= 16)):
            if not hasattr(self, name):
                continue
            layer: nn.Sequential = getattr(self, name)
            previous = rate
            if dilate:
                rate *= 2
            if name == "layer4" and multi_grid is not None:
                if len(multi_grid) != len(layer):
                    raise ValueError(
                        f"multi_grid needs one rate per block of layer4 ({len(layer)}), got {tuple(multi_grid)}"
                    )
                if dilate:
                    _dilate_layer(layer, [rate * m for m in multi_grid])
                else:
                    self._multi_grid_stride32(layer, multi_grid)
            elif dilate:
                _dilate_layer(layer, [previous] + [rate] * (len(layer) - 1))
        if multi_grid is not None and not hasattr(self, "layer4"):
            raise ValueError("multi_grid applies to layer4: add 'c5' to out_features")

    def _make_deformable(self, stages: Sequence[str], interval: int, modulated: bool) -> None:
        """Swap the 3x3 conv of every ``interval``-th block of ``stages`` for a deformable one."""
        bad = [f for f in stages if f not in _LEVELS or not hasattr(self, _LAYER_OF[f])]
        if bad:
            raise ValueError(
                f"deform_stages {bad} are not built stages of this ResNet (built: "
                f"{_LEVELS[: len(self._stage_names)]}); use levels up to the deepest out_features"
            )
        if interval < 1:
            raise ValueError(f"deform_interval must be >= 1, got {interval}")
        self.deform_stages = tuple(stages)
        for level in self.deform_stages:
            for i, block in enumerate(getattr(self, _LAYER_OF[level])):
                if i % interval == 0:
                    block.conv2 = _deformable(block.conv2, modulated)

    @staticmethod
    def _multi_grid_stride32(layer: nn.Sequential, multi_grid: Sequence[int]) -> None:
        """Multi-grid at output stride 32: keep the first block's stride, dilate the 3x3 convs."""
        for block, m in zip(layer, multi_grid, strict=True):
            convs = [block.conv2] if isinstance(block, Bottleneck) else [block.conv1, block.conv2]
            for conv in convs:
                stride = conv.stride
                _set_conv_dilation(conv, m)
                conv.stride = stride

    def _freeze(self, freeze_at: int) -> None:
        stages: list[list[nn.Module]] = [[self.conv1, self.bn1]] + [
            [getattr(self, n)] for n in self._stage_names
        ]
        for modules in stages[:freeze_at]:
            for module in modules:
                for p in module.parameters():
                    p.requires_grad_(False)
        if freeze_at >= 1:
            self.bn1 = freeze_batchnorm(self.bn1)
        for name in self._stage_names[: max(freeze_at - 1, 0)]:
            setattr(self, name, freeze_batchnorm(getattr(self, name)))

    def load_torchvision_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load the weights of a torchvision ResNet (``fc.*`` and unbuilt stages are dropped).

        Raises:
            KeyError: when keys of this backbone are missing or unknown keys remain; the
                message lists them (e.g. a detection checkpoint needs its ``backbone.body.``
                prefix stripped first).
        """
        if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
            state_dict = state_dict["state_dict"]
        elif "model" in state_dict and isinstance(state_dict["model"], Mapping):
            state_dict = state_dict["model"]
        own = self.state_dict()
        dropped_prefixes = ("fc.",) + tuple(
            f"layer{i}." for i in range(len(self._stage_names) + 1, 5)
        )
        kept = {k: v for k, v in state_dict.items() if not k.startswith(dropped_prefixes)}
        kept = {k: v for k, v in kept.items() if k in own or not k.endswith("num_batches_tracked")}
        missing = sorted(
            k for k in own
            if k not in kept and not k.endswith("num_batches_tracked") and not self._deform_extra(k)
        )
        unexpected = sorted(k for k in kept if k not in own)
        if missing or unexpected:
            raise KeyError(
                f"ResNet{self.depth} checkpoint does not match torchvision's key layout: "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} ({len(unexpected)}). "
                f"Strip prefixes such as 'backbone.body.' or 'module.' before loading."
            )
        self.load_state_dict(kept, strict=False)

    def _deform_extra(self, key: str) -> bool:
        """Whether ``key`` is a parameter a deformable conv adds to a torchvision ResNet (its
        bias and offset branch, which start at zero)."""
        module_name, _, param = key.rpartition(".")
        module = self.get_submodule(module_name) if module_name else self
        if isinstance(module, DeformConv2d):
            return param == "bias"
        parent_name = module_name.rpartition(".")[0]
        return parent_name != "" and isinstance(self.get_submodule(parent_name), DeformConv2d)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args:
            x: ``Tensor[B, 3, H, W]`` normalised images.

        Returns:
            ``{level: Tensor[B, out_channels[level], H / strides[level], W / strides[level]]}``
            for the levels of ``out_features`` (sizes rounded up).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, Tensor] = {}
        for level, name in zip(_LEVELS, self._stage_names):
            x = getattr(self, name)(x)
            if level in self.out_features:
                out[level] = x
        return out
