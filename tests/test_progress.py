"""PlainProgress: the printed rates use the stage's own clock (validation runs inside the epoch)."""

from __future__ import annotations

from types import SimpleNamespace

from lightning_seg.callbacks import progress
from lightning_seg.callbacks.progress import PlainProgress


def test_train_rate_is_not_reset_by_validation(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(PlainProgress, "total_train_batches", 20)
    monkeypatch.setattr(PlainProgress, "total_val_batches", 4)
    bar = PlainProgress(every_n_seconds=1e9)
    bar.get_metrics = lambda trainer, module: {"train/loss": 0.5}
    trainer = SimpleNamespace(global_rank=0, current_epoch=3, sanity_checking=False,
                              lightning_module=None)

    bar.on_train_epoch_start(trainer, None)
    for i in range(20):
        clock[0] += 0.5  # 2 it/s of training
        bar.on_train_batch_end(trainer, None, None, None, i)
    bar.on_validation_epoch_start(trainer, None)
    for i in range(4):
        clock[0] += 0.25  # 4 it/s of validation
        bar.on_validation_batch_end(trainer, None, None, None, i)
    bar.on_validation_end(trainer, None)
    bar.on_train_epoch_end(trainer, None)

    val_line, train_line = capsys.readouterr().out.strip().splitlines()
    assert val_line == "epoch 3 | val 4/4 | 4.00 it/s | train/loss 0.5"
    # 20 batches over the 11 s since the epoch began (10 s of training + 1 s of validation)
    assert train_line == "epoch 3 | train 20/20 | 1.82 it/s | train/loss 0.5"
