"""``lseg-eval``: evaluate prediction files from the command line.

Subcommands (each prints a readable table, or one JSON object with ``--json``)::

    lseg-eval coco      --gt GT.json --dt RESULTS.json --iou-type {bbox,segm,boundary,keypoints}
                        [--kpt-sigmas S1 S2 ...] [--backend faster_coco_eval|pycocotools]
    lseg-eval panoptic  --gt-json GT.json --gt-folder DIR --pred-json PRED.json --pred-folder DIR
                        [--per-class]
    lseg-eval semantic  --gt DIR --pred DIR --num-classes N [--ignore-index I] [--class-names ...]
    lseg-eval vpq       --gt-json GT.json --gt-folder DIR --pred-json PRED.json --pred-folder DIR
                        [--window-frames 1 2 3 4] [--frame-stride 5]
    lseg-eval keypoints --gt GT.json --dt RESULTS.json --metric {pck,pckh,nme}
                        [--alpha A] [--norm {bbox,torso,head,interocular,interpupil,box}]
                        [--norm-keypoints I J] [--left-group ...] [--right-group ...]
                        [--failure-thresh T]

Bad input (malformed JSON, PNGs of the wrong size, segment ids missing from the JSON, unknown
category ids...) prints ``lseg-eval: error: <file, record and fix>`` and exits with code 2.
File formats are described in the functions each subcommand calls:
``lightning_seg.metrics.coco_files.evaluate_coco_files``,
``lightning_seg.metrics.panoptic.evaluate_panoptic_files``,
``lightning_seg.metrics.semantic.evaluate_semantic_folders``,
``lightning_seg.metrics.vpq.evaluate_vpq_files`` and
``lightning_seg.metrics.keypoints.load_keypoint_pairs``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from lightning_seg.data.io import DataError


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: tensors/arrays to lists, NaN/inf to null, keys to strings."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(v: float) -> str:
    return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


# --------------------------------------------------------------------------------------------
# Subcommands: each returns (result dict, table string)
# --------------------------------------------------------------------------------------------


def _run_coco(args: argparse.Namespace) -> tuple[dict, str]:
    try:
        from lightning_seg.metrics.coco_eval import format_coco_table
        from lightning_seg.metrics.coco_files import evaluate_coco_files
    except ImportError as exc:
        raise DataError(f"COCO evaluation is not available ({exc}).") from exc
    stats = evaluate_coco_files(
        args.gt,
        args.dt,
        args.iou_type,
        kpt_sigmas=args.kpt_sigmas,
        backend=args.backend,
        max_dets=tuple(args.max_dets),
    )
    return stats, format_coco_table(stats)


def _panoptic_table(res: dict, per_class: bool) -> str:
    lines = [f"{'':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 42]
    for name in ("All", "Things", "Stuff"):
        r = res[name]
        lines.append(f"{name:14s}| {_pct(r['pq'])}  {_pct(r['sq'])}  {_pct(r['rq'])} {r['n']:5d}")
    if per_class:
        lines += ["", f"{'class':24s} {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'TP':>5s} {'FP':>5s} {'FN':>5s}"]
        for r in res["per_class"].values():
            if r["tp"] + r["fp"] + r["fn"]:
                lines.append(
                    f"{r['name'][:24]:24s} {_pct(r['pq'])}  {_pct(r['sq'])}  {_pct(r['rq'])} "
                    f"{r['tp']:5d} {r['fp']:5d} {r['fn']:5d}"
                )
    return "\n".join(lines)


def _run_panoptic(args: argparse.Namespace) -> tuple[dict, str]:
    from lightning_seg.metrics.panoptic import evaluate_panoptic_files

    res = evaluate_panoptic_files(args.gt_json, args.gt_folder, args.pred_json, args.pred_folder)
    return res, _panoptic_table(res, args.per_class) + f"\n({res['num_images']} images)"


def _run_semantic(args: argparse.Namespace) -> tuple[dict, str]:
    from lightning_seg.metrics.semantic import evaluate_semantic_folders

    res = evaluate_semantic_folders(args.gt, args.pred, args.num_classes, args.ignore_index)
    names = args.class_names or [str(i) for i in range(args.num_classes)]
    if len(names) != args.num_classes:
        raise DataError(f"--class-names gives {len(names)} names for --num-classes {args.num_classes}.")
    lines = [
        f"mIoU      {_pct(res['mIoU'])}",
        f"pixel acc {_pct(res['pixel_acc'])}",
        f"mAcc      {_pct(res['mAcc'])}",
        f"fwIoU     {_pct(res['fwIoU'])}",
        "",
        f"{'class':24s} {'IoU':>5s}  {'Acc':>5s}",
    ]
    for name, iou, acc in zip(names, res["IoU"], res["Acc"]):
        lines.append(f"{name[:24]:24s} {_pct(iou)}  {_pct(acc)}")
    lines.append(
        f"({res['num_images']} images; {res['num_unmatched_predictions']} predictions without "
        f"ground truth ignored)"
    )
    res["class_names"] = names
    return res, "\n".join(lines)


def _run_vpq(args: argparse.Namespace) -> tuple[dict, str]:
    from lightning_seg.metrics.vpq import evaluate_vpq_files

    res = evaluate_vpq_files(
        args.gt_json, args.gt_folder, args.pred_json, args.pred_folder, tuple(args.window_frames), args.frame_stride
    )
    lines = [f"{'':8s}| {'All':>5s}  {'Things':>6s}  {'Stuff':>5s}", "-" * 32]
    for k, groups in res["per_k"].items():
        all_, th, st = (_pct(groups[g]["pq"]) for g in ("All", "Things", "Stuff"))
        lines.append(f"{'k=' + str(k):8s}| {all_}  {th:>6s}  {st}")
    v = res["vpq"]
    lines.append(f"{'VPQ':8s}| {_pct(v['All'])}  {_pct(v['Things']):>6s}  {_pct(v['Stuff'])}")
    lines.append(f"({res['num_videos']} videos, {res['num_frames']} annotated frames)")
    return res, "\n".join(lines)


def _keypoint_metric(args: argparse.Namespace):
    from lightning_seg.metrics import keypoints as kp

    norm = args.norm or {"pck": "bbox", "pckh": "head", "nme": "interocular"}[args.metric]
    allowed = {"pck": {"bbox", "torso"}, "pckh": {"head"}, "nme": {"interocular", "interpupil", "box"}}
    if norm not in allowed[args.metric]:
        raise DataError(
            f"--norm {norm} does not apply to --metric {args.metric} "
            f"(choose from {sorted(allowed[args.metric])})."
        )
    if norm in ("torso", "interocular"):
        if not args.norm_keypoints or len(args.norm_keypoints) != 2:
            raise DataError(f"--norm {norm} needs --norm-keypoints I J (e.g. 300-W outer eye corners: 36 45).")
        normalizer = kp.KeypointDistanceNorm(*args.norm_keypoints)
    elif norm == "interpupil":
        if not args.left_group or not args.right_group:
            raise DataError("--norm interpupil needs --left-group and --right-group keypoint indices.")
        normalizer = kp.KeypointCentroidDistanceNorm(args.left_group, args.right_group)
    elif norm == "head":
        normalizer = kp.HeadSizeNorm(args.head_scale)
    elif norm == "box":
        normalizer = kp.BoxSqrtAreaNorm()
    else:
        normalizer = kp.BoxMaxSideNorm()
    box_field = "head_box" if norm == "head" else "bbox"
    return normalizer, box_field


def _run_keypoints(args: argparse.Namespace) -> tuple[dict, str]:
    from lightning_seg.metrics import keypoints as kp

    normalizer, box_field = _keypoint_metric(args)
    pairs = kp.load_keypoint_pairs(args.gt, args.dt, require_all=args.metric == "nme", box_field=box_field)
    num_k = pairs["target"].shape[1]
    if args.metric == "nme":
        metric = kp.NME(normalizer, failure_thresh=args.failure_thresh)
    else:
        alpha = args.alpha if args.alpha is not None else (0.5 if args.metric == "pckh" else 0.2)
        cls = kp.PCKh if args.metric == "pckh" else kp.PCK
        metric = cls(num_k, alpha=alpha, normalizer=normalizer)
    try:
        metric.update(pairs["preds"], pairs["target"], pairs["boxes"])
    except ValueError as exc:
        raise DataError(f"{args.dt}: {exc}") from None
    res = {k: v for k, v in metric.compute().items()}
    res = _jsonable(res)
    res["num_missing_predictions"] = pairs["num_missing"]
    res["num_unmatched_predictions"] = pairs["num_unmatched_predictions"]
    lines = []
    for key, value in res.items():
        if isinstance(value, list):
            value = " ".join("nan" if v is None else f"{v:.3f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"{key:28s} {value}")
    return res, "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lseg-eval",
        description="Evaluate segmentation / keypoint prediction files (exit code 2 on bad input).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, run) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        p.set_defaults(run=run)
        return p

    p = add("coco", "COCO box / mask / boundary / keypoint AP (pycocotools semantics)", _run_coco)
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument("--dt", required=True, help="COCO results JSON (list of detections)")
    p.add_argument("--iou-type", required=True, choices=["bbox", "segm", "boundary", "keypoints"])
    p.add_argument(
        "--kpt-sigmas", type=float, nargs="+", default=None, help="OKS sigma per keypoint (COCO person by default)"
    )
    p.add_argument("--backend", default="faster_coco_eval", choices=["faster_coco_eval", "pycocotools"])
    p.add_argument("--max-dets", type=int, nargs=3, default=[1, 10, 100], metavar=("D1", "D2", "D3"))

    for name, help_, run in (
        ("panoptic", "PQ / SQ / RQ of COCO panoptic predictions (panopticapi rules)", _run_panoptic),
        ("vpq", "video panoptic quality over k-frame windows (VPSNet eval_vpq)", _run_vpq),
    ):
        p = add(name, help_, run)
        p.add_argument("--gt-json", required=True)
        p.add_argument("--gt-folder", required=True)
        p.add_argument("--pred-json", required=True)
        p.add_argument("--pred-folder", required=True)
        if name == "panoptic":
            p.add_argument("--per-class", action="store_true", help="also print every class")
        else:
            p.add_argument("--window-frames", type=int, nargs="+", default=[1, 2, 3, 4],
                           help="window sizes in annotated frames")
            p.add_argument("--frame-stride", type=int, default=5, help="raw frames between annotated frames (names k)")

    p = add("semantic", "mIoU / pixel accuracy / fwIoU of label PNGs matched by file stem", _run_semantic)
    p.add_argument("--gt", required=True, help="folder of ground-truth label maps")
    p.add_argument("--pred", required=True, help="folder of predicted label maps (same stems)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--class-names", nargs="+", default=None)

    p = add("keypoints", "PCK / PCKh / NME of COCO-style keypoint results (top-down)", _run_keypoints)
    p.add_argument("--gt", required=True, help="COCO keypoint ground-truth JSON")
    p.add_argument("--dt", required=True, help="results JSON (list of {image_id, keypoints, [annotation_id]})")
    p.add_argument("--metric", required=True, choices=["pck", "pckh", "nme"])
    p.add_argument("--alpha", type=float, default=None, help="PCK threshold (default 0.2; PCKh 0.5)")
    p.add_argument("--norm", choices=["bbox", "torso", "head", "interocular", "interpupil", "box"], default=None,
                   help="normaliser (default: pck bbox max side, pckh head, nme interocular)")
    p.add_argument("--norm-keypoints", type=int, nargs=2, default=None, metavar=("I", "J"),
                   help="keypoint pair for torso / interocular (e.g. 36 45 on 300-W)")
    p.add_argument("--left-group", type=int, nargs="+", default=None, help="interpupil: left-eye keypoints")
    p.add_argument("--right-group", type=int, nargs="+", default=None, help="interpupil: right-eye keypoints")
    p.add_argument("--head-scale", type=float, default=0.6, help="PCKh: head size = scale * head-box diagonal")
    p.add_argument("--failure-thresh", type=float, default=0.10, help="NME: AUC / failure-rate threshold")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lseg-eval``; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result, table = args.run(args)
    except DataError as exc:
        print(f"lseg-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(_jsonable(result), allow_nan=False) if args.json else table, flush=True)
    except BrokenPipeError:  # e.g. piped into `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
