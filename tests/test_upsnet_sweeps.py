"""UPSNet's ablation sweep files: each names an experiment and parameters that ``lseg``
accepts, and every value builds the network the ablation means."""

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
