"""The prototype diagnostics (effective rank, coefficient saturation, prototype grid) and the
failure-mode pictures of YOLACT."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_maskrcnn import _blob_batch, batch_of
from test_yolact import tiny_yolact

from lightning_seg.callbacks.prototypes import (
    PrototypeDiagnostics,
    coefficient_stats,
    effective_rank,
    failure_mode_pictures,
    prototype_diagnostics,
    prototype_grid,
)


def test_effective_rank_hand_values():
    eye = torch.zeros(4, 3, 3)
    for i in range(4):
        eye[i].view(-1)[i] = 2.0  # 4 orthogonal prototypes of equal energy
    assert abs(effective_rank(eye) - 4.0) < 1e-9
    same = torch.rand(1, 5, 5).expand(6, 5, 5) * torch.arange(1, 7.0)[:, None, None]  # rank one
    assert abs(effective_rank(same) - 1.0) < 1e-6
    two = torch.zeros(2, 1, 2)
    two[0, 0, 0], two[1, 0, 1] = 3.0, 1.0  # singular values 3, 1: p = (3/4, 1/4)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    expected = torch.exp(-(p * p.log()).sum())
    assert abs(effective_rank(two) - float(expected)) < 1e-9
    assert effective_rank(torch.zeros(3, 4, 4)) == 0.0


def test_coefficient_stats_and_grid():
    c = torch.tensor([[0.995, -0.5], [-1.0, 0.1]])
    stats = coefficient_stats(c)
    assert stats["saturated"] == 0.5 and abs(stats["mean_abs"] - (0.995 + 0.5 + 1.0 + 0.1) / 4) < 1e-6
    assert coefficient_stats(torch.zeros(0, 8)) == {"saturated": 0.0, "mean_abs": 0.0}
    protos = torch.zeros(5, 4, 6)
    protos[2, 1, 1] = 7.0
    protos[2, 0, 0] = 3.5
    grid = prototype_grid(protos, gap=2)
    assert grid.shape == (3, 2 * 4 + 2, 3 * 6 + 4) and grid.dtype == torch.uint8  # 3 columns, 2 rows
    tile = grid[0, 0:4, 2 * (6 + 2) : 2 * (6 + 2) + 6]  # prototype 2: row 0, column 2
    assert tile[1, 1] == 255 and tile[0, 0] == 128 and tile.sum() == 255 + 128


def test_diagnostics_of_a_yolact_batch_and_failure_pictures():
    model = tiny_yolact().eval()
    images, sizes, targets = _blob_batch([(96, 96), (96, 96)], [3, 1], seed=4)
    batch = batch_of(images, sizes, targets)
    stats, protos = prototype_diagnostics(model, batch)
    assert protos.shape == (32, 24, 24)
    assert 1.0 <= stats["proto/effective_rank"] <= 32 and stats["proto/k"] == 32
    assert 0 <= stats["coeff/saturated"] <= 1 and 0 < stats["coeff/mean_abs"] < 1
    pictures = failure_mode_pictures(model, batch)
    assert set(pictures) == {"leakage", "crowded"}
    assert pictures["leakage"].dtype == torch.uint8 and pictures["leakage"].shape[0] == 3
    assert pictures["crowded"].shape[1] == 96  # ground truth | predictions of the 3-object image


def test_callback_logs_to_csv_and_saves_the_grid(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
    from lightning_seg.tasks import InstanceSegmentationTask

    data = SyntheticShapesDataModule(task="instance", root=str(tmp_path / "world"), num_train=2, num_val=2,
                                     height=64, width=64, batch_size=2, num_workers=0,
                                     persistent_workers=False, pin_memory=False)
    task = InstanceSegmentationTask(tiny_yolact(num_classes=4), num_classes=4)
    callback = PrototypeDiagnostics()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, num_sanity_val_steps=0, callbacks=[callback],
                        logger=CSVLogger(tmp_path, name="diag"), enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.fit(task, datamodule=data)
    assert callback.last_path is not None and callback.last_path.is_file()
    assert set(callback.last_stats) >= {"proto/effective_rank", "coeff/saturated"}
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert "proto/effective_rank" in metrics and "coeff/saturated" in metrics
