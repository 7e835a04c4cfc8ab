"""The panoptic task through the real CLI: UPSNet fit with PQ, pictures, predict files that
``lseg-eval panoptic`` reads back to the in-loop numbers, reload, the builder equals the YAML."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from task_cli import LEVELS, REPO, fit, part, shapes_data, write_config

from lightning_seg.cli import main
from lightning_seg.metrics.cli import main as eval_main
from lightning_seg.models.detectors.upsnet import UPSNet
from lightning_seg.structures import Batch, PanopticPredictions, PanopticTargets
from lightning_seg.tasks import PanopticSegmentationTask
from lightning_seg.tasks.panoptic import PQ_KEYS, target_at

#: UPSNet part by part (R18, 32-channel FPN, small heads, 2-layer semantic head); the dataset
#: facts (classes, thing / stuff split, ignore index) come from the DataModule.
TINY_UPSNET = part(
    "lightning_seg.models.detectors.UPSNet",
    backbone=part("lightning_seg.models.backbones.ResNetBackbone", depth=18),
    neck=part("lightning_seg.models.necks.FPN", out_channels=32),
    rpn=part("lightning_seg.models.heads.RPN", anchor_sizes=[16, 32, 64, 128, 256],
              pre_nms_top_n_train=300, post_nms_top_n_train=100, pre_nms_top_n_test=100,
              post_nms_top_n_test=50),
    box_head=part("lightning_seg.models.heads.BoxRoIHead", in_features=LEVELS,
                   batch_size_per_image=64, fc_dim=64),
    mask_head=part("lightning_seg.models.heads.MaskRoIHead", in_features=LEVELS, conv_dims=[32, 32]),
    semantic_head=part("lightning_seg.models.heads.UPSNetSemanticHead", in_features=LEVELS,
                        num_layers=2),
    panoptic_head=part("lightning_seg.models.heads.UPSNetPanopticHead", stuff_area_limit=16),
)


def _config(folder: Path) -> Path:
    task = part("lightning_seg.tasks.PanopticSegmentationTask", model=TINY_UPSNET,
                optimizer=part("torch.optim.AdamW", lr=0.002))
    return write_config(folder, "pan", task, shapes_data("panoptic", folder / "world"),
                        max_epochs=20, check_val_every_n_epoch=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("panoptic_task"))
    cli, run = fit(config)
    return config, run, cli


def test_fit_logs_every_loss_term_and_pq(trained):
    _, run, cli = trained
    logged = cli.trainer.logged_metrics
    for term in ("loss_rpn_cls", "loss_cls", "loss_mask", "loss_semantic", "loss_semantic_roi",
                 "loss_panoptic"):
        assert any(k.startswith(f"train/{term}") for k in logged), (term, sorted(logged))
    for key in PQ_KEYS:
        value = float(logged[f"val/{key}"])
        assert math.isnan(value) or 0.0 <= value <= 1.0, key
    assert float(logged["val/score"]) == float(logged["val/pq"])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    pictures = list((run / "predictions").glob("epoch_*.png"))
    assert pictures


def test_predict_files_read_back_by_lseg_eval_equal_the_in_loop_pq(trained, tmp_path, monkeypatch, capsys):
    config, run, _ = trained
    monkeypatch.chdir(REPO)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    validated = main(["validate", "--config", str(config), "--ckpt_path", ckpt])
    in_loop = {k: float(validated.trainer.callback_metrics[f"val/{k}"]) for k in PQ_KEYS}
    out = tmp_path / "pred"
    main(["predict", "--config", str(config), "--ckpt_path", ckpt,
          "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    world = Path(yaml.safe_load(config.read_text())["data"]["init_args"]["root"]) / "val"
    pred = json.loads((out / "panoptic.json").read_text())
    assert len(pred["annotations"]) == 2 and len(list((out / "overlays").glob("*.png"))) == 2
    assert sum(len(a["segments_info"]) for a in pred["annotations"]) > 0
    capsys.readouterr()
    code = eval_main(["panoptic", "--gt-json", str(world / "panoptic.json"), "--gt-folder",
                      str(world / "panoptic"), "--pred-json", str(out / "panoptic.json"),
                      "--pred-folder", str(out / "panoptic"), "--json"])
    assert code == 0
    files = json.loads(capsys.readouterr().out)
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for metric in ("pq", "sq", "rq"):
            a, b = in_loop[f"{metric}{suffix}"], files[group][metric]
            assert (math.isnan(a) and b is None) or a == pytest.approx(b, abs=1e-6), (group, metric)
    assert files["All"]["pq"] > 0  # a non-trivial comparison: some segment matched


def test_load_from_checkpoint_rebuilds_upsnet(trained):
    _, run, _ = trained
    task = PanopticSegmentationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt",
                                                         map_location="cpu")
    assert isinstance(task.model, UPSNet)
    assert task.info.thing_classes == [0, 1, 2, 3] and task.info.stuff_classes == [4, 5, 6]
    assert task.model.panoptic_head.stuff_classes == [4, 5, 6]


def test_part_by_part_yaml_equals_the_builder(trained):
    from functools import partial

    from lightning_seg.models.detectors.upsnet import upsnet_resnet_fpn
    from lightning_seg.models.heads import RPN, BoxRoIHead, MaskRoIHead, UPSNetPanopticHead

    _, _, cli = trained
    yaml_net = cli.model.model.eval()
    built = upsnet_resnet_fpn(
        [0, 1, 2, 3], [4, 5, 6], depth=18, fpn_channels=32, semantic_layers=2,
        rpn=partial(RPN, anchor_sizes=(16, 32, 64, 128, 256), pre_nms_top_n_train=300,
                    post_nms_top_n_train=100, pre_nms_top_n_test=100, post_nms_top_n_test=50),
        box_head=partial(BoxRoIHead, in_features=LEVELS, batch_size_per_image=64, fc_dim=64),
        mask_head=partial(MaskRoIHead, in_features=LEVELS, conv_dims=(32, 32)),
        panoptic_head=UPSNetPanopticHead([0, 1, 2, 3], [4, 5, 6], stuff_area_limit=16),
    ).eval()
    assert repr(built) == repr(yaml_net)
    assert {k: v.shape for k, v in yaml_net.state_dict().items()} == {
        k: v.shape for k, v in built.state_dict().items()}
    built.load_state_dict(yaml_net.state_dict())
    batch = Batch.from_images([torch.rand(3, 64, 96), torch.rand(3, 50, 70)])
    with torch.no_grad():
        for a, b in zip(yaml_net(batch), built(batch)):
            assert torch.equal(a.segment_map, b.segment_map) and torch.equal(a.labels, b.labels)


def test_pictures_mask_layers_and_targets_at_the_original_size(trained):
    _, _, cli = trained
    task = cli.model
    seg = torch.zeros(8, 10, dtype=torch.int64)
    seg[:4], seg[4:, :5] = 7, 300
    gt = PanopticTargets(seg, torch.tensor([7, 300]), torch.tensor([4, 0]),
                         torch.tensor([False, True]), torch.tensor([False, False]))
    batch = Batch.from_images([torch.rand(3, 6, 9)], orig_sizes=[(12, 18)])
    batch = Batch(batch.images, batch.image_sizes, batch.meta, panoptic=[gt])
    pred = PanopticPredictions(torch.ones(12, 18, dtype=torch.int64), torch.tensor([1]),
                               torch.tensor([5]), torch.tensor([False]))
    # the (padded) target cropped to the 6 x 9 image, then doubled
    at = target_at(gt, (6, 9), (12, 18))
    assert at.segment_map.shape == (12, 18) and (at.segment_map[:8] == 7).all()
    assert (at.segment_map[8:, :10] == 300).all() and (at.segment_map[8:, 10:] == 0).all()
    picture = task.render_predictions(batch, [pred], 1)[0]
    assert picture.dtype == torch.uint8 and picture.shape[2] == 3 * 18 + 2 * 4
    assert picture.shape[1] > 12  # the legend strip below the panels
    image, layers, names = task.mask_layers(batch, [pred], 0)
    assert image.shape == (3, 12, 18) and (layers["prediction"] == 5).all()
    gt_layer = layers["ground_truth"]
    assert (gt_layer[:8] == 4).all() and (gt_layer[8:, 10:] == 7).all()  # void -> num_classes
    assert names[7] == "void" and names[0] == "circle"
