"""Every experiment resolves with its own data block and trains one step.

1. Each experiment file (fragments stacked) is parsed and instantiated through the real CLI
   (``run=False``) with the DataModule it names: every class path and argument is checked, the
   dataset facts are filled into the network, and pretrained weights go through the real loading
   code (the download is replaced by torchvision's randomly initialised weights: no network).
2. The one-step fit swaps the data for a tiny synthetic shapes world of the same task (real data
   is not on every machine): by default for the synthetic-world experiments (the full-size VGG16
   FCNs included, about 15 s each on a CPU) and the quickstart, under ``-m slow`` for the
   real-dataset variants (same networks, other data).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import expand_fragments, main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("*.yaml") if p.name != "defaults.yaml")
FRAGMENTS = sorted(p for d in ("models", "data", "schedules") for p in (REPO / "experiments" / d).glob("*.yaml"))
TASKS = {
    "lightning_seg.tasks.SemanticSegmentationTask": "semantic",
    "lightning_seg.tasks.InstanceSegmentationTask": "instance",
    "lightning_seg.tasks.KeypointTask": "keypoints",
    "lightning_seg.tasks.PanopticSegmentationTask": "panoptic",
}
SYNTHETIC = ("SyntheticShapesDataModule", "SyntheticKeypointDataModule")


@pytest.fixture(autouse=True)
def offline_weights(monkeypatch):
    """Pretrained weights come from torchvision's random init instead of a download."""
    import torchvision

    from lightning_seg.models import weights

    monkeypatch.setattr(
        weights, "download_state_dict",
        lambda name, member: torchvision.models.get_model(name, weights=None).state_dict(),
    )


def resolved(path: Path) -> dict:
    """The experiment with its fragments merged (as ``--config`` stacking does), as a dict."""
    args = expand_fragments(["--config", str(path)])
    merged: dict = {}
    for value in args[1::2]:
        text = value if "\n" in value else Path(value).read_text()
        _merge(merged, yaml.safe_load(text) or {})
    return merged


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _is_synthetic(path: Path) -> bool:
    return resolved(path)["data"]["class_path"].endswith(SYNTHETIC)


def test_experiments_exist():
    assert (REPO / "experiments" / "defaults.yaml").is_file()
    assert (REPO / "experiments" / "quickstart.yaml").is_file()
    assert len(EXPERIMENTS) >= 25 and len(FRAGMENTS) >= 15


@pytest.mark.parametrize("path", FRAGMENTS, ids=[f"{p.parent.name}/{p.stem}" for p in FRAGMENTS])
def test_every_fragment_is_used(path: Path):
    used = {Path(f).resolve() for exp in EXPERIMENTS
            for f in (yaml.safe_load(exp.read_text()) or {}).get("fragments", [])
            if (exp.parent / f).resolve() == path.resolve()}
    assert used, f"{path} is used by no experiment"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_resolves_with_its_own_data(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = main(["--config", str(path)], run=False)
    data_class = resolved(path)["data"]["class_path"]
    assert f"{type(cli.datamodule).__module__}.{type(cli.datamodule).__name__}".endswith(
        data_class.rsplit(".", 1)[-1])
    assert cli.model.num_classes == cli.datamodule.num_classes
    assert cli.trainer.logger.name == path.stem  # the run is named after the experiment


def test_a_bogus_data_block_fails(tmp_path: Path, monkeypatch):
    """What the old test (which swapped every data block) let through."""
    monkeypatch.chdir(REPO)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "fragments": [str(REPO / "experiments" / "models" / "unet_same.yaml")],
        "data": {"class_path": "lightning_seg.data.datamodules.CamVidDataModule",
                 "init_args": {"root": "x", "no_such_argument": 3}},
    }))
    with pytest.raises(SystemExit):
        main(["--config", str(bad)], run=False)


def _smoke_config(path: Path, world: Path, out: Path) -> Path:
    cfg = resolved(path)
    task = TASKS[cfg["model"]["class_path"]]
    cfg["data"] = {
        "class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule",
        "init_args": {"task": task, "root": str(world / task), "num_train": 4, "num_val": 2,
                      "height": 64, "width": 96, "batch_size": 2, "num_workers": 0,
                      "persistent_workers": False, "pin_memory": False},
    }
    if task == "keypoints":  # top-down crops of the same world (64 x 64 suits every network)
        args = cfg["data"]["init_args"]
        del args["task"]
        args["input_size"] = [64, 64]
        cfg["data"]["class_path"] = "lightning_seg.data.datamodules.SyntheticKeypointDataModule"
        cfg["model"]["init_args"]["metrics"] = ["pck", "oks"]  # the world has no head / eye norms
    trainer = cfg.setdefault("trainer", {})
    for key in ("devices", "strategy", "precision"):
        trainer.pop(key, None)
    trainer.update({"fast_dev_run": 1, "default_root_dir": str(out), "accelerator": "cpu"})
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(out), "name": path.stem}}
    smoke = out / f"{path.stem}.yaml"
    smoke.write_text(yaml.safe_dump(cfg))
    return smoke


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


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


def _builders():
    from lightning_seg.models.detectors.deeplab import deeplabv3_resnet50, deeplabv3plus_resnet50
    from lightning_seg.models.detectors.fcn import fcn8s_vgg16
    from lightning_seg.models.detectors.mask_rcnn import mask_rcnn_r50_fpn

    pretrained = "IMAGENET1K_V1"
    return {
        "deeplabv3_r50_camvid_80e": lambda k: deeplabv3_resnet50(k, weights_backbone=pretrained),
        "deeplabv3plus_r50_camvid_80e": lambda k: deeplabv3plus_resnet50(k, weights_backbone=pretrained),
        "fcn8s_vgg16_camvid_80e": lambda k: fcn8s_vgg16(k, weights=pretrained),
        "mask_rcnn_r50_fpn_coco_1x": lambda k: mask_rcnn_r50_fpn(k, weights_backbone=pretrained),
    }


@pytest.mark.parametrize("experiment", sorted(_builders()))
def test_builders_equal_the_experiments(experiment: str, monkeypatch):
    """A convenience builder and the experiment users run describe the same network (the
    DeepLab v3+ builder once had multi-grid (1, 2, 4) and the experiments not)."""
    from lightning_seg.cli import build_experiment

    monkeypatch.chdir(REPO)
    task, data = build_experiment(REPO / "experiments" / f"{experiment}.yaml")
    built = _builders()[experiment](data.num_classes)
    assert repr(built) == repr(task.model)
    shapes = {k: tuple(v.shape) for k, v in task.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}
