"""Every experiment YAML parses through the real CLI and trains one step on synthetic data.

The dataset of each experiment is swapped for a tiny synthetic shapes world of the same task, and
pretrained weights are switched off (no download): what is checked is that every class path and
argument in the file exists and that the model, task and data fit together.

Every file is parsed and instantiated (``run=False``) in the default suite; the one-step fit runs
by default for the synthetic-world experiments (the full-size VGG16 FCNs included: about 15 s
each on a CPU since fc6's backward avoids oneDNN) and the quickstart, and for the real-dataset
variants (same networks, other data) under ``-m slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("**/*.yaml") if p.name != "defaults.yaml")
TASKS = {
    "lightning_seg.tasks.SemanticSegmentationTask": "semantic",
    "lightning_seg.tasks.InstanceSegmentationTask": "instance",
}


def _strip_weights(node) -> None:
    """Set every pretrained-weights argument to None, in place."""
    if isinstance(node, dict):
        for key in list(node):
            if key in ("weights", "weights_backbone", "weights_path"):
                node[key] = None
            else:
                _strip_weights(node[key])
    elif isinstance(node, list):
        for item in node:
            _strip_weights(item)


def _smoke_config(path: Path, world: Path, out: Path) -> Path:
    cfg = yaml.safe_load(path.read_text())
    _strip_weights(cfg)
    task = TASKS[cfg["model"]["class_path"]]
    cfg["data"] = {
        "class_path": "lightning_seg.data.datamodules.synthetic.SyntheticShapesDataModule",
        "init_args": {"task": task, "root": str(world / task), "num_train": 4, "num_val": 2,
                      "height": 64, "width": 96, "batch_size": 2, "num_workers": 0,
                      "persistent_workers": False, "pin_memory": False},
    }
    trainer = cfg.setdefault("trainer", {})
    trainer.update({"fast_dev_run": 1, "default_root_dir": str(out), "accelerator": "cpu"})
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(out), "name": path.stem}}
    smoke = out / f"{path.stem}.yaml"
    smoke.write_text(yaml.safe_dump(cfg))
    return smoke


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def test_experiments_exist():
    assert (REPO / "experiments" / "defaults.yaml").is_file()
    assert (REPO / "experiments" / "quickstart.yaml").is_file()
    assert len(EXPERIMENTS) >= 10


def _is_synthetic(path: Path) -> bool:
    data = yaml.safe_load(path.read_text())["data"]["class_path"]
    return data.endswith("SyntheticShapesDataModule")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_parses_and_instantiates(path: Path, world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = main(["--config", str(_smoke_config(path, world, tmp_path))], run=False)
    assert cli.model.num_classes == cli.datamodule.num_classes


STEP_CASES = [
    pytest.param(p, id=p.stem, marks=() if _is_synthetic(p) else pytest.mark.slow) for p in EXPERIMENTS
]


@pytest.mark.parametrize("path", STEP_CASES)
def test_experiment_runs_one_step(path: Path, world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)  # experiments/defaults.yaml is read relative to the working directory
    cli = main(["fit", "--config", str(_smoke_config(path, world, tmp_path))])
    assert cli.trainer.state.finished, f"{path.name}: fit did not finish"
    logged = cli.trainer.logged_metrics
    assert "train/loss" in logged or "train/loss_step" in logged, sorted(logged)
