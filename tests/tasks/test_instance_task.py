"""The instance task through the real CLI: Mask R-CNN fit with COCO AP, predict files, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from task_cli import LEVELS, REPO, fit, part, shapes_data, write_config

from lightning_seg.cli import main
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.tasks import InstanceSegmentationTask

#: Mask R-CNN written part by part (R18, 32-channel FPN, small heads): num_classes of the box
#: and mask heads comes from the DataModule.
TINY_MASK_RCNN = part(
    "lightning_seg.models.detectors.MaskRCNN",
    backbone=part("lightning_seg.models.backbones.ResNetBackbone", depth=18),
    neck=part("lightning_seg.models.necks.FPN", out_channels=32),
    rpn=part("lightning_seg.models.heads.RPN", pre_nms_top_n_train=300, post_nms_top_n_train=100,
             pre_nms_top_n_test=100, post_nms_top_n_test=50),
    box_head=part("lightning_seg.models.heads.BoxRoIHead", in_features=LEVELS,
                  batch_size_per_image=64, fc_dim=64, score_thresh=0.0),
    mask_head=part("lightning_seg.models.heads.MaskRoIHead", in_features=LEVELS, conv_dims=[32, 32]),
)


def _config(folder: Path) -> Path:
    task = part("lightning_seg.tasks.InstanceSegmentationTask", model=TINY_MASK_RCNN,
                optimizer=part("torch.optim.SGD", lr=0.005, momentum=0.9))
    return write_config(folder, "inst", task, shapes_data("instance", folder / "world"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("instance_task"))
    cli, run = fit(config)
    return config, run, cli


def test_fit_logs_every_loss_term_and_coco_metrics(trained):
    _, run, cli = trained
    logged = set(cli.trainer.logged_metrics)
    for term in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"):
        assert any(k.startswith(f"train/{term}") for k in logged), (term, sorted(logged))
    for key in ("val/bbox/AP", "val/segm/AP", "val/boundary/AP", "val/score"):
        assert key in logged, sorted(logged)
        assert -1.0 <= float(cli.trainer.logged_metrics[key]) <= 1.0
    names = cli.model.info.class_names  # per-class AP (-1: a class absent from the data)
    for name in names:
        assert -1.0 <= float(cli.trainer.logged_metrics[f"val/segm/AP/{name}"]) <= 1.0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "predictions").glob("epoch_*.png"))


def test_predict_writes_coco_results_and_overlays(trained, tmp_path, monkeypatch):
    config, run, _ = trained
    monkeypatch.chdir(REPO)
    out = tmp_path / "pred"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    results = json.loads((out / "results.json").read_text())
    # score_thresh 0 keeps detections; the defaults' writer runs too and must not empty this file
    assert results, "results.json is empty"
    world = Path(yaml.safe_load(config.read_text())["data"]["init_args"]["root"])
    gt = json.loads((world / "val" / "instances.json").read_text())
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    for record in results:
        assert record["image_id"] in image_ids and record["category_id"] in category_ids
        assert len(record["bbox"]) == 4 and "segmentation" in record and 0 <= record["score"] <= 1
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_load_from_checkpoint_rebuilds_detector(trained):
    _, run, _ = trained
    task = InstanceSegmentationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert isinstance(task.model, MaskRCNN)
    assert task.info.class_names == ["circle", "triangle", "square", "star"]


def test_fit_with_mixed_precision_from_the_config(tmp_path, monkeypatch):
    """``trainer.precision`` in the YAML is all it takes: bf16 autocast on the CPU (the COCO
    experiments use 16-mixed on GPUs); losses stay finite and validation AP is computed."""
    monkeypatch.chdir(REPO)
    config = _config(tmp_path)
    cli = main(["fit", "--config", str(config), "--trainer.precision", "bf16-mixed"])
    assert cli.trainer.precision == "bf16-mixed"
    metrics = cli.trainer.logged_metrics
    losses = {k: v for k, v in metrics.items() if k.startswith("train/loss")}
    assert losses, f"no train/loss terms logged: {sorted(metrics)}"
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    assert "val/segm/AP" in metrics


def test_part_by_part_yaml_equals_the_builder(trained):
    """The YAML network (parts named by class_path, num_classes filled from the data) is the
    builder's: same modules, same parameter names and shapes, same outputs given the same weights."""
    from functools import partial

    from lightning_seg.models.detectors.mask_rcnn import mask_rcnn_resnet_fpn
    from lightning_seg.models.heads import RPN, BoxRoIHead, MaskRoIHead
    from lightning_seg.structures import Batch

    _, _, cli = trained
    yaml_net = cli.model.model.eval()
    levels = ("p2", "p3", "p4", "p5")
    built = mask_rcnn_resnet_fpn(
        4, depth=18, fpn_channels=32,
        rpn=partial(RPN, pre_nms_top_n_train=300, post_nms_top_n_train=100,
                    pre_nms_top_n_test=100, post_nms_top_n_test=50),
        box_head=partial(BoxRoIHead, num_classes=4, in_features=levels, batch_size_per_image=64,
                         fc_dim=64, score_thresh=0.0),
        mask_head=partial(MaskRoIHead, num_classes=4, in_features=levels, conv_dims=(32, 32)),
    ).eval()
    assert repr(built) == repr(yaml_net)
    shapes = {k: v.shape for k, v in yaml_net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in built.state_dict().items()}
    built.load_state_dict(yaml_net.state_dict())
    batch = Batch.from_images([torch.rand(3, 64, 96), torch.rand(3, 50, 70)])
    with torch.no_grad():
        for a, b in zip(yaml_net(batch), built(batch)):
            assert torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)
