"""UPSNet's experiments: the builder is the COCO experiment's network, and each ablation sweep
file names an experiment and parameters that ``lseg`` accepts, every value building the network
the ablation means."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import main
from lightning_seg.layers.deform import DeformConv2d

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("upsnet_*.yaml"))


@pytest.fixture(autouse=True)
def offline_weights(monkeypatch):
    import torchvision

    from lightning_seg.models import weights

    monkeypatch.setattr(weights, "download_state_dict",
                        lambda name, member: torchvision.models.get_model(name, weights=None).state_dict())


def _runs(path: Path) -> list[tuple[str, object]]:
    sweep = yaml.safe_load(path.read_text())
    assert (REPO / sweep["experiment"]).is_file() and sweep["method"] == "grid"
    assert sweep["metric"] == {"name": "val/score", "goal": "maximize"}
    return [(name, value) for name, spec in sweep["parameters"].items() for value in spec["values"]]


def test_the_three_ablations_exist():
    assert [p.stem for p in SWEEPS] == ["upsnet_deformable", "upsnet_panoptic_head",
                                        "upsnet_unknown_class"]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_value_builds_its_network(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    experiment = yaml.safe_load(path.read_text())["experiment"]
    for name, value in _runs(path):
        arg = value if isinstance(value, str) else yaml.safe_dump(value).split("\n")[0]
        net = main(["--config", experiment, f"--{name}", str(arg)], run=False).model.model
        if name.endswith("panoptic_head.class_path"):
            assert type(net.panoptic_head).__name__ == value.rsplit(".", 1)[1]
        elif name.endswith("box_keep_fraction"):
            assert net.panoptic_head.with_unknown == (value < 1)
        else:
            assert any(isinstance(m, DeformConv2d) for m in net.semantic_head.modules()) == value


def test_the_builder_equals_the_coco_experiment(monkeypatch):
    from lightning_seg.cli import build_experiment
    from lightning_seg.models.detectors.upsnet import upsnet_r50_fpn

    monkeypatch.chdir(REPO)
    task, data = build_experiment(REPO / "experiments" / "upsnet_r50_fpn_coco_1x.yaml")
    built = upsnet_r50_fpn(data.info.thing_classes, data.info.stuff_classes,
                           weights_backbone="IMAGENET1K_V1")
    assert repr(built) == repr(task.model)
    shapes = {k: tuple(v.shape) for k, v in task.model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert task.model.box_head.num_classes == 80 and task.model.semantic_head.num_classes == 133
    for name in ("semantic_head", "panoptic_head"):  # the numbers repr does not show

        def numbers(module):
            return {k: v for k, v in vars(module).items() if isinstance(v, (int, float, bool, list))}

        assert numbers(getattr(built, name)) == numbers(getattr(task.model, name)), name
