"""The cost of every run (``RunCost`` in experiments/defaults.yaml) and the W&B per-class tables."""

from __future__ import annotations

import csv
import io
from types import SimpleNamespace

import pytest
import torch
from task_cli import fit, part, shapes_data, write_config
from torch import nn

from lightning_seg.callbacks import RunCost
from lightning_seg.callbacks.cost import count_flops, count_parameters, first_images
from lightning_seg.callbacks.wandb_extras import per_class_values
from lightning_seg.structures import Batch


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 1-level U-Net fitted 3 steps through the CLI, with experiments/defaults.yaml."""
    tmp = tmp_path_factory.mktemp("cost")
    task = part("lightning_seg.tasks.SemanticSegmentationTask",
                model=part("lightning_seg.models.detectors.UNet", base_channels=4, depth=1))
    data = shapes_data("semantic", tmp / "world", num_train=6, height=32, width=48)
    return fit(write_config(tmp, "cost", task, data, max_steps=3, enable_progress_bar=False))


def test_every_run_logs_its_cost(fitted):
    cli, run = fitted
    (cost,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, RunCost)]
    network = cli.model.model
    assert cost.measured["cost/params"] == sum(p.numel() for p in network.parameters())
    # FLOPs of one validation image, counted again here
    batch = first_images(next(iter(cli.datamodule.val_dataloader())), 1)
    network.eval()
    with torch.no_grad():
        assert cost.measured["cost/flops"] == count_flops(network, batch) > 0
    assert (cost.measured["cost/input_height"], cost.measured["cost/input_width"]) == (32, 48)
    assert cost.measured["cost/latency_ms"] > 0 and cost.measured["cost/latency_images"] == 1
    assert len(cost.step_ms) == 3 and cost.measured["cost/train_step_ms"] > 0
    rows = list(csv.DictReader(io.StringIO((run / "metrics.csv").read_text())))
    logged = {k: float(v) for row in rows for k, v in row.items() if k.startswith("cost/") and v}
    assert logged == pytest.approx(cost.measured)


def test_flops_of_a_conv_are_the_textbook_count():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

        def forward(self, batch: Batch):
            return self.conv(batch.images)

    batch = Batch.from_images([torch.rand(3, 10, 12), torch.rand(3, 10, 12)])
    # 2 FLOPs (multiply + add) per weight per output pixel
    assert count_flops(Net(), first_images(batch, 1)) == 2 * 8 * 3 * 9 * 10 * 12
    assert len(first_images(batch, 1)) == 1 and len(first_images(batch, 5)) == 2
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, shared)) == (20, 20)


def test_no_validation_data_skips_inference_cost(capsys):
    logged = []
    logger = SimpleNamespace(log_metrics=lambda values, step: logged.append((values, step)))
    trainer = SimpleNamespace(global_rank=0, loggers=[logger], global_step=7, val_dataloaders=None,
                              datamodule=None)
    module = SimpleNamespace(model=nn.Linear(3, 2), device=torch.device("cpu"))
    cost = RunCost()
    cost.step_ms = [5.0, 9.0, 1.0, 3.0, 4.0]
    cost.on_train_end(trainer, module)
    assert "no validation data" in capsys.readouterr().out
    (values, step), = logged
    assert step == 7 and values == {"cost/params": 8.0, "cost/trainable_params": 8.0,
                                    "cost/train_step_ms": 3.0}  # median without the first 2 steps


def test_per_class_values_pick_the_class_entries():
    metrics = {"val/IoU/sky": 0.9, "val/IoU/water": 0.5, "val/mIoU": 0.7, "val/segm/AP": 0.4,
               "val/segm/AP/person": 0.3, "val/bbox/AP/person": 0.35, "val/bbox/AP/car": 0.1,
               "train/IoU/sky": 0.2, "val/IoU/unknown_thing": 0.0}
    columns, table = per_class_values(metrics, "val", ["sky", "water", "person", "car"])
    assert columns == ["IoU", "segm/AP", "bbox/AP"]
    assert table == {"sky": {"IoU": 0.9}, "water": {"IoU": 0.5}, "person": {"segm/AP": 0.3, "bbox/AP": 0.35},
                     "car": {"bbox/AP": 0.1}}


def test_run_summary_line():
    from lightning_seg.callbacks.predictions import describe_cost

    assert describe_cost({"cost/params": 11.2e6, "cost/flops": 3.41e9, "cost/input_height": 128.0,
                          "cost/input_width": 160.0, "cost/latency_ms": 12.34, "cost/train_step_ms": 345.0}) == (
        "11.2 M params, 3.41 GFLOPs/image at 128x160, latency 12.3 ms, train step 345 ms")
    assert describe_cost({"cost/params": 8.0}) == "8e-06 M params"
