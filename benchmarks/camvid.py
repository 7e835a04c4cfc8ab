"""CamVid semantic segmentation: every model trained under the same CPU budget, then mIoU.

What is measured:

- **Data**: CamVid train (SegNet layout, 11 classes, label 11 "Unlabelled" -> ignore 255) through
  ``CamVidDataModule``. ``--holdout`` (default 20%) of train is held back deterministically
  (``val_split_from_train``, ``split_seed=0``) and never trained on; mIoU is measured on it.
- **Resolution**: ``--size H W`` (default 180 240, half of CamVid's 360x480). Training samples:
  ``TrainTransform`` random scale ``--scale-range`` (relative to ``--size``, i.e. the image is
  first scaled so that its native size maps to ``--size``), random crop to ``--size`` (padded
  with ignore when smaller), horizontal flip 0.5. Evaluation: ``EvalTransform`` fits the image
  inside ``--size`` (labels resized with nearest); mIoU is computed at that resolution. The
  collate pads to a multiple of 32 with ignore labels.
- **Budget**: each model trains until the **process CPU time** of its training steps
  (``time.process_time()`` around forward + backward + optimiser step; data loading and
  evaluation are not counted) reaches ``--budget-s``, or its wall time reaches
  ``--wall-cap-s`` (then it is flagged ``capped``). CPU time, not wall time, so that other load
  on a shared machine does not favour one model.
- **Same recipe for every model**: random init (``torch.manual_seed(--seed)`` before building;
  **no pretrained weights**: none can be downloaded here), AdamW (lr ``--lr`` = 1e-3, weight
  decay 1e-4, betas (0.9, 0.999)), "poly" decay ``lr * (1 - progress) ** 0.9`` where progress is
  the used fraction of the budget (CPU or wall cap, whichever is further), pixel-wise
  cross-entropy with ``ignore_index``; same data order and augmentation for every model
  (the global RNG is re-seeded with ``seed + epoch`` before each epoch's iterator, and the
  transform has its own seeded stream). A plain torch loop (no Lightning) keeps the overhead
  equal across models.
- **Metric**: ``lightning_seg.metrics.semantic.SegmentationMetrics`` (dataset-level confusion
  matrix): mIoU, pixel accuracy, per-class IoU.

Models: ours are built from the CamVid experiment files users run
(``experiments/<model>_camvid_80e.yaml``, pretrained weights switched off): FCN-32s / 16s / 8s
(VGG16), U-Net (same padding, BatchNorm), DeepLab v3 R50 (OS 16, multi-grid 1/2/4), DeepLab v3+ R50
(OS 16, multi-grid 1/2/4) and Xception-65 (OS 16, separable); and two peers: torchvision
``deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=11, aux_loss=False)`` and
segmentation_models_pytorch ``DeepLabV3Plus("resnet50", encoder_weights=None, classes=11)``
(both wrapped to take ``[0, 1]`` images, normalise with ImageNet mean / std, and pad to a
multiple of 32).

Output: a table, then one JSON line (last line): ``{<model>: {"miou", "pixel_acc", "mean_acc",
"iou" (class name -> IoU, null when absent), "steps", "samples", "epochs", "cpu_s", "wall_s",
"eval_cpu_s", "final_loss", "params_m", "capped", "peer"}, ..., "config": {...}}`` (a model
that failed has ``"error"`` instead).

Usage:
    python benchmarks/camvid.py --budget-s 150 --size 180 240
    python benchmarks/camvid.py --models fcn8s_vgg16 deeplabv3plus_r50 --budget-s 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.constants import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
# the sample data beside the checkout (../shared/data), or $LSEG_SHARED_DATA
DEFAULT_ROOT = str(Path(os.environ.get("LSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "semantic" / "camvid")
WEIGHTS = "--model.init_args.model.init_args.backbone.init_args.weights"


class PeerWrapper(nn.Module):
    """Give a peer network our model contract: ``[0, 1]`` images in, ``Tensor[B, K, H, W]`` out.

    Normalises with ImageNet mean / std, zero-pads bottom/right to a multiple of
    ``size_divisibility``, takes ``["out"]`` when the network returns a dict (torchvision),
    and crops the logits back to the input size.
    """

    def __init__(self, net: nn.Module, size_divisibility: int = 32) -> None:
        super().__init__()
        self.net = net
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        x = (images - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        out = self.net(x)
        if isinstance(out, dict):
            out = out["out"]
        return out[:, :, :h, :w]  # Tensor[B, K, H, W]


def _torchvision_deeplabv3(num_classes: int) -> nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    return PeerWrapper(net)


def _smp_deeplabv3plus(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return PeerWrapper(smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=num_classes))


def _experiment(name: str) -> Callable[[int], nn.Module]:
    """The network of ``experiments/<name>_camvid_80e.yaml`` (what ``lseg fit`` trains), random init."""

    def build(num_classes: int) -> nn.Module:
        from lightning_seg.cli import build_experiment

        config = REPO / "experiments" / f"{name}_camvid_80e.yaml"
        pretrained = name.startswith(("fcn", "deeplabv3_r50", "deeplabv3plus_r50"))  # torchvision weights
        overrides = [f"{WEIGHTS}=null"] if pretrained else []
        task, data = build_experiment(config, *overrides)
        if data.num_classes != num_classes:
            raise ValueError(f"{config.name} has {data.num_classes} classes, the benchmark {num_classes}")
        return task.model

    return build


# name -> (builder(num_classes) -> model, is_peer)
MODELS: dict[str, tuple[Callable[[int], nn.Module], bool]] = {
    "fcn32s_vgg16": (_experiment("fcn32s_vgg16"), False),
    "fcn16s_vgg16": (_experiment("fcn16s_vgg16"), False),
    "fcn8s_vgg16": (_experiment("fcn8s_vgg16"), False),
    "unet_same": (_experiment("unet_same"), False),
    "deeplabv3_r50": (_experiment("deeplabv3_r50"), False),
    "deeplabv3plus_r50": (_experiment("deeplabv3plus_r50"), False),
    "deeplabv3plus_xception65": (_experiment("deeplabv3plus_xception"), False),
    "torchvision_deeplabv3_r50": (_torchvision_deeplabv3, True),
    "smp_deeplabv3plus_r50": (_smp_deeplabv3plus, True),
}


def build_datamodule(args: argparse.Namespace):
    """A fresh ``CamVidDataModule`` (fresh seeded transform: same augmentation stream)."""
    from lightning_seg.data.datamodules.camvid import CamVidDataModule
    from lightning_seg.data.transforms import EvalTransform, TrainTransform

    size = tuple(args.size)
    factor = size[0] / args.native_size[0]  # scale that maps the native frame to --size
    lo, hi = args.scale_range
    dm = CamVidDataModule(
        args.root,
        val_split_from_train=args.holdout,
        split_seed=0,
        batch_size=args.batch_size,
        val_batch_size=args.batch_size,
        num_workers=args.workers,
        train_transform=TrainTransform(
            size=size, scale_range=(lo * factor, hi * factor), hflip_prob=0.5, crop=True, seed=args.seed
        ),
        val_transform=EvalTransform(size=size),
        size_divisibility=32,
        pin_memory=False,
        persistent_workers=False,
        max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples,
    )
    dm.setup("fit")
    return dm


def poly_lr(base_lr: float, progress: float, power: float = 0.9) -> float:
    """DeepLab's "poly" schedule on the used fraction of the budget."""
    return base_lr * max(0.0, 1.0 - progress) ** power


def train_one(name: str, args: argparse.Namespace) -> dict:
    """Train ``name`` under the budget, evaluate on the held-out part; return its figures."""
    from lightning_seg.metrics.semantic import SegmentationMetrics

    builder, is_peer = MODELS[name]
    dm = build_datamodule(args)
    num_classes, ignore_index = dm.num_classes, dm.ignore_index
    torch.manual_seed(args.seed)
    model = builder(num_classes)
    logits_of = getattr(model, "logits", model)  # ours: the network's own preprocessing
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    loader = dm.train_dataloader()

    model.train()
    cpu_used = 0.0
    wall_start = time.perf_counter()
    steps = samples = epoch = 0
    losses: list[float] = []
    capped = False
    done = False
    while not done:
        torch.manual_seed(args.seed + epoch)  # same shuffle (and worker seeds) for every model
        for batch in loader:
            wall_used = time.perf_counter() - wall_start
            progress = max(cpu_used / args.budget_s, wall_used / args.wall_cap_s)
            if progress >= 1.0:
                capped = wall_used >= args.wall_cap_s and cpu_used < args.budget_s
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(args.lr, progress)
            t0 = time.process_time()
            logits = logits_of(batch.images)  # Tensor[B, K, H, W]
            loss = F.cross_entropy(logits, batch.semantic, ignore_index=ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cpu_used += time.process_time() - t0
            steps += 1
            samples += len(batch)
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                done = True
                break
            if args.log_every and steps % args.log_every == 0:
                print(
                    f"  [{name}] step {steps} epoch {epoch} loss {value:.4f} cpu {cpu_used:.0f}s "
                    f"wall {time.perf_counter() - wall_start:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
        epoch += 1
    wall_s = time.perf_counter() - wall_start

    metric = SegmentationMetrics(num_classes, ignore_index=ignore_index)
    model.eval()
    t0 = time.process_time()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            pred = logits_of(batch.images).argmax(dim=1)  # Tensor[B, H, W]
            metric.update(pred, batch.semantic)
    eval_cpu_s = time.process_time() - t0
    result = metric.compute()
    tail = losses[-max(1, min(len(losses), 10)) :]
    return {
        "miou": float(result["mIoU"]),
        "pixel_acc": float(result["pixel_acc"]),
        "mean_acc": float(result["mAcc"]) if "mAcc" in result else None,
        "iou": {
            cls: None if math.isnan(float(v)) else round(float(v), 4)
            for cls, v in zip(dm.class_names, result["IoU"])
        },
        "steps": steps,
        "samples": samples,
        "epochs": round(samples / max(1, len(dm.train_dataset)), 2),
        "cpu_s": round(cpu_used, 1),
        "wall_s": round(wall_s, 1),
        "eval_cpu_s": round(eval_cpu_s, 1),
        "final_loss": round(sum(tail) / len(tail), 4) if losses else None,
        "params_m": round(params_m, 2),
        "capped": capped,
        "peer": is_peer,
    }


def print_table(results: dict[str, dict]) -> None:
    header = (
        f"{'model':<27} {'params M':>8} {'steps':>6} {'epochs':>6} {'cpu s':>7} {'wall s':>7} "
        f"{'loss':>7} {'mIoU %':>7} {'pix acc %':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<27} ERROR: {r['error']}")
            continue
        flag = " (wall cap)" if r["capped"] else ""
        peer = " [peer]" if r["peer"] else ""
        loss = "nan" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        print(
            f"{name:<27} {r['params_m']:>8.1f} {r['steps']:>6} {r['epochs']:>6.2f} {r['cpu_s']:>7.0f} "
            f"{r['wall_s']:>7.0f} {loss:>7} {100 * r['miou']:>7.2f} {100 * r['pixel_acc']:>9.2f}{flag}{peer}"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=DEFAULT_ROOT, help="CamVid folder (SegNet layout)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to run")
    p.add_argument("--budget-s", type=float, default=240.0, help="training CPU-seconds per model")
    p.add_argument(
        "--wall-cap-s", type=float, default=None, help="wall-seconds cap per model's training (default 4 x budget)"
    )
    p.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"), help="train/eval size")
    p.add_argument(
        "--native-size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"),
        help="CamVid frame size (the scale range is relative to --size / native)",
    )
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.5), help="random scale around --size")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (poly decay over the budget)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of train held back for mIoU")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: main process, not budgeted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-samples", type=int, default=None, help="smoke runs: first N train samples")
    p.add_argument("--max-val-samples", type=int, default=None, help="smoke runs: first N held-out samples")
    p.add_argument("--log-every", type=int, default=20, help="progress line to stderr every N steps (0: off)")
    args = p.parse_args(argv)
    if args.wall_cap_s is None:
        args.wall_cap_s = 4 * args.budget_s
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(
        f"CamVid benchmark: {len(args.models)} models, budget {args.budget_s:.0f} CPU-s each "
        f"(wall cap {args.wall_cap_s:.0f} s), size {args.size[0]}x{args.size[1]}, batch {args.batch_size}, "
        f"{args.threads} thread(s), AdamW lr {args.lr:g} poly, holdout {args.holdout:g} of train.\n"
        f"All models are RANDOMLY INITIALISED (no pretrained weights can be downloaded here).",
        flush=True,
    )
    results: dict[str, dict] = {}
    for name in args.models:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            results[name] = train_one(name, args)
        except Exception as e:  # one failing model must not lose the others' figures
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"== {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print()
    print_table(results)
    config = {
        "budget_cpu_s": args.budget_s,
        "wall_cap_s": args.wall_cap_s,
        "size": list(args.size),
        "scale_range": list(args.scale_range),
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr:g}, weight_decay={args.weight_decay:g}) poly 0.9 over the budget",
        "holdout": args.holdout,
        "threads": args.threads,
        "workers": args.workers,
        "seed": args.seed,
        "init": "random (no pretrained weights)",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps({**results, "config": config}))


if __name__ == "__main__":
    main()
