"""What the CLI tests share: experiment configs written part by part, and ``lseg fit`` through the
real CLI from the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import main

REPO = Path(__file__).resolve().parents[1]
#: the FPN levels the tiny detectors pool from
LEVELS = ["p2", "p3", "p4", "p5"]


def part(class_path: str, **init_args) -> dict:
    """A ``class_path`` / ``init_args`` entry of a config."""
    return {"class_path": class_path, "init_args": init_args}


def shapes_data(task: str, root: Path, **overrides) -> dict:
    """The synthetic shapes world for ``task``, tiny (4 training and 2 validation images of
    64 x 96, batch 2, no workers), written under ``root``; ``overrides`` change or add init args."""
    init_args = {"task": task, "root": str(root), "num_train": 4, "num_val": 2, "height": 64,
                 "width": 96, "batch_size": 2, "num_workers": 0, "persistent_workers": False,
                 "pin_memory": False, **overrides}
    return part("lightning_seg.data.datamodules.synthetic.SyntheticShapesDataModule", **init_args)


def write_config(folder: Path, name: str, model: dict, data: dict, **trainer) -> Path:
    """``folder/<name>.yaml``: the task ``model`` and DataModule ``data`` with a CPU trainer of one
    epoch, no sanity validation, CSV logs in ``folder/logs/<name>``; ``trainer`` overrides or adds
    trainer arguments."""
    cfg = {
        "model": model,
        "data": data,
        "trainer": {
            "accelerator": "cpu", "max_epochs": 1, "num_sanity_val_steps": 0,
            "default_root_dir": str(folder),
            "logger": part("lightning.pytorch.loggers.CSVLogger", save_dir=str(folder / "logs"), name=name),
            **trainer,
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(config: Path):
    """``lseg fit --config config`` from the repository root: the CLI and the run folder."""
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)
    try:
        cli = main(["fit", "--config", str(config)])
    finally:
        mp.undo()
    return cli, config.parent / "logs" / config.stem / "version_0"
