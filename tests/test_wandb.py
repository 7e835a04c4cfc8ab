"""W&B offline through the real CLI: no account, no network; config, loss terms, metrics and
prediction images with mask layers end up in the local run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_offline_logs_config_losses_metrics_and_masks(offline, tmp_path, monkeypatch):
    cfg = {
        "model": {"class_path": "lightning_seg.tasks.SemanticSegmentationTask",
                  "init_args": {"model": {"class_path": "lightning_seg.models.detectors.unet.UNet",
                                          "init_args": {"base_channels": 8, "depth": 2}}}},
        "data": {"class_path": "lightning_seg.data.datamodules.synthetic.SyntheticShapesDataModule",
                 "init_args": {"task": "semantic", "root": str(tmp_path / "world"), "num_train": 4,
                               "num_val": 2, "height": 48, "width": 64, "batch_size": 2,
                               "num_workers": 0, "persistent_workers": False, "pin_memory": False}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                               "init_args": {"project": "lightning_seg_test", "save_dir": str(tmp_path)}}},
    }
    config = tmp_path / "wandb.yaml"
    config.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(REPO)
    cli = main(["fit", "--config", str(config)])
    run = cli.trainer.logger.experiment
    try:
        assert run.config["model"]["init_args"]["model"]["class_path"].endswith("UNet")
        summary = dict(run.summary)
        for key in ("train/loss_ce_step", "val/mIoU", "val/score"):
            assert key in summary, sorted(summary)
        media = list(Path(run.dir).glob("media/images/**/*.png"))
        assert media, "no prediction images were logged"
        masks = list(Path(run.dir).glob("media/images/mask/**/*.png"))
        assert masks, "no mask layers were logged"
    finally:
        run.finish()
