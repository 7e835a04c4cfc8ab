"""Speed of our Mask R-CNN R50-FPN against torchvision's ``maskrcnn_resnet50_fpn``.

Both models are built with the same settings (ours from ``experiments/models/mask_rcnn_r50_fpn.yaml``
with torchvision's choices as overrides: ``aligned=False``, trainable BatchNorm), ours receives
torchvision's weights, and both run on identical batches, interleaved step by step (the
order alternates) so that machine load affects both alike. Reported: median training step
time (forward + backward + SGD step) and median inference time, and their ratios
ours / torchvision (goal <= 1.0). torchvision's timings include its transform (normalise,
resize by a factor of exactly 1 here, batch); ours include normalisation and padding.

Usage::

    python benchmarks/maskrcnn_vs_torchvision.py --size 320 --batch 2 --steps 5

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from lightning_seg.cli import build_experiment
from lightning_seg.models.detectors.mask_rcnn import load_torchvision_maskrcnn
from lightning_seg.structures import Batch, InstanceTargets

REPO = Path(__file__).resolve().parents[1]


def torchvision_compat_network(args: argparse.Namespace) -> torch.nn.Module:
    """The network of ``experiments/models/mask_rcnn_r50_fpn.yaml`` configured as torchvision's
    ``maskrcnn_resnet50_fpn`` without pretrained weights: ``aligned=False`` RoIAlign, trainable
    BatchNorm, every stage trained; the detection score threshold of the benchmark."""
    net = "--model.init_args.model.init_args"
    task, _ = build_experiment(
        REPO / "experiments" / "mask_rcnn_r50_fpn_coco_1x.yaml",
        f"{net}.backbone.init_args.weights=null", f"{net}.backbone.init_args.frozen_bn=false",
        f"{net}.backbone.init_args.freeze_at=0", f"{net}.box_head.init_args.aligned=false",
        f"{net}.mask_head.init_args.aligned=false", f"{net}.mask_head.init_args.target_aligned=false",
        f"{net}.box_head.init_args.score_thresh={args.score_thresh}",
    )
    if task.num_classes != args.num_classes:
        raise ValueError(f"--num-classes must be {task.num_classes} (COCO's, as the experiment)")
    return task.model


def make_batch(batch: int, size: int, num_classes: int, num_instances: int, seed: int):
    """Random images with random rectangle instances (same data for both models)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(num_instances, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(num_instances, 2, generator=g) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1).floor()
        masks = torch.zeros(num_instances, size, size, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[i, y1:y2, x1:x2] = True
        labels = torch.randint(0, num_classes, (num_instances,), generator=g)
        targets.append(InstanceTargets(boxes, labels, (size, size), masks=masks))
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stage_times(ours, tv, batch, tv_images, args, timed) -> dict[str, dict[str, float]]:
    """Median time of each inference stage of both models (``--steps`` runs, interleaved).

    Stages: backbone + FPN (with each model's normalisation / batching), RPN (proposals), RoI
    heads (box head, per-class NMS, mask head), mask pasting into the image.
    """
    ours.eval(), tv.eval()
    sizes = [tuple(s) for s in batch.image_sizes]
    state: dict = {}

    def ours_stages():
        def features():
            state["f"] = ours.features(batch)

        def rpn():
            state["p"] = ours.rpn.predict(ours.rpn(state["f"], sizes), sizes)

        def heads():
            box_raw = ours.box_head(state["f"], state["p"], sizes)
            state["d"] = ours.box_head.predict(box_raw, sizes)
            raw = ours.mask_head(state["f"], [d.boxes for d in state["d"]], [d.labels for d in state["d"]])
            state["m"] = ours.mask_head.predict(raw)

        def paste():
            ours.postprocess(state["d"], state["m"], batch.orig_sizes)

        return {"backbone_fpn": features, "rpn": rpn, "roi_heads": heads, "paste": paste}

    def tv_stages():
        def features():
            state["ti"], _ = tv.transform(tv_images)
            state["tf"] = tv.backbone(state["ti"].tensors)

        def rpn():
            state["tp"], _ = tv.rpn(state["ti"], state["tf"])

        def heads():
            state["td"], _ = tv.roi_heads(state["tf"], state["tp"], state["ti"].image_sizes)

        def paste():
            tv.transform.postprocess(state["td"], state["ti"].image_sizes, [tuple(s) for s in sizes])

        return {"backbone_fpn": features, "rpn": rpn, "roi_heads": heads, "paste": paste}

    ours_fns, tv_fns = ours_stages(), tv_stages()
    times = {name: {"ours": [], "torchvision": []} for name in ours_fns}
    for step in range(args.warmup + args.steps):
        order = (("ours", ours_fns), ("torchvision", tv_fns))
        for side, fns in order if step % 2 == 0 else order[::-1]:
            for name, fn in fns.items():  # stages in order: each feeds the next
                elapsed = timed(fn)
                if step >= args.warmup:
                    times[name][side].append(elapsed)
    return {name: {side: round(statistics.median(v), 4) for side, v in t.items()} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=320, help="square image side")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--instances", type=int, default=4, help="instances per image")
    parser.add_argument(
        "--score-thresh", type=float, default=0.0,
        help="box score threshold of both models at inference. A randomly initialised model "
        "scores every class near 1/(K+1), so the usual 0.05 leaves no detection and the mask "
        "branch never runs; 0 keeps the top 100 per image, as a trained model would.",
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for both models")
    parser.add_argument("--stages", action="store_true",
                        help="also time each inference stage of both models (backbone + FPN, RPN, "
                        "RoI heads, mask pasting)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.num_classes + 1,
        min_size=args.size, max_size=args.size, box_score_thresh=args.score_thresh,
    )
    ours = torchvision_compat_network(args)
    load_torchvision_maskrcnn(ours, tv.state_dict())
    tv.to(device)
    ours.to(device)

    images, targets = make_batch(args.batch, args.size, args.num_classes, args.instances, 0)
    images = images.to(device)
    targets = [t.to(device) for t in targets]
    sizes = [(args.size, args.size)] * args.batch
    batch = Batch.from_images(images, targets, image_sizes=sizes)
    tv_images = list(images)
    tv_targets = [
        {"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks.to(torch.uint8)}
        for t in targets
    ]
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    opt_tv = torch.optim.SGD(tv.parameters(), lr=1e-3, momentum=0.9)

    def train_ours() -> None:
        loss = sum(ours(batch).values())
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_tv() -> None:
        loss = sum(tv(tv_images, tv_targets).values())
        opt_tv.zero_grad(set_to_none=True)
        loss.backward()
        opt_tv.step()

    @torch.no_grad()
    def infer_ours() -> None:
        ours(batch)

    @torch.no_grad()
    def infer_tv() -> None:
        tv(tv_images)

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            fn()
        _sync(device)
        return time.perf_counter() - start

    def run(fn_ours, fn_tv) -> tuple[float, float]:
        t_ours, t_tv = [], []
        for step in range(args.warmup + args.steps):
            pair = [(fn_ours, t_ours), (fn_tv, t_tv)]
            for fn, times in pair if step % 2 == 0 else pair[::-1]:
                elapsed = timed(fn)
                if step >= args.warmup:
                    times.append(elapsed)
        return statistics.median(t_ours), statistics.median(t_tv)

    ours.train(), tv.train()
    train_ours_s, train_tv_s = run(train_ours, train_tv)
    ours.eval(), tv.eval()
    infer_ours_s, infer_tv_s = run(infer_ours, infer_tv)
    with torch.no_grad():
        num_dets = [len(p) for p in ours(batch)]
    stages = stage_times(ours, tv, batch, tv_images, args, timed) if args.stages else None

    result = {
        "benchmark": "maskrcnn_vs_torchvision",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "amp": args.amp,
        "score_thresh": args.score_thresh,
        "detections_per_image": num_dets,
        "ours_train_step_s": round(train_ours_s, 4),
        "torchvision_train_step_s": round(train_tv_s, 4),
        "ours_infer_s": round(infer_ours_s, 4),
        "torchvision_infer_s": round(infer_tv_s, 4),
        **({"stages_s": stages} if stages else {}),
        "train_step_ratio": round(train_ours_s / train_tv_s, 3),
        "infer_ratio": round(infer_ours_s / infer_tv_s, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
