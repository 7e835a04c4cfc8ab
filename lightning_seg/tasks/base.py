"""What every task shares: optimizer/scheduler callables, loss logging, prediction hooks.

``Batch`` moves to the device through Lightning's default transfer, which calls its ``.to()``.

A task owns training (steps, logging, metrics, predictions), never the maths: it receives the
network built from parts, an optimizer callable and a scheduler callable (``STYLE.md`` 9).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from lightning_seg.structures import Batch

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class BaseTask(L.LightningModule):
    """Base LightningModule: optimizer wiring, device transfer of ``Batch`` and loss logging.

    Args:
        optimizer: callable building the optimizer from the parameters
            (YAML: ``class_path: torch.optim.SGD`` with ``init_args``).
        scheduler: callable building a LR scheduler from the optimizer, or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor

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
