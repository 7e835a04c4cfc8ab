"""``lseg-eval``: every subcommand on real / generated files, JSON output and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_seg.metrics.cli import main
from lightning_seg.metrics.panoptic import evaluate_panoptic_files
from lightning_seg.metrics.vpq import evaluate_vpq_files

from .test_panoptic import make_case
from .test_vpq import _write_files, make_videos


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_panoptic_json_table_and_errors(capsys, tmp_path):
    gt_json, gt_dir, pred_json, pred_dir = make_case(tmp_path, 5, num_images=3)
    args = ["panoptic", "--gt-json", gt_json, "--gt-folder", gt_dir,
            "--pred-json", pred_json, "--pred-folder", pred_dir]
    code, out, _ = run_cli(capsys, *args, "--json")
    assert code == 0
    res = json.loads(out)
    ref = evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)
    assert res["All"]["pq"] == pytest.approx(ref["All"]["pq"], abs=1e-12)
    assert set(res) >= {"All", "Things", "Stuff", "per_class"}
    code, out, _ = run_cli(capsys, *args, "--per-class")
    assert code == 0 and "Things" in out and "PQ" in out and "person" in out

    # a segment id of the PNG missing from the JSON -> exit code 2, message names the file
    pred = json.loads(pred_json.read_text())
    pred["annotations"][0]["segments_info"].pop()
    pred_json.write_text(json.dumps(pred))
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == "" and "not in segments_info" in err and str(pred_json) in err
    pred_json.write_text("[1, 2")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "malformed JSON" in err


def test_panoptic_real_sample(capsys, shared_data):
    root = shared_data / "panoptic" / "coco_panoptic_sample"
    j, d = root / "panoptic_examples.json", root / "panoptic_examples"
    code, out, _ = run_cli(capsys, "panoptic", "--gt-json", j, "--gt-folder", d, "--pred-json", j,
                           "--pred-folder", d, "--json")
    assert code == 0 and json.loads(out)["All"]["pq"] == 1.0


def test_semantic(capsys, shared_data, tmp_path):
    gt_dir = shared_data / "semantic" / "camvid_smoke" / "testannot"
    names = "Sky Building Pole Road Pavement Tree SignSymbol Fence Car Pedestrian Bicyclist".split()
    code, out, _ = run_cli(capsys, "semantic", "--gt", gt_dir, "--pred", gt_dir, "--num-classes", 11,
                           "--ignore-index", 11, "--json")
    res = json.loads(out)
    assert code == 0 and res["mIoU"] == 1.0 and res["pixel_acc"] == 1.0 and len(res["IoU"]) == 11
    code, out, _ = run_cli(
        capsys, "semantic", "--gt", gt_dir, "--pred", gt_dir, "--num-classes", 11, "--ignore-index", 11,
        "--class-names", *names
    )
    assert code == 0 and "Bicyclist" in out and "mIoU" in out
    # a prediction of the wrong size
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for p in gt_dir.glob("*.png"):
        Image.fromarray(np.zeros((7, 9), np.uint8)).save(pred_dir / p.name)
    code, _, err = run_cli(capsys, "semantic", "--gt", gt_dir, "--pred", pred_dir, "--num-classes", 11,
                           "--ignore-index", 11)
    assert code == 2 and "(7, 9)" in err


def test_vpq(capsys, tmp_path):
    files = _write_files(tmp_path, make_videos(np.random.default_rng(2), num_videos=2, num_frames=4))
    args = ["vpq", "--gt-json", files[0], "--gt-folder", files[1], "--pred-json", files[2], "--pred-folder", files[3]]
    code, out, _ = run_cli(capsys, *args, "--json")
    assert code == 0
    res = json.loads(out)
    ref = evaluate_vpq_files(*files)
    assert res["vpq"]["All"] == pytest.approx(ref["vpq"]["All"], abs=1e-12)
    assert set(res["per_k"]) == {"0", "5", "10", "15"}
    code, out, _ = run_cli(capsys, *args, "--window-frames", 1, 2)
    assert code == 0 and "k=5" in out and "k=10" not in out and "VPQ" in out
    # a frame whose prediction is missing
    pred = json.loads(files[2].read_text())
    pred["annotations"] = pred["annotations"][1:]
    files[2].write_text(json.dumps(pred))
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "no prediction for image_id" in err


def test_keypoints(capsys, shared_data, tmp_path):
    gt = shared_data / "keypoints" / "mmpose_samples" / "300w" / "test_300w.json"
    data = json.loads(gt.read_text())
    dt = tmp_path / "dt.json"
    records = [{"image_id": a["image_id"], "keypoints": a["keypoints"], "score": 1} for a in data["annotations"]]
    dt.write_text(json.dumps(records))
    code, out, _ = run_cli(capsys, "keypoints", "--gt", gt, "--dt", dt, "--metric", "nme",
                           "--norm-keypoints", 36, 45, "--json")
    res = json.loads(out)
    assert code == 0 and res["nme"] == 0.0 and res["failure_rate"] == 0.0
    assert res["auc"] == pytest.approx(1.0, abs=1e-9)  # fixed-point sums: within 2**-32
    code, out, _ = run_cli(capsys, "keypoints", "--gt", gt, "--dt", dt, "--metric", "pck", "--alpha", 0.05)
    assert code == 0 and "pck" in out
    # PCKh needs head boxes; interocular needs its keypoints: usage errors exit 2
    code, _, err = run_cli(capsys, "keypoints", "--gt", gt, "--dt", dt, "--metric", "pckh")
    assert code == 2 and "head_box" in err
    code, _, err = run_cli(capsys, "keypoints", "--gt", gt, "--dt", dt, "--metric", "nme")
    assert code == 2 and "--norm-keypoints" in err
    code, _, err = run_cli(capsys, "keypoints", "--gt", gt, "--dt", dt, "--metric", "pck", "--norm", "head")
    assert code == 2 and "does not apply" in err


def test_coco(capsys, shared_data, tmp_path):
    pytest.importorskip("lightning_seg.metrics.coco")
    gt = shared_data / "instance" / "coco_mini" / "annotations" / "instances.json"
    data = json.loads(gt.read_text())
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in data["annotations"]
        if not a.get("iscrowd", 0)
    ]
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(dets))
    code, out, _ = run_cli(capsys, "coco", "--gt", gt, "--dt", dt, "--iou-type", "bbox", "--json")
    assert code == 0 and json.loads(out)["AP"] == pytest.approx(1.0)
    code, out, _ = run_cli(capsys, "coco", "--gt", gt, "--dt", dt, "--iou-type", "bbox", "--backend", "pycocotools")
    assert code == 0 and "Average Precision" in out
    dets[0]["category_id"] = 12345
    dt.write_text(json.dumps(dets))
    code, _, err = run_cli(capsys, "coco", "--gt", gt, "--dt", dt, "--iou-type", "bbox")
    assert code == 2 and str(dt) in err


def test_console_script_exit_code(tmp_path):
    """The installed ``lseg-eval`` (or ``python -m``) exits 2 with a message on malformed JSON."""
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    exe = Path(sys.executable).parent / "lseg-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lightning_seg.metrics.cli"]
    proc = subprocess.run(
        [*cmd, "semantic", "--gt", tmp_path / "missing", "--pred", tmp_path, "--num-classes", "3"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert proc.returncode == 2 and "folder not found" in proc.stderr and "missing" in proc.stderr


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["semantic", "--gt", "x"])
    assert exc.value.code == 2 and "--pred" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "panoptic", "--gt-json", "/nonexistent.json", "--gt-folder", ".",
                           "--pred-json", "/nonexistent.json", "--pred-folder", ".")
    assert code == 2 and "/nonexistent.json: JSON file not found" in err
