"""DDP through the real CLI: a 2-process CPU (gloo) fit, then the same checkpoint validated in a
single process must give the same validation metrics (the confusion matrix is summed across
processes, not averaged).

The network has no BatchNorm, so no per-process buffers can make the two runs differ: what is
tested is the metric synchronisation, the distributed sampler and the CLI launch.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    cfg = {
        "model": {
            "class_path": "lightning_seg.tasks.SemanticSegmentationTask",
            "init_args": {
                "model": {
                    "class_path": "lightning_seg.models.detectors.unet.UNet",
                    "init_args": {"base_channels": 8, "depth": 2, "norm_layer": None},
                },
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}},
            },
        },
        "data": {
            "class_path": "lightning_seg.data.datamodules.synthetic.SyntheticShapesDataModule",
            "init_args": {"task": "semantic", "root": str(tmp_path / "world"), "num_train": 8,
                          "num_val": 6, "height": 48, "width": 64, "batch_size": 2,
                          "val_batch_size": 1, "num_workers": 0, "persistent_workers": False,
                          "pin_memory": False},
        },
        "trainer": {
            "accelerator": "cpu", "max_epochs": 1, "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "ddp"}},
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lseg() -> list[str]:
    """The installed ``lseg`` console script (its exit status is checked too), else the module."""
    script = Path(sys.executable).parent / "lseg"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lightning_seg.cli"]


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*_lseg(), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"lseg {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _val_metrics(csv_path: Path) -> dict[str, float]:
    rows = list(csv.DictReader(csv_path.open()))
    last: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("val/") and value not in ("", None):
                last[key] = float(value)
    return last


@pytest.mark.timeout(1200)
def test_ddp_fit_metrics_equal_single_process(tmp_path: Path):
    config = _config(tmp_path)
    _run(["fit", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp"], REPO)
    ddp = _val_metrics(tmp_path / "logs" / "ddp" / "version_0" / "metrics.csv")
    ckpt = tmp_path / "logs" / "ddp" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    _run(["validate", "--config", str(config), "--trainer.devices", "1", "--ckpt_path", str(ckpt)], REPO)
    single = _val_metrics(tmp_path / "logs" / "ddp" / "version_1" / "metrics.csv")

    for key in ("val/mIoU", "val/pixel_acc", "val/fwIoU"):
        assert key in ddp and key in single, (sorted(ddp), sorted(single))
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), (key, ddp[key], single[key])
    assert 0.0 <= ddp["val/mIoU"] <= 1.0
