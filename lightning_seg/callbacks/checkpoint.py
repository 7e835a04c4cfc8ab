"""The default checkpoint callback: the best checkpoint by ``val/score`` and a ``last.ckpt`` that is
always the latest state."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every save point.

    Lightning's ``ModelCheckpoint`` (2.5 and later) rewrites ``last.ckpt`` only when it has just
    written a top-k checkpoint, so after a validation that does not improve the monitored metric
    ``last.ckpt`` stays at the previous best step and resuming from it silently repeats training.
    This subclass also writes it when no top-k checkpoint was written; the arguments are
    ``ModelCheckpoint``'s.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer) -> None:
        if (self.save_last and not self._should_skip_saving_checkpoint(trainer)
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
