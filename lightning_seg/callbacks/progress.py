"""Progress reporting that suits where it runs: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


class PlainProgress(ProgressBar):
    """Prints one line every ``every_n_seconds`` (and at each epoch end) instead of a live bar.

    Meant for logs, CI and SLURM jobs, where a redrawn bar turns into megabytes of carriage
    returns. Lines look like ``epoch 2 | train 120/200 | 3.4 it/s | train/loss 0.412``.
    """

    def __init__(self, every_n_seconds: float = 20.0) -> None:
        super().__init__()
        self.every_n_seconds = every_n_seconds
        self._enabled = True
        self._last = 0.0
        self._train_start = 0.0  # validation runs inside the training epoch: separate clocks
        self._eval_start = 0.0
        self._done = 0
        self._train_done = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer, stage: str, done: int, total) -> None:
        if not self._enabled or trainer.global_rank != 0:
            return
        start = self._train_start if stage == "train" else self._eval_start
        elapsed = max(time.monotonic() - start, 1e-9)
        metrics = self.get_metrics(trainer, trainer.lightning_module)
        shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in metrics.items() if k != "v_num")
        total_s = "?" if total in (None, float("inf")) else int(total)
        print(f"epoch {trainer.current_epoch} | {stage} {done}/{total_s} | {done / elapsed:.2f} it/s"
              + (f" | {shown}" if shown else ""), flush=True)
        self._last = time.monotonic()

    def _tick(self, trainer, stage: str, done: int, total) -> None:
        if time.monotonic() - self._last >= self.every_n_seconds:
            self._print(trainer, stage, done, total)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._train_start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._train_done = batch_idx + 1
        self._tick(trainer, "train", self._train_done, self.total_train_batches)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._print(trainer, "train", self._train_done, self.total_train_batches)

    def _start_eval(self, *args) -> None:
        self._eval_start = self._last = time.monotonic()
        self._done = 0

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _start_eval

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._done = batch_idx + 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._print(trainer, "val", self._done, self.total_val_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._done = batch_idx + 1
        self._tick(trainer, "test", self._done, sum(trainer.num_test_batches))

    def on_test_end(self, trainer, pl_module) -> None:
        self._print(trainer, "test", self._done, sum(trainer.num_test_batches))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._done = batch_idx + 1
        self._tick(trainer, "predict", self._done, sum(trainer.num_predict_batches))


def default_progress_bar() -> ProgressBar:
    """A ``RichProgressBar`` when stdout is a terminal, else ``PlainProgress``."""
    if sys.stdout.isatty():
        return RichProgressBar()
    return PlainProgress()
