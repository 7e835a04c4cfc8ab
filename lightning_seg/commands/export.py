"""``lseg export``: a trained network as an ONNX or TorchScript file, pre- and post-processing
included.

Usage::

    lseg export --config experiments/yolact_r50_coco_800k.yaml --ckpt_path best.ckpt \\
        --format onnx --out yolact_r50.onnx
    lseg export --config experiments/deeplabv3plus_r50_camvid_80e.yaml --ckpt_path best.ckpt \\
        --format torchscript --out deeplab.pt --height 360 --width 480 \\
        --model.init_args.model.init_args.backbone.init_args.weights null   # any `lseg` override

Arguments other than the ones below are passed to the config parser as for ``lseg fit`` (e.g.
``weights: null`` offline: the checkpoint replaces the pretrained weights anyway).

What the exported graph computes, per network family (``export_module``):

- **YOLACT / YOLACT++** (end to end): ``images Tensor[B, 3, H, W]`` float RGB in ``[0, 1]`` of any
  size -> squashed to ``--input-size`` (550), normalised, network, per-class Fast NMS (fixed-size
  tensors, so the graph has no Python post-processing), masks assembled, cropped and upsampled to
  ``H x W`` -> ``boxes [B, D, 4]`` (x1y1x2y2 pixels of the input image), ``scores [B, D]``,
  ``labels [B, D]`` (int64, ``0..K-1``), ``masks [B, D, H, W]`` (bool), ``valid [B, D]`` (bool:
  a real detection; ``D = max_detections``, 100). The batch size is the example's
  (``--batch-size``, 1). Standard NMS is not exportable (use ``fast`` or ``cross_class``).
- **Semantic networks** (``SemanticSegmentor``): ``images`` -> ``logits [B, K, H, W]`` (whole
  image at once; ``logits.argmax(1)`` is the label map). The graph keeps the image size dynamic
  when the network's own code does (tested for U-Net); otherwise feed the example's size.
- **Mask R-CNN** is refused with the reason: its two-stage inference (proposals, per-image box
  and mask heads, pasting) has data-dependent shapes and Python loops that neither the ONNX
  exporter of ``torch.export`` nor tracing turns into a graph that stays correct on other images.

ONNX export needs the optional ``export`` extra (``pip install lightning_seg[export]``: onnx,
onnxruntime, onnxscript); the file is checked with ``onnx.checker``. The exporter is PyTorch's
TorchScript-based one (``dynamo=False``), whose graph keeps the image size dynamic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.errors import UserError

FORMATS = ("onnx", "torchscript")
#: ONNX opset of the export: 19 has ``DeformConv`` (YOLACT++'s DCNv2), which onnxruntime runs
DEFAULT_OPSET = 19


class ExportError(UserError, RuntimeError):
    """The network or the arguments cannot be exported."""


class YolactExport(nn.Module):
    """YOLACT end to end on plain images (module docstring).

    Args:
        model: a ``Yolact`` (eval mode is set).
        input_size: ``(H, W)`` the images are squashed to (the training size, 550 x 550); None
            runs them at their own size (the exported graph then holds the anchors of the
            example's size: feed images of that size only).
    """

    output_names = ("boxes", "scores", "labels", "masks", "valid")
    #: the fixed-size detection step is traced for the example's batch size
    dynamic_batch = False

    def __init__(self, model: nn.Module, input_size: tuple[int, int] | None = (550, 550)) -> None:
        super().__init__()
        if model.nms == "standard":
            raise ExportError("YOLACT with nms='standard' cannot be exported: use 'fast' or 'cross_class'")
        self.model = model.eval()
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        height, width = images.shape[-2], images.shape[-1]
        x = images.float()
        if self.input_size is not None:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        in_h, in_w = x.shape[-2], x.shape[-1]
        # sizes as tensors, so that a traced graph keeps the image size dynamic
        size = torch._shape_as_tensor(images)[-2:].to(torch.float32)  # [2] (H, W)
        x = (x - m.preprocessor.pixel_mean) / m.preprocessor.pixel_std
        features = m.neck(m.backbone(x))
        protos = m.protonet(features)
        raw = m.head(features, (int(in_h), int(in_w)))
        dets, probs = m.detect(raw, protos)
        masks = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
        limit = size.flip(0).repeat(2)  # [4] (W, H, W, H)
        scale = limit / torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float32)
        boxes = torch.minimum((dets.boxes * scale).clamp(min=0), limit)
        return boxes, dets.scores, dets.labels, masks > m.mask_thresh, dets.valid


class SemanticExport(nn.Module):
    """``images [B, 3, H, W]`` in ``[0, 1]`` -> ``logits [B, K, H, W]`` of a ``SemanticSegmentor``."""

    output_names = ("logits",)
    dynamic_batch = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: Tensor) -> Tensor:
        pre = self.model.preprocessor
        if pre.size_divisibility > 1:  # padding sizes would be frozen into the graph
            return self.model.logits(images.float())
        return self.model.network_logits((images.float() - pre.pixel_mean) / pre.pixel_std)


def export_module(network: nn.Module, input_size: tuple[int, int] | None = (550, 550)) -> nn.Module:
    """The exportable wrapper of a network (module docstring), or an ``ExportError``."""
    from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
    from lightning_seg.models.detectors.semantic import SemanticSegmentor
    from lightning_seg.models.detectors.yolact import Yolact

    if isinstance(network, Yolact):
        return YolactExport(network, input_size)
    if isinstance(network, SemanticSegmentor):
        return SemanticExport(network)
    if isinstance(network, MaskRCNN):
        raise ExportError(
            "Mask R-CNN cannot be exported yet: its proposal / RoI inference has data-dependent "
            "shapes and per-image Python loops; export YOLACT or a semantic network, or run "
            "`lseg predict`"
        )
    raise ExportError(f"no export recipe for {type(network).__name__}")


def _register_deform_conv_symbolic() -> None:
    """Export ``torchvision.ops.deform_conv2d`` as ONNX ``DeformConv`` (opset 19): same inputs
    (offsets as ``(dy, dx)`` pairs per kernel point, optional modulation mask), same attributes."""
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                      dil_h, dil_w, groups, offset_groups, use_mask):
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op(
            "DeformConv", *inputs, dilations_i=[dil_h, dil_w], group_i=groups,
            kernel_shape_i=sh._get_tensor_sizes(weight)[-2:], offset_group_i=offset_groups,
            pads_i=[pad_h, pad_w, pad_h, pad_w], strides_i=[stride_h, stride_w],
        )

    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, DEFAULT_OPSET)


def export(
    wrapper: nn.Module,
    example: Tensor,
    out: str | Path,
    fmt: str = "onnx",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``wrapper`` (from ``export_module``) traced on ``example`` to ``out``.

    Args:
        wrapper: the exportable module.
        example: ``Tensor[B, 3, H, W]`` example images in ``[0, 1]``.
        out: the file to write.
        fmt: ``"onnx"`` (height and width dynamic; the batch too for semantic networks; YOLACT's
            batch is the example's) or ``"torchscript"`` (traced).
        opset: ONNX opset (19 or more for deformable convolutions).

    Returns:
        the written path.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    wrapper.eval()
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            traced.save(str(out))
            return out
        try:
            import onnx
        except ImportError as exc:
            raise ExportError(
                "ONNX export needs onnx (and onnxruntime to run the file): pip install "
                "'lightning_seg[export]'"
            ) from exc
        _register_deform_conv_symbolic()
        names = list(wrapper.output_names)
        axes = {2: "height", 3: "width"}
        if getattr(wrapper, "dynamic_batch", False):
            axes[0] = "batch"
        dynamic = {"images": axes}
        torch.onnx.export(
            wrapper, (example,), str(out), input_names=["images"], output_names=names,
            dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )
        onnx.checker.check_model(str(out))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lseg export",
        description="Export a trained network (experiment config + checkpoint) to ONNX or TorchScript.",
    )
    p.add_argument("--config", action="append", required=True,
                   help="experiment file (and further config files), as for `lseg fit`")
    p.add_argument("--ckpt_path", required=True, help="Lightning checkpoint of the run")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="file to write (.onnx or .pt)")
    p.add_argument("--height", type=int, default=550, help="height of the example image")
    p.add_argument("--width", type=int, default=550, help="width of the example image")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per call (YOLACT's graph is fixed to it; semantic graphs take any)")
    p.add_argument("--input-size", type=int, default=550,
                   help="YOLACT: square side images are squashed to inside the graph (0: none)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    return p


def load_network(configs: list[str], ckpt_path: str | Path, overrides: list[str] | None = None) -> nn.Module:
    """The network of an experiment (config files, then ``lseg`` overrides) with the weights of a
    checkpoint."""
    from lightning_seg.cli import main
    from lightning_seg.models.weights import load_checkpoint_file
    from lightning_seg.tasks.base import unwrap_network

    args = [a for c in configs for a in ("--config", c)] + list(overrides or [])
    task = main(args, run=False).model
    ckpt = load_checkpoint_file(ckpt_path, "--ckpt_path")
    state = ckpt.get("state_dict", ckpt)
    result = task.load_state_dict(state, strict=False)
    bad = [k for k in result.missing_keys + result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if bad:
        raise ExportError(f"--ckpt_path {ckpt_path} does not fit the config's network: {bad[:6]} ({len(bad)} keys)")
    return unwrap_network(task).eval()


def main(argv: list[str]) -> int:
    """``lseg export ...``; the exit status."""
    args, overrides = _parser().parse_known_args(argv)
    network = load_network(args.config, args.ckpt_path, overrides)
    size = None if args.input_size == 0 else (args.input_size, args.input_size)
    wrapper = export_module(network, size)
    example = torch.rand(args.batch_size, 3, args.height, args.width)
    path = export(wrapper, example, args.out, args.format, args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {args.format}); outputs: "
          f"{', '.join(wrapper.output_names)}")
    return 0
