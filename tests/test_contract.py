"""The contract every network and task shares, and the faults found by probing the CLI.

Dataset facts reach only the constructors that take them; ``null`` on the command line is None;
unreadable checkpoints and unavailable weights give one clear message; a diverging run stops with
an error instead of saving NaN weights; structures move and select field by field.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import Namespace

from lightning_seg.cli import CheckpointError, fill_dataset_facts, main, restore_cli_nulls
from lightning_seg.models.weights import WeightsUnavailableError
from lightning_seg.structures import (
    Batch,
    DatasetInfo,
    InstanceTargets,
    KeypointTargets,
    PanopticTargets,
)
from lightning_seg.structures.dataset_info import dataset_facts
from lightning_seg.tasks.base import NonFiniteLossError, NonFiniteWeightsError

REPO = Path(__file__).resolve().parents[1]
BACKBONE_WEIGHTS = "--model.init_args.model.init_args.backbone.init_args.weights"


# ------------------------------------------------------------------ dataset facts
def _node(class_path: str, **init_args) -> Namespace:
    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def test_facts_reach_only_the_constructors_that_take_them():
    info = DatasetInfo(["a", "b", "c"], ignore_index=7, keypoint_names=["l", "r"],
                       keypoint_flip_map=[(0, 1)])
    cfg = _node(
        "lightning_seg.tasks.InstanceSegmentationTask",
        model=_node(
            "lightning_seg.models.detectors.MaskRCNN",
            backbone=_node("lightning_seg.models.backbones.ResNetBackbone", depth=18),
            box_head=_node("lightning_seg.models.heads.BoxRoIHead", fc_dim=16),
            criterion=[_node("lightning_seg.models.losses.CrossEntropyLoss")],
        ),
    )
    fill_dataset_facts(cfg, dataset_facts(info))
    assert cfg.init_args.num_classes == 3 and cfg.init_args.info.class_names == ["a", "b", "c"]
    net = cfg.init_args.model.init_args
    assert "num_classes" not in net  # MaskRCNN takes no fact itself
    assert net.box_head.init_args.num_classes == 3
    assert "num_keypoints" not in net.box_head.init_args and "ignore_index" not in net.backbone.init_args
    assert net.criterion[0].init_args.ignore_index == 7  # lists are walked too


def test_a_fact_set_against_the_data_is_an_error():
    cfg = _node("lightning_seg.models.heads.BoxRoIHead", num_classes=5)
    with pytest.raises(ValueError, match=r"model.init_args.num_classes is 5 but the DataModule gives 3"):
        fill_dataset_facts(cfg, dataset_facts(DatasetInfo(["a", "b", "c"])))
    same = _node("lightning_seg.models.heads.BoxRoIHead", num_classes=3)
    fill_dataset_facts(same, dataset_facts(DatasetInfo(["a", "b", "c"])))


def test_the_info_a_config_holds_leaves_out_what_it_generates():
    """LVIS's 1203 classes: jsonargparse type-checked the generated palette element by element at
    every parse and dump, about 50 of the 60 seconds `lseg` took to start an LVIS run."""
    names = [f"c{i}" for i in range(1203)]
    info = DatasetInfo(names, category_ids=list(range(1, 1204)))
    held = info.as_config()
    assert held["palette"] == [] and held["isthing"] == [] and held["category_ids"] == list(range(1, 1204))
    assert DatasetInfo(**held) == info
    custom = DatasetInfo(["a", "b"], isthing=[True, False], palette=[(1, 2, 3), (4, 5, 6)])
    assert DatasetInfo(**custom.as_config()) == custom and custom.as_config()["palette"] == [(1, 2, 3), (4, 5, 6)]

    task = _node("lightning_seg.tasks.InstanceSegmentationTask")
    fill_dataset_facts(task, dataset_facts(info))
    assert task.init_args.info.palette == [] and task.init_args.info.class_names == names
    # a config saved before spells the generated fields out: still the same info
    spelled = Namespace(**{f: getattr(info, f) for f in held})
    spelled.palette = [list(c) for c in info.palette]  # as YAML reads it back
    fill_dataset_facts(_node("lightning_seg.tasks.InstanceSegmentationTask", info=spelled), dataset_facts(info))
    other = Namespace(**{**vars(spelled), "palette": [[0, 0, 0]] * 1203})
    with pytest.raises(ValueError, match="info is {'palette': ") as error:
        fill_dataset_facts(_node("lightning_seg.tasks.InstanceSegmentationTask", info=other), dataset_facts(info))
    assert "class_names" not in str(error.value)  # only the fields that differ, not 1203 names


def test_cli_null_restores_none_in_nested_classes():
    cfg = Namespace(model=_node("T", model=_node("M", backbone=_node("B", weights="None", x="None"))))
    restore_cli_nulls(cfg, ["model.init_args.model.init_args.backbone.init_args.weights",
                            "model.model.backbone.x"])
    backbone = cfg.model.init_args.model.init_args.backbone.init_args
    assert backbone.weights is None and backbone.x is None


# ------------------------------------------------------------------ the CLI, end to end
def _tiny_config(tmp_path: Path, **optimizer) -> Path:
    cfg = {
        "model": {
            "class_path": "lightning_seg.tasks.SemanticSegmentationTask",
            "init_args": {
                "model": {"class_path": "lightning_seg.models.detectors.DeepLabV3Plus",
                          "init_args": {
                              "backbone": {"class_path": "lightning_seg.models.backbones.ResNetBackbone",
                                           "init_args": {"depth": 18, "num_blocks": [1, 1, 1, 1],
                                                         "out_features": ["c2", "c5"],
                                                         "weights": "IMAGENET1K_V1"}},
                              "decoder_channels": 16, "aspp_channels": 16, "low_level_channels": 8}},
                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01, **optimizer}},
            },
        },
        "data": {
            "class_path": "lightning_seg.data.datamodules.SyntheticShapesDataModule",
            "init_args": {"task": "semantic", "root": str(tmp_path / "world"), "num_train": 4,
                          "num_val": 2, "height": 64, "width": 96, "batch_size": 2,
                          "num_workers": 0, "persistent_workers": False, "pin_memory": False},
        },
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "num_sanity_val_steps": 0,
                    "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs")}}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_weights_null_on_the_command_line_and_offline_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _tiny_config(tmp_path)
    cli = main(["--config", str(config), BACKBONE_WEIGHTS, "null"], run=False)
    assert cli.model.model.backbone is not None  # built from scratch, no KeyError: 'None'

    from lightning_seg.models import weights

    def offline(name, member):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(weights, "download_state_dict", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        main(["--config", str(config)], run=False)
    message = str(info.value)
    assert "resnet18" in message and "IMAGENET1K_V1" in message and "weights: null" in message
    assert "Union subtypes" not in message  # not jsonargparse's wrapper


def test_unreadable_checkpoints_name_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        main(["fit", "--config", str(config), BACKBONE_WEIGHTS, "null",
              "--ckpt_path", str(tmp_path / "missing.ckpt")])
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    with pytest.raises(CheckpointError, match=r"last.ckpt \(204 bytes\).*truncated"):
        main(["fit", "--config", str(config), BACKBONE_WEIGHTS, "null",
              "--ckpt_path", str(truncated)])


def test_last_checkpoint_is_the_latest_state_when_the_score_does_not_improve(tmp_path, monkeypatch):
    """lr 0: validation never improves after epoch 0, so no best checkpoint is written later;
    last.ckpt must still hold the final step (Lightning's own ModelCheckpoint leaves it at the
    best step, and resuming from it would repeat training)."""
    monkeypatch.chdir(REPO)
    config = _tiny_config(tmp_path)
    cli = main(["fit", "--config", str(config), BACKBONE_WEIGHTS, "null",
                "--model.init_args.optimizer.init_args.lr", "0", "--trainer.max_epochs", "3"])
    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == ["best-000.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == cli.trainer.global_step == 6
    assert last["epoch"] == 2


def test_a_diverging_run_stops_without_saving_nan_weights(tmp_path, monkeypatch):
    """lr 1e6: the loss is NaN within a few steps; each such step is skipped and counted, and
    the run stops with the cause instead of finishing with NaN weights saved as best/last."""
    monkeypatch.chdir(REPO)
    config = _tiny_config(tmp_path)
    with pytest.raises(NonFiniteLossError, match="not finite for 3 consecutive steps"):
        main(["fit", "--config", str(config), BACKBONE_WEIGHTS, "null",
              "--model.init_args.optimizer.init_args.lr", "1e6",
              "--model.init_args.max_nonfinite_steps", "3",
              "--data.init_args.num_train", "16", "--trainer.max_epochs", "3"])
    for ckpt in tmp_path.glob("logs/**/*.ckpt"):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_console_script_exit_status_on_divergence(tmp_path):
    config = _tiny_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "from lightning_seg.cli import console_main; console_main()",
         "fit", "--config", str(config), BACKBONE_WEIGHTS, "null",
         "--model.init_args.optimizer.init_args.lr", "1e6", "--model.init_args.max_nonfinite_steps", "2",
         "--data.init_args.num_train", "16", "--trainer.max_epochs", "3",
         "--trainer.enable_progress_bar", "false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "lseg: error: the loss was not finite" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_checkpoint_with_nan_weights_is_refused():
    from lightning_seg.models.detectors import UNet
    from lightning_seg.tasks import SemanticSegmentationTask

    task = SemanticSegmentationTask(UNet(3, base_channels=4, depth=1), num_classes=3)
    state = task.state_dict()
    task.on_save_checkpoint({"state_dict": state})  # finite: fine
    state["model.classifier.bias"][0] = math.nan
    with pytest.raises(NonFiniteWeightsError, match="model.classifier.bias"):
        task.on_save_checkpoint({"state_dict": state})


# ------------------------------------------------------------------ structures
def test_structures_select_and_move_field_by_field():
    t = InstanceTargets(
        boxes=torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]]), labels=torch.tensor([0, 1, 2]),
        image_size=(4, 5), masks=torch.zeros(3, 4, 5, dtype=torch.bool), iscrowd=torch.tensor([False, True, False]),
        keypoints=torch.rand(3, 2, 3), track_ids=torch.tensor([7, 8, 9]),
    )
    kept = t.select(~t.iscrowd)
    assert kept.track_ids.tolist() == [7, 9] and kept.masks.shape == (2, 4, 5)
    assert kept.keypoints.shape == (2, 2, 3) and kept.image_size == (4, 5)

    seg = torch.tensor([[1, 1, 2], [3, 3, 0]])
    pan = PanopticTargets(seg, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]),
                          torch.tensor([True, True, False]), torch.zeros(3, dtype=torch.bool))
    two = pan.select(torch.tensor([0, 2]))
    assert two.ids.tolist() == [1, 3] and two.segment_map.tolist() == [[1, 1, 0], [3, 3, 0]]

    kp = KeypointTargets(torch.rand(2, 5, 3), (8, 8), boxes=torch.rand(2, 4), weights=torch.ones(2, 5))
    assert kp.select(torch.tensor([1])).weights.shape == (1, 5)
    with pytest.raises(ValueError, match="weights must be Tensor"):
        KeypointTargets(torch.rand(2, 5, 3), (8, 8), weights=torch.ones(2, 4))

    batch = Batch.from_images([torch.rand(3, 4, 5)], instances=[t])
    batch = Batch(batch.images, batch.image_sizes, batch.meta, instances=batch.instances, keypoints=[kp])
    moved = batch.to("meta")
    assert moved.images.device.type == "meta" and moved.instances[0].masks.device.type == "meta"
    assert moved.keypoints[0].keypoints.device.type == "meta" and moved.meta == batch.meta


def test_clips_are_typed():
    batch = Batch.from_images([torch.rand(3, 4, 4)] * 6)
    clips = Batch(batch.images, batch.image_sizes, batch.meta, clip_length=3)
    assert clips.num_clips == 2 and list(clips.clip_rows(1)) == [3, 4, 5]
    with pytest.raises(ValueError, match="cannot hold clips of 4 frames"):
        Batch(batch.images, batch.image_sizes, batch.meta, clip_length=4)


# ------------------------------------------------------------------ semantic networks
def test_border_weighted_loss_switches_on_from_yaml(tmp_path, monkeypatch):
    """U-Net's border-weighted cross-entropy is the network's criterion, a YAML switch; the
    dataset's thing classes are its objects."""
    monkeypatch.chdir(REPO)
    config = _tiny_config(tmp_path)
    cli = main(["fit", "--config", str(config),
                "--model.init_args.model", "lightning_seg.models.detectors.UNet",
                "--model.init_args.model.init_args.base_channels", "4",
                "--model.init_args.model.init_args.depth", "2",
                "--model.init_args.model.init_args.criterion",
                "lightning_seg.models.losses.BorderWeightedCrossEntropy",
                "--trainer.fast_dev_run", "1"])
    criterion = cli.model.model.criterion
    assert type(criterion).__name__ == "BorderWeightedCrossEntropy"
    assert criterion.thing_classes == [0, 1, 2, 3]  # circle..star: the synthetic world's things
    logged = {k: float(v) for k, v in cli.trainer.logged_metrics.items() if k.startswith("train/loss_ce")}
    assert logged and all(math.isfinite(v) for v in logged.values()), logged


def test_connected_components_and_border_weights():
    from lightning_seg.models.losses.semantic import connected_components

    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    comp = connected_components(mask)
    groups = {tuple(sorted(map(tuple, torch.nonzero(comp == c).tolist()))) for c in comp.unique() if c > 0}
    assert groups == {((0, 0), (0, 1), (1, 1)), ((0, 3), (1, 3)), ((3, 0),), ((3, 2), (3, 3))}
    assert (comp[~mask] == 0).all()


def test_sliding_window_inference_in_eval_mode():
    from lightning_seg.models.detectors import UNet

    torch.manual_seed(0)
    net = UNet(3, base_channels=4, depth=1).eval()
    batch = Batch.from_images([torch.rand(3, 20, 30)])
    whole = net(batch).logits
    net.inference_window, net.inference_stride = (20, 30), (20, 30)  # one window = the image
    torch.testing.assert_close(net(batch).logits, whole)
    net.inference_window, net.inference_stride = (8, 12), (6, 8)
    windows = net(batch).logits
    assert windows.shape == whole.shape and not torch.equal(windows, whole)
