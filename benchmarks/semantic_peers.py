"""Forward + backward step time of our DeepLab models against their peers, on identical batches.

Pairs (random init, train mode, cross-entropy on random labels; forward + loss + backward, no
optimizer step). Ours are the networks of the CamVid experiment files that users run, with the
peer's settings as overrides:

* ``deeplabv3``: ours ``experiments/deeplabv3_r50_camvid_80e.yaml`` with output stride 8, no
  multi-grid, ``aspp_rates=(12, 24, 36)``, ``num_head_convs=1``, ``dropout=0.5``
  vs ``torchvision.models.segmentation.deeplabv3_resnet50``
  (``aux_loss=False``). Same architecture (our golden test shows equal logits). Differences:
  ours normalises inside (the peer gets the same normalisation op in its step) and its
  image-pooling branch broadcasts instead of calling ``F.interpolate``.
* ``deeplabv3plus``: ours ``experiments/deeplabv3plus_r50_camvid_80e.yaml`` (output stride 16,
  multi-grid (1, 2, 4), separable) with ``aspp_rates=(12, 24, 36)``, ``num_decoder_convs=1``,
  ``dropout=0.5`` vs
  ``segmentation_models_pytorch.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None,
  encoder_output_stride=16)`` (its defaults: rates (12, 24, 36), separable ASPP, 256 channels,
  48 low-level channels). Differences: smp's separable convs have no BN + ReLU between
  depthwise and pointwise (ours do, as the paper); smp adds a separable 3x3 conv after ASPP
  (at stride 16) and has one separable 3x3 decoder conv, so ours is run with
  ``num_decoder_convs=1`` (the paper's two convs are timed too, as ``deeplabv3plus_paper``);
  smp dilates every block of layer4 with rate 2, ours uses the experiment's multi-grid rates
  (2, 4, 8) (same cost); smp upsamples with ``align_corners=True``.

Measurements are interleaved (ours, peer, ours, peer...) after a warm-up, and medians are
reported, since shared machines are noisy. The last line printed is one JSON object with
``deeplabv3_step_ratio`` and ``deeplabv3plus_step_ratio`` (ours / peer; <= 1.0 is the goal).

Usage:
    python benchmarks/semantic_peers.py --size 256 --batch-size 2 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lightning_seg.cli import build_experiment
from lightning_seg.constants import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _experiment_network(experiment: str, num_classes: int, *overrides: str) -> nn.Module:
    """The network of ``experiments/<experiment>`` (what ``lseg fit`` trains), random init, with
    the peer-matching settings as overrides."""
    net = "--model.init_args.model.init_args"
    task, _ = build_experiment(REPO / "experiments" / experiment,
                               f"{net}.backbone.init_args.weights=null",
                               *(f"{net}.{o}" for o in overrides))
    if task.num_classes != num_classes:
        raise ValueError(f"--num-classes must be {task.num_classes} (CamVid's, as {experiment})")
    return task.model


def _ours_v3(num_classes: int) -> nn.Module:
    return _experiment_network(
        "deeplabv3_r50_camvid_80e.yaml", num_classes, "backbone.init_args.output_stride=8",
        "backbone.init_args.multi_grid=null", "aspp_rates=[12, 24, 36]", "num_head_convs=1",
        "dropout=0.5",
    )


def _peer_v3(num_classes: int) -> nn.Module:
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )


def _ours_v3plus(num_classes: int, num_decoder_convs: int) -> nn.Module:
    return _experiment_network(
        "deeplabv3plus_r50_camvid_80e.yaml", num_classes, "aspp_rates=[12, 24, 36]",
        f"num_decoder_convs={num_decoder_convs}", "dropout=0.5",
    )


def _peer_v3plus(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.DeepLabV3Plus(
        encoder_name="resnet50", encoder_weights=None, encoder_output_stride=16, classes=num_classes
    )


def _step_fn(model: nn.Module, normalise: bool, out_key: str | None) -> Callable[[Tensor, Tensor], None]:
    """One training step (forward, loss, backward) with the model's own input convention."""

    def step(images: Tensor, labels: Tensor) -> None:
        if hasattr(model, "logits"):  # ours: its own preprocessing, then the network
            logits = model.logits(images)
        else:
            x = (images - MEAN.to(images)) / STD.to(images) if normalise else images
            out = model(x)
            logits = out[out_key] if out_key is not None else out
        loss = F.cross_entropy(logits, labels)
        model.zero_grad(set_to_none=True)
        loss.backward()

    return step


def _timed(step: Callable[[Tensor, Tensor], None], images: Tensor, labels: Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1000.0


def compare(
    ours: nn.Module,
    peer: nn.Module,
    peer_out_key: str | None,
    images: Tensor,
    labels: Tensor,
    steps: int,
    warmup: int,
    device: torch.device,
) -> tuple[float, float]:
    """Median step times (ms) of ``ours`` and ``peer``, measured ABAB after warm-up."""
    ours, peer = ours.to(device).train(), peer.to(device).train()
    step_a = _step_fn(ours, normalise=False, out_key=None)
    step_b = _step_fn(peer, normalise=True, out_key=peer_out_key)
    for _ in range(warmup):
        _timed(step_a, images, labels, device)
        _timed(step_b, images, labels, device)
    times_a, times_b = [], []
    for i in range(steps):
        # alternate which one goes first, so drifts of the machine hit both alike
        if i % 2 == 0:
            times_a.append(_timed(step_a, images, labels, device))
            times_b.append(_timed(step_b, images, labels, device))
        else:
            times_b.append(_timed(step_b, images, labels, device))
            times_a.append(_timed(step_a, images, labels, device))
    return statistics.median(times_a), statistics.median(times_b)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256], help="H [W] of the batch")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=11, help="CamVid's, as the experiments")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (args.size * 2)[:2]
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, h, w, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size, h, w), device=device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    result: dict = {
        "benchmark": "semantic_peers",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "size": [h, w],
        "batch_size": args.batch_size,
        "steps": args.steps,
        "torch": torch.__version__,
    }
    pairs = [
        ("deeplabv3", lambda: _ours_v3(args.num_classes), lambda: _peer_v3(args.num_classes), "out"),
        ("deeplabv3plus", lambda: _ours_v3plus(args.num_classes, 1), lambda: _peer_v3plus(args.num_classes), None),
        (
            "deeplabv3plus_paper",
            lambda: _ours_v3plus(args.num_classes, 2),
            lambda: _peer_v3plus(args.num_classes),
            None,
        ),
    ]
    for name, make_ours, make_peer, key in pairs:
        torch.manual_seed(0)
        ours, peer = make_ours(), make_peer()
        ours_ms, peer_ms = compare(ours, peer, key, images, labels, args.steps, args.warmup, device)
        result[f"{name}_ours_ms"] = round(ours_ms, 2)
        result[f"{name}_peer_ms"] = round(peer_ms, 2)
        result[f"{name}_step_ratio"] = round(ours_ms / peer_ms, 3)
        print(f"{name}: ours {ours_ms:.1f} ms, peer {peer_ms:.1f} ms, ratio {ours_ms / peer_ms:.3f}", flush=True)
        del ours, peer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
