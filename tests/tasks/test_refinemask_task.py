"""RefineMask through the real CLI: fit with the per-stage callback, reload from the checkpoint, and
the YAML fragments equal the builders."""

from __future__ import annotations

import pytest
import torch
from task_cli import LEVELS, REPO, fit, part, shapes_data, write_config

from lightning_seg.cli import main
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.models.heads import RefineMaskHead
from lightning_seg.tasks import InstanceSegmentationTask

TINY_REFINEMASK = part(
    "lightning_seg.models.detectors.MaskRCNN",
    backbone=part("lightning_seg.models.backbones.ResNetBackbone", depth=18),
    neck=part("lightning_seg.models.necks.FPN", out_channels=32),
    rpn=part("lightning_seg.models.heads.RPN", pre_nms_top_n_train=300, post_nms_top_n_train=100,
              pre_nms_top_n_test=100, post_nms_top_n_test=50),
    box_head=part("lightning_seg.models.heads.BoxRoIHead", in_features=LEVELS,
                   batch_size_per_image=64, fc_dim=64, score_thresh=0.0, loss_cls_weight=2.0,
                   loss_box_weight=2.0, box_loss_beta=0.0),
    semantic_head=part("lightning_seg.models.heads.ForegroundSemanticHead", conv_dim=16),
    mask_head=part("lightning_seg.models.heads.RefineMaskHead", in_features=LEVELS, conv_dim=32,
                    semantic_channels=16),
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refinemask_task")
    task = part("lightning_seg.tasks.InstanceSegmentationTask", model=TINY_REFINEMASK,
                optimizer=part("torch.optim.SGD", lr=0.002, momentum=0.9))
    config = write_config(
        tmp, "refine", task, shapes_data("instance", tmp / "world"), gradient_clip_val=35,
        **{"callbacks+": [part("lightning_seg.callbacks.RefineStageMetrics", iou_thresh=0.0)]},
    )
    cli, run = fit(config)
    return config, run, cli


def test_fit_logs_stage_losses_semantic_loss_and_per_stage_ious(trained):
    _, run, cli = trained
    logged = cli.trainer.logged_metrics
    for term in ("loss_semantic", *(f"loss_mask_s{i}" for i in range(4))):
        assert any(k.startswith(f"train/{term}") for k in logged), (term, sorted(logged))
    for k in range(4):
        for what in ("mask_iou", "boundary_iou"):
            value = float(logged[f"val/refine/s{k}_{what}"])
            assert 0.0 <= value <= 1.0
    assert "val/refine/s3_raw_boundary_iou" in logged and "val/segm/AP" in logged
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_load_from_checkpoint_gives_the_same_predictions(trained):
    _, run, cli = trained
    task = InstanceSegmentationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt",
                                                         map_location="cpu")
    assert isinstance(task.model, MaskRCNN) and isinstance(task.model.mask_head, RefineMaskHead)
    from lightning_seg.structures import Batch

    batch = Batch.from_images([torch.rand(3, 64, 96), torch.rand(3, 50, 70)])
    fitted = cli.model.model.eval()
    task.model.eval()
    with torch.no_grad():
        for a, b in zip(fitted(batch), task.model(batch)):
            assert torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)


@pytest.mark.parametrize(
    ("experiment", "faster_better"),
    [("refinemask_r50_fpn_shapes_24e.yaml", False),
     ("refinemask_r50_fpn_faster_better_coco_1x.yaml", True)],
    ids=["official", "faster-better"],
)
def test_fragment_equals_the_builder(experiment, faster_better, monkeypatch):
    """The model fragments (part by part, num_classes from the data) build the network of
    ``refinemask_resnet_fpn``: same modules, parameter names and shapes."""
    import torchvision

    from lightning_seg.models import weights
    from lightning_seg.models.detectors.refine_mask import refinemask_resnet_fpn

    monkeypatch.setattr(weights, "download_state_dict",
                        lambda name, member: torchvision.models.get_model(name, weights=None).state_dict())
    monkeypatch.chdir(REPO)
    cli = main(["--config", str(REPO / "experiments" / experiment)], run=False)
    net = cli.model.model
    built = refinemask_resnet_fpn(  # the shapes experiment trains from scratch, COCO does not
        cli.datamodule.num_classes, weights_backbone="IMAGENET1K_V1" if faster_better else None,
        faster_better=faster_better,
    )
    assert repr(built) == repr(net)
    assert {k: v.shape for k, v in built.state_dict().items()} == \
        {k: v.shape for k, v in net.state_dict().items()}
