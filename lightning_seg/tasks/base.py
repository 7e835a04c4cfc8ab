"""What every task shares: one step for all stages, loss logging, the non-finite guard, hooks.

A task owns training, logging, metrics and pictures, never the maths: it receives a network that
follows the contract of every network in lightning_seg, an optimizer callable and a scheduler
callable::

    model(batch)   (train mode)  -> dict[str, Tensor]   named, already-weighted loss terms
    model(batch)   (eval mode)   -> typed predictions   (lightning_seg.structures.predictions)

``Batch`` moves to the device through Lightning's default transfer, which calls its ``.to()``.

Non-finite losses never reach the weights: a step whose loss terms are not all finite (on any
device) is skipped and counted (``train/nonfinite_steps``, with the terms named in the log),
``max_nonfinite_steps`` consecutive ones stop the run with ``NonFiniteLossError`` (a non-zero
exit of ``lseg``), and a checkpoint with non-finite weights is refused.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.errors import UserError
from lightning_seg.structures import Batch, DatasetInfo
from lightning_seg.structures.dataset_info import require_fact

log = logging.getLogger("lightning_seg.tasks")

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(UserError, RuntimeError):
    """Training stopped: the loss was NaN or infinite for too many consecutive steps."""


class NonFiniteWeightsError(UserError, RuntimeError):
    """A checkpoint would have stored NaN or infinite weights."""


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class BaseTask(L.LightningModule):
    """Base LightningModule of every task family.

    Subclasses create ``self.val_metrics`` / ``self.test_metrics`` (one metric object per stage)
    and implement ``update_metrics`` and ``log_metrics``; pictures and prediction files come from
    ``render_predictions``, ``mask_layers``, ``write_predictions``.

    Args:
        model: the network (see the module docstring for its contract).
        optimizer: callable building the optimizer from the parameters
            (YAML: ``class_path: torch.optim.SGD`` with ``init_args``).
        scheduler: callable building a LR scheduler from the optimizer, or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        max_nonfinite_steps: consecutive skipped (non-finite) steps that stop the run.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/score",
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0
        self._consecutive_nonfinite = 0
        self._skip_update = False

    def set_class_facts(self, num_classes: int | None, info: DatasetInfo | None, required_info: bool = False) -> None:
        """Set ``self.num_classes`` and ``self.info`` from the dataset facts (filled by ``lseg``):
        ``num_classes`` is required; ``info`` too when ``required_info``, else it defaults to
        classes named by their index. Raises when the two disagree."""
        self.num_classes = require_fact(num_classes, "num_classes", type(self).__name__)
        if required_info:
            info = require_fact(info, "info", type(self).__name__)
        self.info = info or DatasetInfo([str(i) for i in range(self.num_classes)])
        if self.info.num_classes != self.num_classes:
            raise ValueError(f"info has {self.info.num_classes} classes, num_classes is {self.num_classes}")

    @staticmethod
    def original_image(batch: Batch, i: int) -> Tensor:
        """Image ``i`` of the batch as uint8 ``Tensor[3, H, W]`` at its original size on disk (the
        frame predictions are returned in), for pictures and overlays."""
        from lightning_seg.visualize import to_uint8_image

        image = to_uint8_image(batch.images[i], batch.image_sizes[i])
        orig = tuple(int(v) for v in batch.meta[i].orig_size)
        if tuple(image.shape[1:]) != orig:
            image = F.interpolate(image[None].float(), size=orig, mode="bilinear",
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        return image

    def save_task_hyperparameters(self) -> None:
        """Save the caller's ``__init__`` arguments as hyperparameters.

        Under ``lseg`` (LightningCLI) the given config is saved, network ``class_path`` included,
        so ``Task.load_from_checkpoint(path)`` rebuilds everything. Built in Python, ``nn.Module``
        arguments are not pickled into the checkpoint: pass them again,
        ``Task.load_from_checkpoint(path, model=net)``.
        """
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        frame = inspect.currentframe().f_back
        ignore = []
        if _given_hyperparameters.get() is None:
            ignore = [k for k, v in frame.f_locals.items() if isinstance(v, nn.Module) and k != "self"]
        self.save_hyperparameters(ignore=ignore, frame=frame, logger=False)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": self.scheduler_monitor,
            },
        }

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Batch):
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses = self.model(batch)
        if not isinstance(losses, dict) or not losses:
            raise TypeError(
                f"{type(self.model).__name__} returned {type(losses).__name__} in training mode; "
                f"a network must return a non-empty dict of named loss terms"
            )
        bad = [name for name, value in losses.items() if not bool(torch.isfinite(value).all())]
        if self._any_rank(bool(bad)):
            return self._skip_step(bad, batch_idx)
        self._consecutive_nonfinite = 0
        return self.log_losses(losses, "train", len(batch))

    def validation_step(self, batch: Batch, batch_idx: int):
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int):
        return self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: Batch, batch_idx: int):
        return self.model(batch)

    def _eval_step(self, batch: Batch, metric):
        predictions = self.model(batch)
        self.update_metrics(metric, batch, predictions)
        return predictions

    def update_metrics(self, metric, batch: Batch, predictions) -> None:
        """Feed one batch of predictions and its targets to a stage's metric object."""
        raise NotImplementedError(f"{type(self).__name__} must implement update_metrics")

    # ------------------------------------------------------------------ non-finite guard
    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is set on any device (all ranks must skip the same steps)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _skip_step(self, bad: list[str], batch_idx: int) -> Tensor:
        """Count a skipped step, stop after too many in a row; return a zero loss whose
        gradients are exactly 0 (every rank still runs backward, as DDP needs)."""
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        self._skip_update = True
        what = ", ".join(bad) if bad else "a loss term on another device"
        if self._consecutive_nonfinite >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"the loss was not finite for {self._consecutive_nonfinite} consecutive steps "
                f"(last: {what}, step {self.global_step}); training stopped. Lower the "
                f"learning rate, add warm-up or gradient clipping (trainer.gradient_clip_val), or "
                f"check the data of these batches. {self.nonfinite_steps} steps were skipped in all."
            )
        if self.nonfinite_steps <= 3 or self._consecutive_nonfinite == 1:
            log.warning("step %d: non-finite loss (%s); the step is skipped", self.global_step, what)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        params = [p for p in self.parameters() if p.requires_grad]
        return sum(p.sum() for p in params) * 0.0 if params else torch.zeros((), device=self.device)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the update of a flagged step, or of a step whose gradients are not finite (the
        loss can be finite while a gradient overflows)."""
        skip = self._skip_update
        self._skip_update = False
        if not skip and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                     if p.grad is not None]
            if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
                skip = True
                self._skip_step(["gradients"], -1)
                self._skip_update = False
        if skip:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # optimizers leave parameters without gradient untouched

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteWeightsError(
                f"refusing to write a checkpoint with non-finite weights ({len(bad)} tensors, e.g. "
                f"{bad[:3]}); the run diverged"
            )

    # ------------------------------------------------------------------ logging
    def log_losses(self, losses: dict[str, Tensor], stage: str, batch_size: int) -> Tensor:
        """Log each named loss term and their sum under ``{stage}/``; return the sum."""
        total = sum(losses.values())
        on_step = stage == "train"
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value.detach(), on_step=on_step, on_epoch=True,
                     batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{stage}/loss", total.detach(), on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=not on_step)
        return total

    # Validation / test metrics: a task creates ``self.val_metrics`` and ``self.test_metrics``
    # (one metric object per stage) and logs the computed dict in ``log_metrics``, including its
    # headline metric as ``{stage}/score`` (what ``experiments/defaults.yaml`` checkpoints on).
    def on_validation_epoch_end(self) -> None:
        self._compute_and_log(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._compute_and_log(self.test_metrics, "test")

    def _compute_and_log(self, metric, stage: str) -> None:
        result = metric.compute()
        metric.reset()
        self.log_metrics(result, stage)

    def log_metrics(self, result: dict, stage: str) -> None:
        """Log the scalar entries of a stage's metric result under ``{stage}/`` (tasks extend it)."""
        for key, value in result.items():
            if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1):
                self.log(f"{stage}/{key}", float(value))

    # Hooks for the visualisation and prediction-writer callbacks; tasks override them.
    def render_predictions(self, batch: Batch, outputs, max_images: int) -> list[Tensor]:
        """uint8 ``Tensor[3, H, W]`` pictures of the predictions of a batch (one per image)."""
        return []

    def mask_layers(self, batch: Batch, outputs, i: int) -> tuple[Tensor, dict[str, Tensor], dict[int, str]]:
        """Image ``i`` with label-map layers for interactive viewers (W&B masks).

        Returns:
            uint8 ``Tensor[3, H, W]`` image, ``{"prediction": Tensor[H, W], "ground_truth": ...}``
            int label maps of that size, and the name of every label value. Empty layers: none.
        """
        return batch.images.new_zeros(3, 1, 1, dtype=torch.uint8), {}, {}

    def write_predictions(self, batch: Batch, outputs, output_dir: Path) -> None:
        """Write the predictions of a batch under ``output_dir`` (``lseg predict``)."""

    def finish_predictions(self, output_dir: Path) -> None:
        """Called once after the last predict batch (e.g. to write a results JSON)."""


def unwrap_network(module: nn.Module) -> nn.Module:
    """The network inside a task (``task.model``), for weight export and benchmarks."""
    return getattr(module, "model", module)
