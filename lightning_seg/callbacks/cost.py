"""What a run costs, logged on every run so that each row of a report shows what accuracy costs.

``RunCost`` times every training step and, at the end of training, measures the network on a
fixed batch of the validation data (its first images, eval mode, no gradients):

============================  ====================================================================
``cost/params``               parameters of the network (``cost/trainable_params``: those trained)
``cost/flops``                FLOPs of one image's forward pass (``torch.utils.flop_counter``:
                              a multiply-add counts 2; ops it does not know, e.g. NMS, count 0)
``cost/latency_ms``           median wall time of ``model(batch)`` on ``batch_size`` images, after
                              warm-up (CUDA synchronised)
``cost/train_step_ms``        median wall time of a training step (forward, backward, optimizer
                              step; data loading not included), first steps left out
``cost/input_height/width``   the size of the measured images (FLOPs and latency depend on it)
============================  ====================================================================

They go to every logger as metrics at the last step (``metrics.csv``, the W&B summary). Any
network that follows the contract (``model(batch)``) works; without validation data the
inference measures are skipped with a message.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import fields, replace

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_seg.structures import Batch

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(all, trainable)`` parameter counts (shared tensors counted once)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return total, trainable


def first_images(batch: Batch, n: int) -> Batch:
    """The first ``n`` images of a batch (whole clips for video), every per-image field cut."""
    t = batch.clip_length or 1
    keep = min(len(batch), max(1, n) * t)
    if keep == len(batch):
        return batch
    changes = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, (torch.Tensor, list)) and len(value) == len(batch):
            changes[f.name] = value[:keep]
    return replace(batch, **changes)


def count_flops(model: nn.Module, batch: Batch) -> int:
    """FLOPs of ``model(batch)`` (``torch.utils.flop_counter.FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(batch)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, batch: Batch, warmup: int, repeats: int, budget_s: float) -> list[float]:
    """Wall times (ms) of ``model(batch)`` after ``warmup`` calls; stops early past ``budget_s``
    (at least one timed call)."""
    cuda = batch.images.is_cuda
    for _ in range(warmup):
        model(batch)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(batch.images.device)
        start = time.perf_counter()
        model(batch)
        if cuda:
            torch.cuda.synchronize(batch.images.device)
        took = time.perf_counter() - start
        times.append(1000.0 * took)
        spent += took
        if spent > budget_s:
            break
    return times


class RunCost(Callback):
    """Logs parameter count, FLOPs, inference latency and training step time (module docstring).

    Args:
        batch_size: images of the first validation batch that are measured (1: latency of one
            image).
        warmup: untimed calls before timing.
        repeats: timed calls (their median is logged).
        budget_s: timing stops after this many seconds (slow networks on CPU).
        skip_first_steps: training steps left out of the step time (warm-up, allocator); a
            run with no more steps than this uses them all.
    """

    def __init__(self, batch_size: int = 1, warmup: int = 2, repeats: int = 10, budget_s: float = 5.0,
                 skip_first_steps: int = 2) -> None:
        if batch_size < 1 or repeats < 1 or warmup < 0:
            raise ValueError("batch_size and repeats must be >= 1, warmup >= 0")
        self.batch_size = batch_size
        self.warmup = warmup
        self.repeats = repeats
        self.budget_s = budget_s
        self.skip_first_steps = skip_first_steps
        self.step_ms: list[float] = []
        self._step_start: float | None = None
        self.measured: dict[str, float] = {}

    # ---------------------------------------------------------------- training step time
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step_start is None:
            return
        self._sync(pl_module)
        self.step_ms.append(1000.0 * (time.perf_counter() - self._step_start))
        self._step_start = None

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    # ---------------------------------------------------------------- end of training
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values: dict[str, float] = {}
        network = getattr(pl_module, "model", pl_module)
        values["cost/params"], values["cost/trainable_params"] = map(float, count_parameters(network))
        if self.step_ms:
            steady = self.step_ms[self.skip_first_steps:] or self.step_ms  # short runs: all steps
            values["cost/train_step_ms"] = statistics.median(steady)
        if trainer.global_rank == 0:
            values.update(self._inference_cost(trainer, pl_module, network))
        self.measured = values
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)
        log.info("run cost: %s", ", ".join(f"{k}={v:g}" for k, v in values.items()))

    def _inference_cost(self, trainer, pl_module, network: nn.Module) -> dict[str, float]:
        batch = self._validation_batch(trainer)
        if batch is None:
            print("[lseg] RunCost: no validation data, so FLOPs and latency are not measured", flush=True)
            return {}
        batch = first_images(batch, self.batch_size).to(pl_module.device)
        was_training = network.training
        network.eval()
        out: dict[str, float] = {}
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                flops = count_flops(network, batch)
                times = measure_latency(network, batch, self.warmup, self.repeats, self.budget_s)
            images = len(batch) // (batch.clip_length or 1)
            out["cost/flops"] = flops / max(1, len(batch))
            out["cost/latency_ms"] = statistics.median(times)
            out["cost/latency_images"] = float(images)
            h, w = batch.image_sizes[0]
            out["cost/input_height"], out["cost/input_width"] = float(h), float(w)
        except Exception as exc:  # a measurement must never fail a finished run
            print(f"[lseg] RunCost: FLOPs / latency not measured ({type(exc).__name__}: {exc})", flush=True)
        finally:
            network.train(was_training)
        return out

    @staticmethod
    def _validation_batch(trainer) -> Batch | None:
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.datamodule is not None:
            try:
                loaders = trainer.datamodule.val_dataloader()
            except Exception:  # a DataModule without validation data
                loaders = None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            return None
        try:
            batch = next(iter(loaders))
        except (StopIteration, TypeError):
            return None
        return batch if isinstance(batch, Batch) else None
