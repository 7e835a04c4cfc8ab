"""The keypoint task (issue #15) through the real CLI on real COCO images: per-stack losses
logged, OKS AP in validation equal to ``lseg-eval`` on the ``lseg predict`` results file,
pictures, reload from the checkpoint; and the overfit tests on the real body and face samples."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from task_cli import REPO, fit, part, write_config

from lightning_seg.cli import main
from lightning_seg.models.backbones.hourglass import HourglassBackbone
from lightning_seg.models.detectors.topdown import StackedHourglass
from lightning_seg.models.heads.keypoints import HourglassHeatmapHead
from lightning_seg.tasks import KeypointTask


def _config(folder: Path, coco: Path) -> Path:
    task = part(
        "lightning_seg.tasks.KeypointTask",
        model=part(
            "lightning_seg.models.detectors.StackedHourglass",
            backbone=part("lightning_seg.models.backbones.HourglassBackbone", num_stacks=2,
                          depth=4, channels=16),
            head=part("lightning_seg.models.heads.HourglassHeatmapHead", sigma=1.0,
                      encoding="unbiased", decoder="dark"),
        ),
        metrics=["oks", "pck"],
        optimizer=part("torch.optim.Adam", lr=0.001),
    )
    data = part(
        "lightning_seg.data.datamodules.CocoKeypointDataModule",
        root=str(coco), train_ann="test_coco.json", val_ann="test_coco.json", train_images=".",
        val_images=".", input_size=[64, 64], batch_size=6, num_workers=0,
        persistent_workers=False, pin_memory=False,
    )
    return write_config(folder, "kp", task, data)


@pytest.fixture(scope="module")
def coco(shared_data) -> Path:
    return shared_data / "keypoints" / "mmpose_samples" / "coco"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, coco):
    config = _config(tmp_path_factory.mktemp("keypoint_task"), coco)
    cli, run = fit(config)
    return config, run, cli


def test_fit_logs_per_stack_losses_and_keypoint_metrics(trained):
    _, run, cli = trained
    logged = cli.trainer.logged_metrics
    for key in ("train/loss_heatmap_s0_epoch", "train/loss_heatmap_s1_epoch", "val/oks/AP", "val/pck", "val/score"):
        assert key in logged, sorted(logged)
    assert float(logged["val/score"]) == float(logged["val/oks/AP"])
    assert (run / "predictions" / "epoch_000.png").is_file()
    assert cli.model.num_classes == 1 and cli.model.num_keypoints == 17


def test_predict_results_are_scored_by_lseg_eval_as_in_validation(trained, coco, tmp_path, monkeypatch, capsys):
    from lightning_seg.metrics.cli import main as eval_main

    config, run, _ = trained
    monkeypatch.chdir(REPO)
    out = tmp_path / "pred"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    results = json.loads((out / "results.json").read_text())
    gt = json.loads((coco / "test_coco.json").read_text())
    with_kpts = {a["id"] for a in gt["annotations"] if a["num_keypoints"] > 0}
    assert len(results) == len(with_kpts) == 12
    assert {r["annotation_id"] for r in results} == with_kpts
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert len(list((out / "overlays").glob("*.png"))) == 12
    capsys.readouterr()
    assert eval_main(["coco", "--gt", str(coco / "test_coco.json"), "--dt", str(out / "results.json"),
                      "--iou-type", "keypoints", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # validate the checkpoint with the same data: the in-task OKS AP is the file's
    result = main(["validate", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    val = result.trainer.logged_metrics
    assert float(val["val/oks/AP"]) == pytest.approx(stats["AP"], abs=1e-6)
    assert float(val["val/oks/AR"]) == pytest.approx(stats["AR"], abs=1e-6)


def test_load_from_checkpoint_rebuilds_the_network(trained):
    _, run, cli = trained
    task = KeypointTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert isinstance(task.model, StackedHourglass) and task.model.head.num_stacks == 2
    assert task.info.keypoint_names[1] == "left_eye" and task.metric_names == ("oks", "pck")
    for (k, a), b in zip(task.state_dict().items(), cli.model.state_dict().values()):
        torch.testing.assert_close(a, b.cpu(), msg=k)


# ------------------------------------------------------------------------------ overfit
def _overfit(datamodule, steps: int, lr: float, sigma: float, pck_alpha: float, metrics=("pck",)):
    """Train a small Stacked Hourglass on the same few real crops (no augmentation) and
    validate on them. Returns (first loss, last loss, validation metrics)."""
    L.seed_everything(0)
    info = datamodule.info
    net = StackedHourglass(
        HourglassBackbone(num_stacks=1, depth=4, channels=32),
        partial(HourglassHeatmapHead, num_keypoints=info.num_keypoints, sigma=sigma,
                encoding="unbiased", decoder="dark"),
        keypoint_flip_map=info.keypoint_flip_map,
    )
    task = KeypointTask(net, num_keypoints=info.num_keypoints, info=info, metrics=metrics,
                        pck_alpha=pck_alpha, optimizer=lambda p: torch.optim.Adam(p, lr))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(task, datamodule)
    validator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = validator.validate(task, datamodule, verbose=False)[0]
    return losses[0], losses[-1], result


NO_AUGMENTATION = {"scale_sigma": 0.0, "rotation_prob": 0.0, "flip_prob": 0.0, "color_range": None}


def test_overfit_real_body_images(shared_data):
    """MPII's 5 real persons (16 joints): PCK@0.05 of the person box (200 x scale x 1.25, so
    0.05 is about 6% of the person's height, near PCKh@0.5) reaches 0.9."""
    from lightning_seg.data.datamodules import MPIIDataModule

    dm = MPIIDataModule(shared_data / "keypoints" / "mmpose_samples" / "mpii", train_ann="test_mpii.json",
                        val_ann="test_mpii.json", images=".", headbox_file=None, input_size=(64, 64),
                        batch_size=5, num_workers=0, **NO_AUGMENTATION)
    first, last, result = _overfit(dm, steps=300, lr=3e-3, sigma=1.0, pck_alpha=0.05)
    assert last < 0.1 * first
    assert result["val/pck"] >= 0.9, result


def test_overfit_real_face_images(shared_data):
    """WFLW's 4 real faces (98 landmarks, on a 16 x 16 heatmap): PCK@0.1 of the face box
    (about 0.17 of the inter-ocular distance) reaches 0.9 and the inter-ocular NME falls below
    0.08. 800 steps: at 400 the NME was 0.0828 on an Intel Xeon (under 0.08 on the AMD EPYC the
    test was written on); at 800 it is 0.069 there (PCK 0.957)."""
    from lightning_seg.data.datamodules import FaceLandmarkDataModule

    dm = FaceLandmarkDataModule(shared_data / "keypoints" / "mmpose_samples" / "wflw", dataset="wflw",
                                train_ann="test_wflw.json", val_ann="test_wflw.json", images=".",
                                input_size=(64, 64), batch_size=4, num_workers=0, **NO_AUGMENTATION)
    first, last, result = _overfit(dm, steps=800, lr=3e-3, sigma=1.5, pck_alpha=0.1, metrics=("pck", "nme"))
    assert last < 0.2 * first
    assert result["val/pck"] >= 0.9 and result["val/nme"] < 0.08, result


def test_predict_on_person_detections(trained, coco, tmp_path, monkeypatch):
    config, run, _ = trained
    monkeypatch.chdir(REPO)
    out = tmp_path / "det"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--data.init_args.test_detections", "test_coco_det_AP_H_56.json",
          "--data.init_args.det_score_thresh", "0.3",
          "--trainer.callbacks+=lightning_seg.callbacks.PredictionWriter",
          f"--trainer.callbacks.output_dir={out}"])
    dets = [d for d in json.loads((coco / "test_coco_det_AP_H_56.json").read_text()) if d["score"] >= 0.3]
    results = json.loads((out / "results.json").read_text())
    assert 0 < len(results) <= len(dets) and all("annotation_id" not in r for r in results)
    assert len(list((out / "overlays").glob("*.png"))) == len(dets)


def test_oks_nms_drops_duplicate_detections_only():
    from lightning_seg.structures import DatasetInfo

    info = DatasetInfo(["person"], keypoint_names=["a", "b"], keypoint_sigmas=[0.1, 0.1])
    task = KeypointTask(torch.nn.Identity(), num_keypoints=2, info=info)
    pose = torch.tensor([[10.0, 10.0, 0.9], [30.0, 40.0, 0.9]])
    rows = [(1, 0.8, pose, True), (1, 0.9, pose + 0.5, True), (1, 0.7, pose + 60, True),
            (2, 0.5, pose, True), (3, 0.5, pose, False), (3, 0.6, pose, False)]
    results = [{"image_id": image_id, "score": score} for image_id, score, _, _ in rows]
    nms_rows = [(kpts, 900.0, detected) for _, _, kpts, detected in rows]
    # image 1: the two near-identical detections keep the better one; the far one stays;
    # image 3 holds ground-truth-box crops: never suppressed
    assert task._oks_nms_keep(results, nms_rows) == [False, True, True, True, True, True]
    task.oks_nms_thresh = None
    assert all(task._oks_nms_keep(results, nms_rows))
