"""RefineMask's mask head: multi-stage refinement with the Semantic Fusion Module and BAR.

Zhang et al., "RefineMask: Towards High-Quality Instance Segmentation with Fine-Grained
Features", CVPR 2021. Details follow the official implementation, zhanggang001/RefineMask @
633ed2b (``RefineMaskHead`` / ``SFMStage`` and ``SimpleRefineMaskHead`` / ``SimpleSFMStage`` in
``mask_heads/refine_mask_head.py``, ``RefineRoIHead.simple_test_mask``, ``RefineCrossEntropyLoss``
and the ``configs/refinemask/`` files); the code here is our own.

Network (defaults = the official COCO config)::

    RoIAlign 14x14 on P2..P5 -> 2 x (3x3 conv 256 + ReLU)                      x_0 [N, 256, 14, 14]
    stage s = 0, 1, 2 (sizes 14 -> 28 -> 56 -> 112, channels 256 -> 128 -> 64 -> 32):
        m_s   = 1x1 conv(x_s) -> K logits, the RoI's class channel               [N, 1, S, S]
        sem   = ReLU(1x1 conv(semantic features)) on the whole map, RoIAlign S x S, ReLU(1x1 conv)
        g_sem = RoIAlign S x S of sigmoid(semantic logits)
        y = ReLU(1x1 conv([x_s, sem, sigmoid(m_s), g_sem]))                   (to C_s channels)
        y = ReLU(merge(sum_d ReLU(3x3 conv, dilation d in 1/3/5)(y)))          SFM fusion
        y = ReLU(1x1 conv(y)) to C_s / 2 - 2 channels, bilinear x2
        x_{s+1} = [y, sigmoid(m_s) x2, g_sem x2]                              [N, C_s / 2, 2S, 2S]
    m_3 = 1x1 conv(x_3) -> K logits at 112, the RoI's class channel (class-agnostic for LVIS)

The class channel is picked by gathering each RoI's 1x1 weights (``Tensor[N, C]``) instead of
computing all ``K`` channels and indexing: same values and gradients, without a
``Tensor[N, K, 112, 112]`` (1203 classes on LVIS).

Loss (``RefineCrossEntropyLoss``): per stage, BCE against the ground-truth mask cropped with
aligned RoIAlign at the stage's size and binarised at 0.5; the first ``num_full_loss_stages`` (2:
14 and 28) on the whole RoI, the later ones only inside the boundary-aware region: the union of
the boundary regions (width 2) of the previous stage's refined binary prediction and of the
previous stage's target, upsampled (bilinear, ``>= 0.5``), averaged over its pixels; stage
weights 0.25 / 0.5 / 0.75 / 1.0, one term per stage (``loss_mask_s0`` ... ``loss_mask_s3``,
already weighted).

Inference (``RefineRoIHead.simple_test_mask``): start from the 28x28 stage (the 14x14 mask is
only supervised); each later stage overwrites only the boundary band (width 1) of the previous,
binarised, upsampled mask; the last map (112x112) is pasted. All RoIs of all images go through
together (the official code runs one image at a time at inference).

Options cover the paper's ablations and the official "faster-better" variant
(``r50-refinemask-1x-faster-better.py``); see ``RefineMaskHead``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from lightning_seg.models.heads.refine_mask_semantic import SemanticHeadOutput
from lightning_seg.ops.boundary import boundary_region, refine_with_boundary, upsample_region
from lightning_seg.ops.roi_align import MultiLevelRoIAlign, boxes_to_rois, pooled_channels
from lightning_seg.structures import FeatureShapes, InstanceTargets
from lightning_seg.structures.dataset_info import require_fact

FUSIONS = ("sfm", "concat", "sum")


@dataclass
class RefineMaskOutput:
    """Raw output of ``RefineMaskHead.forward``.

    Attributes:
        stage_logits: one ``Tensor[N, 1, S_s, S_s]`` per stage, coarse to fine (14, 28, 56,
            112 by default): the raw logits of each RoI's class channel, before any boundary
            overwrite (``RefineMaskHead.refined_logits`` applies it).
        rois: one ``Tensor[N_i, 4]`` x1y1x2y2 per image (input pixels), in the order of the
            rows of ``stage_logits``.
        labels: one ``Tensor[N_i]`` int64 per image, contiguous class ``0..K-1`` of each RoI.
        matched_idxs: one ``Tensor[N_i]`` int64 per image, index of the matched ground-truth
            instance; None at inference.
    """

    stage_logits: list[Tensor]
    rois: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor] | None = None


def class_logits(conv: nn.Conv2d, x: Tensor, labels: Tensor) -> Tensor:
    """The 1x1 convolution's output channel ``labels[n]`` for each RoI ``n``.

    Args:
        conv: ``Conv2d(C, K, 1)``.
        x: ``Tensor[N, C, S, S]``.
        labels: ``Tensor[N]`` int64 in ``0..K-1`` (all 0 for a class-agnostic ``K = 1``).

    Returns:
        ``Tensor[N, 1, S, S]``, equal to ``conv(x)[arange(N), labels][:, None]``.
    """
    weight = conv.weight[labels, :, 0, 0].to(x.dtype)  # [N, C]
    out = torch.einsum("nchw,nc->nhw", x, weight)  # [N, S, S]
    if conv.bias is not None:
        out = out + conv.bias[labels].to(out.dtype)[:, None, None]
    return out[:, None]  # [N, 1, S, S]


class MultiBranchFusion(nn.Module):
    """The SFM's fusion: parallel 3x3 convolutions with several dilations, summed, then 1x1.

    Args:
        channels: input = output channels.
        dilations: one branch per dilation (1, 3, 5), each ``3x3 conv + ReLU``.
        global_pool: also add the global average of the input (the "faster-better" variant's
            ``MultiBranchFusionAvg``).

    ``forward(Tensor[N, C, S, S]) -> Tensor[N, C, S, S]``; the merge conv has no activation
    (the stage applies a ReLU after it).
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 3, 5),
                 global_pool: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations
        )
        self.merge = nn.Conv2d(channels, channels, 1)
        self.global_pool = global_pool

    def forward(self, x: Tensor) -> Tensor:
        out = sum(F.relu(branch(x)) for branch in self.branches)
        if self.global_pool:
            out = out + x.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1] broadcast
        return self.merge(out)


class RefineStage(nn.Module):
    """One refinement stage: the stage's mask logits, the Semantic Fusion Module, 2x upsampling.

    Args:
        in_channels: ``C_s`` of the stage's instance features.
        out_channels: channels of the next stage's features (guides included).
        size: ``S`` of the stage (the RoIAlign size of the semantic inputs).
        num_classes: output channels of the stage's logits conv.
        semantic_channels: channels of the semantic head's features.
        semantic_stride: input pixels per semantic feature pixel (4).
        semantic_features: fuse RoIAligned semantic features.
        semantic_mask: fuse the RoIAligned semantic foreground probability as a guide.
        semantic_out_conv: a 1x1 conv + ReLU after the semantic RoIAlign (official; not in the
            faster-better stage).
        sampling_ratio: RoIAlign samples per bin side for the semantic inputs (0: adaptive).
        aligned: half-pixel-correct RoIAlign.
        fusion: ``"sfm"`` (concatenate, 1x1, multi-branch dilated fusion), ``"concat"``
            (concatenate, 1x1) or ``"sum"`` (add the semantic features to the instance
            features, concatenate the guides, 1x1).
        dilations: dilations of the SFM branches.
        fusion_global_pool: add the global average in the SFM (faster-better).
        guides_after_upsample: concatenate the guides to the upsampled features at the new
            size (official); False concatenates them before upsampling (faster-better).
        guide_sigmoid: guides are probabilities (official configs' ``mask_use_sigmoid=True``);
            False passes logits.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        num_classes: int,
        semantic_channels: int = 256,
        semantic_stride: int = 4,
        semantic_features: bool = True,
        semantic_mask: bool = True,
        semantic_out_conv: bool = True,
        sampling_ratio: int = 0,
        aligned: bool = True,
        fusion: str = "sfm",
        dilations: Sequence[int] = (1, 3, 5),
        fusion_global_pool: bool = False,
        guides_after_upsample: bool = True,
        guide_sigmoid: bool = True,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        num_guides = 1 + int(semantic_mask)
        if out_channels <= num_guides:
            raise ValueError(
                f"a stage needs more than {num_guides} output channels (the guides), got "
                f"{out_channels}; use more channels or fewer stages"
            )
        self.size = size
        self.semantic_stride = semantic_stride
        self.semantic_mask = semantic_mask
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.fusion_type = fusion
        self.guides_after_upsample = guides_after_upsample
        self.guide_sigmoid = guide_sigmoid
        self.logits = nn.Conv2d(in_channels, num_classes, 1)
        self.semantic_in = self.semantic_out = None
        if semantic_features:
            self.semantic_in = nn.Conv2d(semantic_channels, in_channels, 1)
            if semantic_out_conv:
                self.semantic_out = nn.Conv2d(in_channels, in_channels, 1)
        concatenated = semantic_features and fusion != "sum"
        fuse_in = in_channels * (2 if concatenated else 1) + num_guides
        self.reduce = nn.Conv2d(fuse_in, in_channels, 1)
        self.fusion = (
            MultiBranchFusion(in_channels, dilations, fusion_global_pool) if fusion == "sfm" else None
        )
        self.out = nn.Conv2d(in_channels, out_channels - num_guides, 1)

    def forward(
        self,
        x: Tensor,
        labels: Tensor,
        rois: Tensor,
        semantic: SemanticHeadOutput | None,
        upsample: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Logits of this stage and the next stage's features.

        Args:
            x: ``Tensor[N, C_s, S, S]`` instance features.
            labels: ``Tensor[N]`` class of each RoI (0 for a class-agnostic conv).
            rois: ``Tensor[N, 5]`` ``(batch index, x1, y1, x2, y2)`` in input pixels.
            semantic: the semantic head's output (needed when the stage fuses it).
            upsample: double the resolution (False: the faster-better last stage).

        Returns:
            ``(Tensor[N, 1, S, S]`` logits, ``Tensor[N, C_out, S', S']`` features), ``S' = 2S``
            when upsampling.
        """
        logits = class_logits(self.logits, x, labels)  # [N, 1, S, S]
        guide = logits.sigmoid() if self.guide_sigmoid else logits
        guides = [guide]
        parts = [x]
        if self.semantic_in is not None:
            sem = F.relu(self.semantic_in(semantic.features))  # [B, C_s, H_s, W_s]
            sem = self._pool(sem, rois)  # [N, C_s, S, S]
            if self.semantic_out is not None:
                sem = F.relu(self.semantic_out(sem))
            if self.fusion_type == "sum":
                parts = [x + sem]
            else:
                parts.append(sem)
        if self.semantic_mask:
            fg = semantic.logits.sigmoid() if self.guide_sigmoid else semantic.logits
            guides.append(self._pool(fg.to(x.dtype), rois))  # [N, 1, S, S]
        y = F.relu(self.reduce(torch.cat(parts + guides, dim=1)))  # [N, C_s, S, S]
        if self.fusion is not None:
            y = F.relu(self.fusion(y))
        y = F.relu(self.out(y))  # [N, C_out - G, S, S]
        if not self.guides_after_upsample:
            y = torch.cat([y, *guides], dim=1)  # [N, C_out, S, S]
        if upsample:
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.guides_after_upsample:
            size = tuple(y.shape[-2:])
            guides = [F.interpolate(g, size=size, mode="bilinear", align_corners=True)
                      if tuple(g.shape[-2:]) != size else g for g in guides]
            y = torch.cat([y, *guides], dim=1)  # [N, C_out, S', S']
        return logits, y

    def _pool(self, feature_map: Tensor, rois: Tensor) -> Tensor:
        """RoIAlign ``S x S`` on the semantic map (stride ``semantic_stride``)."""
        # rois stay float32 (bf16 box coordinates would be off by pixels; autocast casts inside)
        return roi_align(feature_map, rois, (self.size, self.size), 1.0 / self.semantic_stride,
                         self.sampling_ratio, self.aligned)


class RefineMaskHead(nn.Module):
    """RefineMask's mask head, a drop-in replacement of ``MaskRoIHead`` in ``MaskRCNN``.

    A network receives the head as a callable of its neck's shapes (YAML: ``class_path:
    RefineMaskHead`` with the arguments below except ``input_shape``; ``num_classes`` is filled
    from the dataset). With semantic features or the semantic mask it needs ``MaskRCNN``'s
    ``semantic_head`` (a ``ForegroundSemanticHead``), whose output it receives as ``semantic=``
    (``uses_semantic`` is then True).

    Args:
        input_shape: ``{level: ShapeSpec}`` of the neck (its ``output_shape()``).
        num_classes: ``K`` object classes.
        in_features: levels the instance features are pooled from (P2..P5).
        stage_sizes: mask side of each stage, each twice the previous; the first is the
            RoIAlign size. ``(14, 28, 56, 112)``: three refinement stages (official); ``(14,
            28)``: one; ``(14, 28, 56, 112, 224)``: a fourth stage to 224.
        sampling_ratio: RoIAlign samples per bin side (official 0: adaptive).
        aligned: half-pixel-correct RoIAlign (official, mmcv's default).
        num_convs: 3x3 convolutions on the pooled instance features (2).
        conv_dim: their channels (256); each stage halves the channels.
        semantic_channels: channels of the semantic head's features (its ``conv_dim``, 256).
        semantic_features: fuse the semantic features in every stage (the paper's fine-grained
            features; off for the "without semantic features" ablation).
        semantic_mask: fuse the semantic foreground probability as a second guide (official;
            the faster-better variant has no semantic logits).
        semantic_out_conv: 1x1 conv + ReLU after the semantic RoIAlign (official; not in the
            faster-better variant).
        semantic_sampling_ratio: RoIAlign samples per bin for the semantic inputs (official 0;
            the faster-better variant samples each bin's centre: 1).
        fusion: ``"sfm"`` (official), ``"concat"`` or ``"sum"`` (the fusion ablation; see
            ``RefineStage``).
        dilations: dilations of the SFM branches (1, 3, 5).
        fusion_global_pool: add the global average in the SFM (faster-better).
        guides_after_upsample: concatenate the guides after upsampling (official); False
            before it (faster-better).
        guide_sigmoid: guides are probabilities (official configs' ``mask_use_sigmoid``).
        class_agnostic_last_stage: one output channel in the last stage (official LVIS and
            faster-better configs).
        last_stage_upsample_logits: the last stage's features stay at the previous size and
            its logits are upsampled 2x (bilinear, ``align_corners=True``; faster-better).
        stage_loss_weights: weight of each stage's loss; None: ``(k + 1) / n`` for stage ``k``
            of ``n``, which is the official (0.25, 0.5, 0.75, 1.0) for four stages and lets
            ``stage_sizes`` change alone (faster-better: 0.5, 0.75, 0.75, 1.0).
        num_full_loss_stages: the first stages trained on the whole RoI (2: 14 and 28); the
            later ones are trained inside the boundary-aware region.
        boundary_loss: boundary-aware loss of the later stages (BAR); False trains every stage
            on the whole RoI.
        boundary_width: boundary width of the training region (2).
        boundary_overwrite: at inference (and for the previous prediction of the training
            region), a stage replaces only the boundary band of the previous mask; False takes
            each stage's whole mask.
        inference_boundary_width: boundary width of that band (1).
        boundary_min_fraction: the boundary operator's threshold (10% of the window).
        target_aligned: crop the ground-truth masks with aligned RoIAlign (official).
        target_thresh: the cropped targets are binarised at this value (official 0.5).
        logits_init_std: None: kaiming-normal init of the logits convs (official, as every conv
            here); a number: normal init with that std (Detectron's mask predictor uses 0.001).
    """

    def __init__(
        self,
        input_shape: FeatureShapes,
        num_classes: int | None = None,
        in_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
        stage_sizes: Sequence[int] = (14, 28, 56, 112),
        sampling_ratio: int = 0,
        aligned: bool = True,
        num_convs: int = 2,
        conv_dim: int = 256,
        semantic_channels: int = 256,
        semantic_stride: int = 4,
        semantic_features: bool = True,
        semantic_mask: bool = True,
        semantic_out_conv: bool = True,
        semantic_sampling_ratio: int = 0,
        fusion: str = "sfm",
        dilations: Sequence[int] = (1, 3, 5),
        fusion_global_pool: bool = False,
        guides_after_upsample: bool = True,
        guide_sigmoid: bool = True,
        class_agnostic_last_stage: bool = False,
        last_stage_upsample_logits: bool = False,
        stage_loss_weights: Sequence[float] | None = None,
        num_full_loss_stages: int = 2,
        boundary_loss: bool = True,
        boundary_width: int = 2,
        boundary_overwrite: bool = True,
        inference_boundary_width: int = 1,
        boundary_min_fraction: float = 0.1,
        target_aligned: bool = True,
        target_thresh: float = 0.5,
        logits_init_std: float | None = None,
    ) -> None:
        super().__init__()
        num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        stage_sizes = [int(s) for s in stage_sizes]
        if len(stage_sizes) < 2:
            raise ValueError(f"stage_sizes needs at least two sizes (one refinement), got {stage_sizes}")
        if any(b != 2 * a for a, b in itertools.pairwise(stage_sizes)):
            raise ValueError(f"each stage size must be twice the previous, got {stage_sizes}")
        if stage_loss_weights is None:
            stage_loss_weights = [(k + 1) / len(stage_sizes) for k in range(len(stage_sizes))]
        if len(stage_loss_weights) != len(stage_sizes):
            raise ValueError(
                f"stage_loss_weights has {len(stage_loss_weights)} weights for "
                f"{len(stage_sizes)} stages {stage_sizes}; give one weight per stage"
            )
        if conv_dim >> (len(stage_sizes) - 1) <= 1 + int(semantic_mask):
            raise ValueError(
                f"conv_dim {conv_dim} halved over {len(stage_sizes) - 1} stages leaves too few "
                f"channels for the guides; raise conv_dim"
            )
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.num_classes = num_classes
        self.stage_sizes = stage_sizes
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        self.num_full_loss_stages = num_full_loss_stages
        self.boundary_loss = boundary_loss
        self.boundary_width = boundary_width
        self.boundary_overwrite = boundary_overwrite
        self.inference_boundary_width = inference_boundary_width
        self.boundary_min_fraction = boundary_min_fraction
        self.target_aligned = target_aligned
        self.target_thresh = target_thresh
        self.class_agnostic_last_stage = class_agnostic_last_stage
        self.last_stage_upsample_logits = last_stage_upsample_logits
        self.semantic_channels = semantic_channels
        self.uses_semantic = semantic_features or semantic_mask
        self.semantic_mask = semantic_mask

        self.pooler = MultiLevelRoIAlign(
            in_features, {f: s.stride for f, s in input_shape.items()}, stage_sizes[0],
            sampling_ratio, aligned,
        )
        layers: list[nn.Module] = []
        channels = pooled_channels(input_shape, in_features)
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
            channels = conv_dim
        self.instance_convs = nn.Sequential(*layers)
        stages = []
        for size in stage_sizes[:-1]:
            stages.append(RefineStage(
                channels, channels // 2, size, num_classes, semantic_channels, semantic_stride,
                semantic_features, semantic_mask, semantic_out_conv, semantic_sampling_ratio,
                aligned, fusion, dilations, fusion_global_pool, guides_after_upsample,
                guide_sigmoid,
            ))
            channels //= 2
        self.stages = nn.ModuleList(stages)
        self.final_logits = nn.Conv2d(channels, 1 if class_agnostic_last_stage else num_classes, 1)
        for module in self.modules():  # official: kaiming normal (fan_out), zero bias
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if logits_init_std is not None:
            for conv in [s.logits for s in self.stages] + [self.final_logits]:
                nn.init.normal_(conv.weight, std=logits_init_std)

    @property
    def mask_size(self) -> int:
        """Side ``M`` of the predicted masks (the last stage's size)."""
        return self.stage_sizes[-1]

    # ------------------------------------------------------------------ head API
    def forward(
        self,
        features: Mapping[str, Tensor],
        rois: Sequence[Tensor],
        labels: Sequence[Tensor],
        matched_idxs: Sequence[Tensor] | None = None,
        semantic: SemanticHeadOutput | None = None,
    ) -> RefineMaskOutput:
        """Logits of every stage for the given RoIs, all images at once.

        Args:
            features: pyramid levels by name, ``Tensor[B, C, H_l, W_l]``.
            rois: one ``Tensor[N_i, 4]`` x1y1x2y2 per image: the positive sampled RoIs in
                training, the detected boxes at inference (input pixels).
            labels: one ``Tensor[N_i]`` int64 per image, contiguous classes ``0..K-1``.
            matched_idxs: in training, one ``Tensor[N_i]`` per image: index of the matched
                ground-truth instance.
            semantic: the semantic head's output (``MaskRCNN`` passes it when
                ``uses_semantic``).

        Returns:
            ``RefineMaskOutput``.
        """
        if self.uses_semantic:
            self._check_semantic(semantic)
        label = torch.cat(list(labels), dim=0).to(torch.int64)  # [N]
        boxes = boxes_to_rois(list(rois))  # [N, 5]
        x = self.instance_convs(self.pooler(features, rois))  # [N, C, S_0, S_0]
        stage_logits = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            upsample = not (i == last and self.last_stage_upsample_logits)
            logits, x = stage(x, label, boxes, semantic, upsample)
            stage_logits.append(logits)
        final_label = torch.zeros_like(label) if self.class_agnostic_last_stage else label
        logits = class_logits(self.final_logits, x, final_label)  # [N, 1, S, S]
        if self.last_stage_upsample_logits:
            logits = F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=True)
        stage_logits.append(logits)
        return RefineMaskOutput(
            stage_logits=stage_logits,
            rois=list(rois),
            labels=list(labels),
            matched_idxs=None if matched_idxs is None else list(matched_idxs),
        )

    def _check_semantic(self, semantic: SemanticHeadOutput | None) -> None:
        if semantic is None:
            raise ValueError(
                "RefineMaskHead with semantic_features or semantic_mask needs the semantic head's "
                "output: give MaskRCNN a semantic_head (ForegroundSemanticHead), or set "
                "semantic_features and semantic_mask to false"
            )
        fuses_features = self.stages[0].semantic_in is not None
        if fuses_features and semantic.features.shape[1] != self.semantic_channels:
            raise ValueError(
                f"the semantic head gives {semantic.features.shape[1]} channels but "
                f"RefineMaskHead.semantic_channels is {self.semantic_channels}; set it to the "
                f"semantic head's conv_dim"
            )
        if self.semantic_mask and semantic.logits is None:
            raise ValueError(
                "RefineMaskHead.semantic_mask needs foreground logits, but the semantic head has "
                "with_logits=false; set semantic_mask to false (faster-better) or with_logits true"
            )

    def stage_targets(self, raw: RefineMaskOutput, targets: Sequence[InstanceTargets]) -> list[Tensor]:
        """Binary ground-truth masks of every stage, cropped from the matched instances.

        Returns:
            one ``Tensor[N, S_s, S_s]`` float32 in ``{0, 1}`` per stage.
        """
        if raw.matched_idxs is None:
            raise ValueError("RefineMaskHead.loss needs matched_idxs: call forward with them")
        per_stage: list[list[Tensor]] = [[] for _ in self.stage_sizes]
        for target, boxes, idxs in zip(targets, raw.rois, raw.matched_idxs):
            if boxes.shape[0] == 0:
                continue
            if target.masks is None:
                raise ValueError(
                    "RefineMaskHead.loss needs InstanceTargets.masks; load the dataset with masks"
                )
            rois = torch.cat([idxs.to(torch.float32)[:, None], boxes.float()], dim=1)  # [N_i, 5]
            masks = target.masks[:, None].to(torch.float32)  # [G, 1, H, W]
            for s, size in enumerate(self.stage_sizes):
                crop = roi_align(masks, rois, (size, size), 1.0, 0, self.target_aligned)  # [N_i, 1, S, S]
                per_stage[s].append((crop[:, 0] >= self.target_thresh).to(torch.float32))
        device = raw.stage_logits[0].device
        return [
            torch.cat(parts, dim=0) if parts else torch.zeros(0, size, size, device=device)
            for parts, size in zip(per_stage, self.stage_sizes)
        ]

    def loss(self, raw: RefineMaskOutput, targets: Sequence[InstanceTargets]) -> dict[str, Tensor]:
        """Stage losses, each already weighted: ``{"loss_mask_s0": ..., "loss_mask_s3": ...}``.

        Stages before ``num_full_loss_stages`` (and all stages without ``boundary_loss``): mean
        BCE over every pixel of every positive RoI. Later stages: BCE summed inside the
        boundary-aware region and divided by its pixel count (at least 1). With no RoI every
        term is ``logits.sum() * 0``.
        """
        stage_targets = self.stage_targets(raw, targets)
        logits = [s[:, 0].float() for s in raw.stage_logits]  # [N, S_s, S_s] each
        if logits[0].shape[0] == 0:
            return {f"loss_mask_s{s}": x.sum() * 0 for s, x in enumerate(logits)}
        refined = self.refined_logits(raw, detach=True)
        losses = {}
        for s, (pred, target, weight) in enumerate(zip(logits, stage_targets, self.stage_loss_weights)):
            if s < self.num_full_loss_stages or not self.boundary_loss or s == 0:
                loss = F.binary_cross_entropy_with_logits(pred, target)
            else:
                region = self.training_region(refined[s - 1], stage_targets[s - 1], pred.shape[-2:])
                bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
                loss = (bce * region).sum() / region.sum().clamp(min=1)
            losses[f"loss_mask_s{s}"] = weight * loss
        return losses

    def training_region(
        self, previous_logits: Tensor, previous_target: Tensor, size: tuple[int, int]
    ) -> Tensor:
        """Boundary-aware training region of a stage (BAR).

        Args:
            previous_logits: ``Tensor[N, 1, h, h]`` refined logits of the previous stage.
            previous_target: ``Tensor[N, h, h]`` binary target of the previous stage.
            size: ``(S, S)`` of this stage.

        Returns:
            ``Tensor[N, S, S]`` float32 in ``{0, 1}``: the union of both boundary regions
            (width ``boundary_width``), upsampled.
        """
        pred = previous_logits[:, 0].float().sigmoid() >= 0.5  # [N, h, h]
        region = boundary_region(pred, self.boundary_width, self.boundary_min_fraction)
        region |= boundary_region(previous_target, self.boundary_width, self.boundary_min_fraction)
        return upsample_region(region, tuple(size)).to(torch.float32)  # [N, S, S]

    def refined_logits(self, raw: RefineMaskOutput, detach: bool = False) -> list[Tensor]:
        """The logits inference uses at every stage, boundary overwrite applied.

        Stage 0 (14x14) and stage 1 (28x28) are the raw logits; each later stage keeps its own
        logits inside the boundary band (width ``inference_boundary_width``) of the previous
        refined, binarised mask and the upsampled previous logits elsewhere (raw logits
        throughout without ``boundary_overwrite``). Training uses the same chain for the
        previous prediction of the boundary-aware region; for the official three refinement
        stages this equals the official training code, which for a fourth stage would fill
        outside the band with the previous stage's raw rather than refined logits.

        Args:
            raw: output of ``forward``.
            detach: compute without gradient (the training region only needs the binary map).

        Returns:
            one ``Tensor[N, 1, S_s, S_s]`` per stage; the last one is the prediction.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            out = [s.detach() if detach else s for s in raw.stage_logits[:2]]
            for logits in raw.stage_logits[2:]:
                logits = logits.detach() if detach else logits
                if self.boundary_overwrite:
                    logits = refine_with_boundary(out[-1], logits, self.inference_boundary_width,
                                                  self.boundary_min_fraction)
                out.append(logits)
        return out

    def predict(self, raw: RefineMaskOutput) -> list[Tensor]:
        """Mask probabilities at the last stage's size (112), boundary overwrite applied.

        Returns:
            one ``Tensor[N_i, 1, M, M]`` float per image.
        """
        probs = self.refined_logits(raw)[-1].float().sigmoid()  # [N, 1, M, M]
        return list(probs.split([r.shape[0] for r in raw.rois], dim=0))
