"""Is the data pipeline the bottleneck? Data samples/s against the model's training samples/s.

What is measured (all wall time, ``time.perf_counter``):

- **Data rate** (``*_data_sps``): samples/s out of the DataModule's ``train_dataloader()`` with
  ``--workers`` worker processes (default 2): read + decode + augment + collate. The first
  ``--warmup-batches`` batches (worker start-up, first file reads) are not timed; then
  ``--batches`` batches are timed (epochs restart as needed; worker start-up of a new epoch
  counts, as it does in training).
- **Training rate** (``*_train_sps``): samples/s of a training step (forward + backward + AdamW
  step) on one fixed batch from the same loader (so no data time is included), after
  ``--warmup-steps`` untimed steps, over ``--steps`` steps, with ``torch.set_num_threads(--threads)``
  in the main process:

  * CamVid: the network of ``experiments/deeplabv3plus_r50_camvid_80e.yaml`` (OS 16, random
    init) and its cross-entropy with ignore, on
    ``TrainTransform`` random scale / crop ``--camvid-size`` / flip batches of ``--batch-size``;
  * synthetic-instance: the network of ``experiments/mask_rcnn_r50_fpn_shapes_24e.yaml`` (random
    init, sum of its 5 losses) on
    ``SyntheticShapesDataModule(task="instance")`` images of ``--synthetic-size`` with
    ``TrainTransform`` (fit inside the size, random scale, flip).

- **Ratio** (``*_ratio``) = data rate / training rate: above 1 the loader keeps up with the model
  (on this hardware), below 1 the model waits for data.

Caveat: on a machine with few cores the workers and the training step compete for the same
cores, so the two rates are measured one after the other (each with the machine to itself, as
much as other load allows) rather than together.

Output: one JSON line (last line) with ``camvid_data_sps``, ``camvid_train_sps``,
``camvid_ratio``, ``synthetic_instance_data_sps``, ``synthetic_instance_train_sps``,
``synthetic_instance_ratio``, ``num_workers``, ``batch_size``, ``threads`` and the sizes.

Usage:
    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --batches 10 --steps 2 --skip-synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
# the sample data beside the checkout (../shared/data), or $LSEG_SHARED_DATA
DEFAULT_CAMVID = str(Path(os.environ.get("LSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "semantic" / "camvid")
WEIGHTS = "--model.init_args.model.init_args.backbone.init_args.weights"


def endless(loader: DataLoader) -> Iterator:
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


def data_rate(loader: DataLoader, warmup_batches: int, batches: int) -> float:
    """Samples/s of ``loader`` after ``warmup_batches`` untimed batches."""
    it = endless(loader)
    for _ in range(warmup_batches):
        next(it)
    samples = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        samples += len(next(it))
    return samples / (time.perf_counter() - t0)


def train_rate(step: Callable[[], None], batch_size: int, warmup_steps: int, steps: int) -> float:
    """Samples/s of ``step()`` (one training step on a fixed batch)."""
    for _ in range(warmup_steps):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def experiment_network(experiment: str, num_classes: int) -> nn.Module:
    """The network of ``experiments/<experiment>`` (what ``lseg fit`` trains), random init."""
    from lightning_seg.cli import build_experiment

    config = REPO / "experiments" / experiment
    task, data = build_experiment(config, f"{WEIGHTS}=null")
    if data.num_classes != num_classes:
        raise ValueError(f"{experiment} has {data.num_classes} classes, the benchmark's data {num_classes}")
    return task.model


def make_step(model: nn.Module, batch) -> Callable[[], None]:
    """A training step on a fixed batch: the network's losses (``model(batch)``), backward, AdamW."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_camvid(args: argparse.Namespace) -> dict:
    from lightning_seg.data.datamodules.camvid import CamVidDataModule
    from lightning_seg.data.transforms import TrainTransform

    size = tuple(args.camvid_size)
    factor = size[0] / 360  # CamVid frames are 360x480: scale range relative to --camvid-size
    dm = CamVidDataModule(
        args.camvid_root,
        val_split_from_train=0.2,  # the shared copy has only train (as benchmarks/camvid.py)
        batch_size=args.batch_size,
        num_workers=args.workers,
        train_transform=TrainTransform(size=size, scale_range=(0.75 * factor, 1.5 * factor), crop=True, seed=0),
        pin_memory=False,
        persistent_workers=True,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    data_sps = data_rate(loader, args.warmup_batches, args.batches)
    batch = next(iter(loader))
    del loader  # stop its workers before timing the model

    torch.manual_seed(0)
    model = experiment_network("deeplabv3plus_r50_camvid_80e.yaml", dm.num_classes)

    train_sps = train_rate(make_step(model, batch), len(batch), args.warmup_steps, args.steps)
    return {
        "camvid_data_sps": round(data_sps, 2),
        "camvid_train_sps": round(train_sps, 2),
        "camvid_ratio": round(data_sps / train_sps, 2),
        "camvid_size": list(size),
        "camvid_model": "experiments/deeplabv3plus_r50_camvid_80e.yaml (OS 16, random init)",
    }


def bench_synthetic_instance(args: argparse.Namespace) -> dict:
    from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
    from lightning_seg.data.transforms import TrainTransform

    h, w = args.synthetic_size
    root = args.synthetic_root or os.path.join(tempfile.gettempdir(), f"lseg_throughput_shapes_{h}x{w}")
    dm = SyntheticShapesDataModule(
        task="instance",
        root=root,
        num_train=args.synthetic_images,
        num_val=4,
        height=h,
        width=w,
        batch_size=args.batch_size,
        num_workers=args.workers,
        train_transform=TrainTransform(size=(h, w), scale_range=(0.75, 1.25), crop=False, seed=0),
        pin_memory=False,
        persistent_workers=True,
    )
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    data_sps = data_rate(loader, args.warmup_batches, args.batches)
    batch = next(iter(loader))
    del loader

    torch.manual_seed(0)
    model = experiment_network("mask_rcnn_r50_fpn_shapes_24e.yaml", dm.num_classes)
    train_sps = train_rate(make_step(model, batch), len(batch), args.warmup_steps, args.steps)
    return {
        "synthetic_instance_data_sps": round(data_sps, 2),
        "synthetic_instance_train_sps": round(train_sps, 2),
        "synthetic_instance_ratio": round(data_sps / train_sps, 2),
        "synthetic_size": [h, w],
        "synthetic_model": "experiments/mask_rcnn_r50_fpn_shapes_24e.yaml (random init)",
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--camvid-root", default=DEFAULT_CAMVID, help="CamVid folder (SegNet layout)")
    p.add_argument("--camvid-size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"), help="crop size")
    p.add_argument(
        "--synthetic-size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"), help="shapes image size"
    )
    p.add_argument("--synthetic-images", type=int, default=64, help="train images of the shapes world")
    p.add_argument("--synthetic-root", default=None, help="where to write the shapes world (default: a temp dir)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads of the training step (1: on a busy 2-core machine 2 threads were ~3x slower)",
    )
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--batches", type=int, default=40, help="timed batches")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--skip-camvid", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {"num_workers": args.workers, "batch_size": args.batch_size, "threads": args.threads}
    if not args.skip_camvid:
        result.update(bench_camvid(args))
        print(f"camvid: {result['camvid_data_sps']} data samples/s, {result['camvid_train_sps']} train samples/s",
              file=sys.stderr, flush=True)
    if not args.skip_synthetic:
        result.update(bench_synthetic_instance(args))
    result["cpu_count"] = os.cpu_count()
    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
