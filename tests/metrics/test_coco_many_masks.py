"""COCO AP with 256 masks or more (issue #9): ``pycocotools.mask.area`` on a list of 256+ RLEs
overflows with numpy 2.4, so the metric must never call it that way. Files through the real
``lseg-eval coco`` entry point and one crowded image through ``COCOEvaluator``, both against
the reference libraries."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from lightning_seg.metrics.cli import main
from lightning_seg.metrics.coco import BACKENDS, COCOEvaluator, detection_stat_names
from lightning_seg.structures import InstancePredictions, InstanceTargets

sys.path.insert(0, str(Path(__file__).parent))
from test_coco_cases import make_case, mask_boxes, pycocotools_stats, reference_coco

DET = detection_stat_names()


def _write_gt(path: Path, gt: dict) -> Path:
    """The ground truth as JSON (RLE ``counts`` bytes -> str)."""
    anns = []
    for ann in gt["annotations"]:
        seg = ann["segmentation"]
        anns.append(dict(ann, segmentation={"size": seg["size"], "counts": seg["counts"].decode()}))
    path.write_text(json.dumps(dict(gt, annotations=anns)))
    return path


def _cli_stats(capsys, gt_path: Path, dt_path: Path, iou_type: str, backend: str) -> list[float]:
    argv = ["coco", "--gt", str(gt_path), "--dt", str(dt_path), "--iou-type", iou_type]
    code = main([*argv, "--backend", backend, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    stats = json.loads(out.out)
    assert list(stats) == list(DET)
    return list(stats.values())


def _faster_coco_eval_boundary(gt_path: Path, dt_path: Path) -> list[float]:
    """Boundary AP of faster-coco-eval reading both files itself (its own ``loadRes``)."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(dt_path))
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="boundary", print_function=print)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.fixture(scope="module")
def many_mask_files(tmp_path_factory) -> tuple[Path, Path, dict, list[dict]]:
    """5 images, 300+ mask detections (no ``bbox``: mask results as COCO writes them)."""
    preds, targets = make_case(21, num_images=5, max_inst=90)
    ids = [2, 7, 1, 9, 4]
    gt, results = reference_coco(preds, targets, ids)
    segm = results["segm"]
    assert len(segm) > 300 and len(gt["annotations"]) > 100
    root = tmp_path_factory.mktemp("many_masks")
    gt_path = _write_gt(root / "gt.json", gt)
    dt_path = root / "dt.json"
    dt_path.write_text(json.dumps(segm))
    return gt_path, dt_path, gt, segm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_cli_segm_and_bbox_from_masks_with_300_masks_equal_pycocotools(
    capsys, many_mask_files, iou_type, backend
):
    """Mask AP, and box AP of mask-only results (boxes from the masks, as ``loadRes``)."""
    gt_path, dt_path, gt, segm = many_mask_files
    ours = _cli_stats(capsys, gt_path, dt_path, iou_type, backend)
    ref = pycocotools_stats(gt, segm, iou_type).tolist()
    np.testing.assert_array_equal(ours, ref)
    assert ours[1] > 0.1  # AP50: not a degenerate case


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_boundary_with_300_masks_equals_faster_coco_eval(capsys, many_mask_files, backend):
    gt_path, dt_path, _, _ = many_mask_files
    ours = _cli_stats(capsys, gt_path, dt_path, "boundary", backend)
    ref = _faster_coco_eval_boundary(gt_path, dt_path)
    if backend == "faster_coco_eval":
        np.testing.assert_array_equal(ours, ref)
    else:  # our pycocotools boundary class: the same matches, means summed in another order
        np.testing.assert_allclose(ours, ref, atol=1e-15, rtol=0)
    assert ours[1] > 0.03  # AP50: not a degenerate case (crowded small images)


def _crowded_image(seed: int, n: int, h: int = 97, w: int = 131):
    """One image with ``n`` ground-truth instances (some crowd) and ``n`` predictions
    (shifted, partly wrong-class copies of them, float masks)."""
    rng = np.random.default_rng(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for j in range(n):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        y1, x1 = y0 + int(rng.integers(3, 30)), x0 + int(rng.integers(3, 30))
        masks[j, y0:y1, x0:x1] = True
        if j % 3 == 0:  # a notch: not a box
            masks[j, y0 + 1 : y1 - 1, x0 : x0 + (x1 - x0) // 2] = False
    labels = torch.from_numpy(rng.integers(0, 3, n))
    crowd = torch.from_numpy(rng.random(n) < 0.05)
    target = InstanceTargets(mask_boxes(masks), labels, (h, w), masks=masks, iscrowd=crowd)
    shifted = torch.stack(
        [
            torch.roll(masks[j], tuple(int(v) for v in rng.integers(-2, 3, 2)), (0, 1))
            for j in range(n)
        ]
    )
    prob = shifted.float() * 0.8 + 0.1 * torch.from_numpy(rng.random((n, h, w)) < 0.02).float()
    plabels = torch.where(torch.from_numpy(rng.random(n) < 0.9), labels, (labels + 1) % 3)
    scores = torch.from_numpy(np.round(rng.random(n), 2)).float()
    pred = InstancePredictions(mask_boxes(prob >= 0.5), scores, plabels, (h, w), masks=prob)
    return pred, target


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluator_with_300_instances_in_one_image_equals_pycocotools(backend):
    pred, target = _crowded_image(3, n=300)
    metric = COCOEvaluator(("bbox", "segm"), backend=backend)
    metric.update([pred], [target], [42])
    out = metric.compute()
    gt, results = reference_coco([pred], [target], [42])
    for iou_type in ("bbox", "segm"):
        ours = [out[f"{iou_type}/{n}"] for n in DET]
        ref = pycocotools_stats(gt, results[iou_type], iou_type)
        np.testing.assert_array_equal(ours, ref, err_msg=iou_type)
        assert ours[1] > 0.3, iou_type  # AP50: not a degenerate case


def _uncompressed(rle: dict) -> dict:
    """The same RLE with ``counts`` as a list of runs (column-major, starting with zeros)."""
    flat = mask_utils.decode(rle).ravel(order="F").astype(np.int8)
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    runs = np.diff(bounds).tolist()
    return {"size": rle["size"], "counts": [0, *runs] if flat[0] else runs}


def test_cli_reads_uncompressed_rle_results(capsys, many_mask_files, tmp_path):
    """Results with ``counts`` as a list of runs (half of them) give the numbers of the
    compressed file, box AP from the masks included (pycocotools' ``toBbox`` and ``area`` take
    compressed RLEs only)."""
    gt_path, dt_path, _, segm = many_mask_files
    mixed = [
        dict(r, segmentation=_uncompressed(r["segmentation"])) if j % 2 else r
        for j, r in enumerate(segm)
    ]
    mixed_path = tmp_path / "mixed.json"
    mixed_path.write_text(json.dumps(mixed))
    for iou_type in ("segm", "bbox"):
        ours = _cli_stats(capsys, gt_path, mixed_path, iou_type, "faster_coco_eval")
        assert ours == _cli_stats(capsys, gt_path, dt_path, iou_type, "faster_coco_eval")
