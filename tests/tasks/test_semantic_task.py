"""The semantic task through the real CLI: fit, resume, load_from_checkpoint, predict files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from task_cli import REPO, fit, part, shapes_data, write_config

from lightning_seg.cli import main
from lightning_seg.models.detectors.unet import UNet
from lightning_seg.structures import Batch, SemanticPredictions
from lightning_seg.tasks import SemanticSegmentationTask


def _config(folder: Path) -> Path:
    task = part("lightning_seg.tasks.SemanticSegmentationTask",
                model=part("lightning_seg.models.detectors.unet.UNet", base_channels=8, depth=2),
                optimizer=part("torch.optim.Adam", lr=0.003))
    data = shapes_data("semantic", folder / "world", num_val=3, height=48, width=64, vary_size=True)
    return write_config(folder, "sem", task, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    config = _config(tmp_path_factory.mktemp("semantic_task"))
    _, run = fit(config)
    return config, run


def test_fit_writes_run_folder(trained):
    _, run = trained
    assert (run / "config.yaml").is_file()
    assert (run / "metrics.csv").read_text().count("val/mIoU") == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "predictions").glob("epoch_*.png"))


def test_resume_continues_from_checkpoint(trained, monkeypatch):
    config, run = trained
    monkeypatch.chdir(REPO)
    cli = main(["fit", "--config", str(config), "--trainer.max_epochs", "2",
                "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert cli.trainer.current_epoch == 2
    assert cli.trainer.global_step == 2 * first["global_step"]


def test_load_from_checkpoint_rebuilds_network(trained):
    _, run = trained
    task = SemanticSegmentationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert isinstance(task.model, UNet)
    assert task.num_classes == 7 and task.class_names[0] == "circle"
    out = task.eval()(Batch.from_images([torch.rand(3, 40, 56)]))
    assert isinstance(out, SemanticPredictions) and out.logits.shape == (1, 7, 40, 56)
    assert out.original(0).shape == (40, 56)


def test_predict_writes_label_pngs_at_original_size(trained, tmp_path, monkeypatch):
    config, run = trained
    monkeypatch.chdir(REPO)
    out = tmp_path / "pred"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    labels = sorted((out / "labels").glob("*.png"))
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(labels) == 3 and len(overlays) == 3
    for label in labels:
        arr = np.asarray(Image.open(label))
        assert arr.max() < 7
    # vary_size: every prediction must match its own image's size
    world = Path(yaml.safe_load(config.read_text())["data"]["init_args"]["root"])
    for label in labels:
        image = Image.open(world / "val" / "images" / label.name)
        assert Image.open(label).size == image.size


def test_loss_rejects_labels_out_of_range():
    model = UNet(num_classes=3, base_channels=4, depth=1).train()
    batch = Batch.from_images(torch.rand(1, 3, 4, 4), semantic=torch.full((1, 4, 4), 5))
    with pytest.raises(ValueError, match="label values must be in"):
        model(batch)


def test_loss_all_ignored_is_zero_and_connected():
    model = UNet(num_classes=3, base_channels=4, depth=1).train()
    batch = Batch.from_images(torch.rand(1, 3, 4, 4), semantic=torch.full((1, 4, 4), 255))
    loss = model(batch)["loss_ce"]
    loss.backward()
    assert loss.item() == 0.0 and model.classifier.weight.grad is not None
