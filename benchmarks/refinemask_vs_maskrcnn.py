"""RefineMask vs Mask R-CNN, both from this framework, on the synthetic shapes world (issue #13).

Both detectors are built from their synthetic-world experiments
(``experiments/{refinemask,mask_rcnn}_r50_fpn_shapes_24e.yaml``) with the same overrides: the same
ResNet-FPN backbone, the same RPN and box head settings (Mask R-CNN's: RefineMask's official L1
and x2 box losses are overridden so that only the mask branch differs), the same seed (shared
parts start from the same weights), the same batches in the same order (one loader iteration
feeds both), the same number of SGD steps with the same schedule and gradient clipping (35, the
official value). They differ in the mask branch only: Mask R-CNN's 4-conv FCN head (28x28 masks)
against RefineMask's semantic head on P2 and multi-stage mask head (14 -> 28 -> 56 -> 112, SFM,
boundary-aware refinement). The logits convs of both mask branches start from Detectron's small
init (std 0.001; ``--refinemask-logits-init-std 0`` gives RefineMask the official kaiming init,
whose first losses of ~10 nats per stage slow short from-scratch runs down: the tiny model of the
COCO-mini overfit test reached AP50 0.79 in 300 steps with it, 0.97 in 160 without). Steps are
interleaved so that machine load affects both alike. The stars and triangles of the synthetic
world have the thin parts and sharp corners RefineMask is for.

Measured after training, in one run:

- ``mask_ap_*`` / ``boundary_ap_*`` / ``box_ap_*``: COCO AP (``COCOEvaluator``) on the
  validation images, per class in the printed table;
- ``infer_time_ratio``: RefineMask / Mask R-CNN inference time in the setting of the paper's fps
  table: the two COCO experiments' networks (R50-FPN, the paper's widths) on one 800 x 1216 image
  with exactly 100 detections each (score threshold 0; random weights, which do not change the
  work), median of interleaved repeats. The paper: 15.7 vs 11.4 fps on a GPU, a ratio of 1.38;
- ``infer_time_ratio_synthetic``: the same ratio for the two trained benchmark networks over the
  validation set (small images, few detections: the mask heads weigh more);
- ``train_mem_per_image_mb_*``: on CUDA the peak allocated memory of a training step (forward +
  backward) divided by the batch size; on the CPU the activations saved for backward at the end
  of the forward (unique storages, weights left out) divided by the batch size;
- ``refinemask_stage_ious``: RefineMask's mask IoU and Boundary IoU of the positive RoIs per
  stage (``RefineStageMetrics``).

The heads' widths are a budget knob (``--head-width``, ``--fpn-channels``) applied alike; the
paper's are 256. Usage::

    python benchmarks/refinemask_vs_maskrcnn.py                 # default: 1600 steps (BENCHMARKS.md)
    python benchmarks/refinemask_vs_maskrcnn.py --device cuda --steps 12000 --head-width 256 \
        --fpn-channels 256 --depth 50 --height 256 --width 320 --num-train 1024 --batch-size 8

Prints a short table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lightning_seg.callbacks.refine_stages import stage_mask_ious
from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
from lightning_seg.metrics.coco import COCOEvaluator
from lightning_seg.models.detectors.mask_rcnn import MaskRCNN
from lightning_seg.optim import WarmupMultiStepLR

REPO = Path(__file__).resolve().parents[1]
NAMES = ("refinemask", "maskrcnn")


def build(kind: str, num_classes: int, args) -> MaskRCNN:
    """One of the two detectors as its synthetic-world experiment builds it
    (``experiments/{refinemask,mask_rcnn}_r50_fpn_shapes_24e.yaml``: random init, trainable
    BatchNorm), with the benchmark's budget knobs as overrides. The detector around the mask
    branch is made identical: RefineMask's RPN and box head get Mask R-CNN's settings (smooth L1
    with beta 1/9, 2-sample RoIAlign, box loss weights ``--box-loss-weight`` for both), so the
    two differ only in the mask branch and the semantic head."""
    from lightning_seg.cli import build_experiment

    net = "--model.init_args.model.init_args"
    width = args.head_width
    common = [
        f"--seed_everything={args.seed}",  # same initialisation of the shared parts
        f"{net}.backbone.init_args.depth={args.depth}",
        f"{net}.neck.init_args.out_channels={args.fpn_channels}",
        f"{net}.rpn.init_args.anchor_sizes={list(args.anchor_sizes)}",
        f"{net}.rpn.init_args.pre_nms_top_n_train={args.rpn_pre_train}",
        f"{net}.rpn.init_args.post_nms_top_n_train={args.rpn_post_train}",
        f"{net}.rpn.init_args.pre_nms_top_n_test={args.rpn_pre_test}",
        f"{net}.rpn.init_args.post_nms_top_n_test={args.rpn_post_test}",
        f"{net}.rpn.init_args.box_loss_beta={1 / 9}",
        f"{net}.box_head.init_args.batch_size_per_image={args.box_rois}",
        f"{net}.box_head.init_args.detections_per_img={args.detections}",
        f"{net}.box_head.init_args.sampling_ratio=2",
        f"{net}.box_head.init_args.box_loss_beta={1 / 9}",
        f"{net}.box_head.init_args.loss_cls_weight={args.box_loss_weight}",
        f"{net}.box_head.init_args.loss_box_weight={args.box_loss_weight}",
    ]
    if kind == "refinemask":
        experiment = "refinemask_r50_fpn_shapes_24e.yaml"
        extra = [
            f"{net}.semantic_head.init_args.conv_dim={width}",
            f"{net}.mask_head.init_args.conv_dim={width}",
            f"{net}.mask_head.init_args.semantic_channels={width}",
        ]
        std = args.refinemask_logits_init_std or "null"  # null: the official kaiming init
        extra += [f"{net}.semantic_head.init_args.logits_init_std={std}",
                  f"{net}.mask_head.init_args.logits_init_std={std}"]
    else:
        experiment = "mask_rcnn_r50_fpn_shapes_24e.yaml"
        extra = [f"{net}.mask_head.init_args.conv_dims={[width] * 4}"]
    task, data = build_experiment(REPO / "experiments" / experiment, *common, *extra)
    if data.num_classes != num_classes:
        raise ValueError(f"{experiment} has {data.num_classes} classes, the benchmark's data {num_classes}")
    return task.model


def make_optimizer(model: nn.Module, args):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    milestones = [int(args.steps * 0.75)]
    warmup = min(args.warmup, max(args.steps // 4, 1))
    return opt, WarmupMultiStepLR(opt, milestones, warmup_iters=warmup, warmup_factor=0.001)


def saved_bytes(model: nn.Module, batch) -> int:
    """Bytes of the tensors autograd saves for backward during the training forward (unique
    storages, weights left out), i.e. what a training step holds at its peak besides weights
    and gradients."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = model(batch)
    sum(losses.values()).backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def train_memory_per_image(model: nn.Module, batch, device: torch.device) -> float:
    """MB per image of one training step (see the module docstring)."""
    model.train()
    if device.type == "cuda":
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        losses = model(batch)
        sum(losses.values()).backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        model.zero_grad(set_to_none=True)
        return peak / len(batch) / 2**20
    return saved_bytes(model, batch) / len(batch) / 2**20


@torch.no_grad()
def evaluate(models: dict, loader, device, class_names) -> tuple[dict, dict]:
    """COCO bbox / segm / boundary AP of each model, and RefineMask's per-stage IoUs."""
    evaluators = {n: COCOEvaluator(iou_types=("bbox", "segm", "boundary"), per_class=True,
                                   class_names=class_names) for n in models}
    captured = []
    head = models["refinemask"].mask_head
    hook = head.register_forward_hook(lambda m, a, out: captured.append(out))
    stage_sums: list[list[float]] = []
    count = 0
    try:
        for batch in loader:
            batch = batch.to(device)
            ids = [m.image_id for m in batch.meta]
            for name, model in models.items():
                model.eval()
                captured.clear()
                evaluators[name].update(model(batch), batch.instances, ids)
                if name == "refinemask" and captured:
                    raw = captured[-1]
                    res = stage_mask_ious(head.refined_logits(raw), raw.rois, batch.instances)
                    n = int(res[0][0].numel())
                    if n:
                        if not stage_sums:
                            stage_sums = [[0.0, 0.0] for _ in res]
                        for acc, (m_iou, b_iou) in zip(stage_sums, res):
                            acc[0] += float(m_iou.sum())
                            acc[1] += float(b_iou.sum())
                        count += n
    finally:
        hook.remove()
    stages = {f"s{k}": (round(m / count, 4), round(b / count, 4))
              for k, (m, b) in enumerate(stage_sums)} if count else {}
    return {n: e.compute() for n, e in evaluators.items()}, stages


@torch.no_grad()
def inference_times(models: dict, loader, device, repeats: int, to_device: bool = True) -> dict[str, float]:
    """Median (over interleaved repeats) of the summed eval-forward time over the loader."""
    batches = [b.to(device) for b in loader] if to_device else list(loader)
    totals = {n: [] for n in models}
    for model in models.values():
        model.eval()
        model(batches[0])  # warm-up
    for r in range(repeats):
        order = list(models) if r % 2 == 0 else list(reversed(list(models)))
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for b in batches:
                models[name](b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in totals.items()}


@torch.no_grad()
def paper_setting_times(args, device) -> dict[str, float]:
    """Inference time of both COCO experiments' networks (R50-FPN, paper widths, random weights)
    on one ``--timing-size`` image with exactly 100 detections each (score threshold 0), the
    setting of the paper's fps table; median of interleaved repeats."""
    from lightning_seg.cli import build_experiment
    from lightning_seg.structures import Batch

    net = "--model.init_args.model.init_args"
    models = {}
    for name, experiment in (("refinemask", "refinemask_r50_fpn_coco_1x.yaml"),
                             ("maskrcnn", "mask_rcnn_r50_fpn_coco_1x.yaml")):
        task, _ = build_experiment(REPO / "experiments" / experiment, "--seed_everything=0",
                                   f"{net}.backbone.init_args.weights=null",
                                   f"{net}.box_head.init_args.score_thresh=0.0")
        models[name] = task.model.to(device).eval()
    h, w = args.timing_size
    g = torch.Generator().manual_seed(0)
    batch = Batch.from_images([torch.rand(3, h, w, generator=g)]).to(device)
    for model in models.values():
        out = model(batch)
        if len(out[0]) != model.box_head.detections_per_img:
            raise RuntimeError(f"expected {model.box_head.detections_per_img} detections, got {len(out[0])}")
    return inference_times(models, [batch], device, args.timing_repeats, to_device=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1600,
                        help="SGD steps of each detector (2400 before a run showed it over 45 min on a CPU)")
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50))
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--head-width", type=int, default=128,
                        help="mask head / semantic head width (paper 256)")
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--num-val", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clip", type=float, default=35.0, help="gradient norm clip (official 35)")
    parser.add_argument("--box-loss-weight", type=float, default=1.0,
                        help="box head loss weights, both models (RefineMask's config: 2)")
    parser.add_argument("--refinemask-logits-init-std", type=float, default=0.001,
                        help="normal init std of RefineMask's logits convs, as Mask R-CNN's mask "
                             "predictor (0.001); 0: the official kaiming init")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--timing-size", type=int, nargs=2, default=(800, 1216),
                        help="image of the paper-setting timing (COCO: shorter side 800)")
    parser.add_argument("--skip-paper-timing", action="store_true")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--anchor-sizes", type=float, nargs=5, default=(16, 32, 64, 128, 256))
    parser.add_argument("--rpn-pre-train", type=int, default=600)
    parser.add_argument("--rpn-post-train", type=int, default=300)
    parser.add_argument("--rpn-pre-test", type=int, default=300)
    parser.add_argument("--rpn-post-test", type=int, default=300)
    parser.add_argument("--box-rois", type=int, default=128, help="sampled RoIs per image")
    parser.add_argument("--detections", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # first, so that its figure is printed even if the training run is cut short: it needs no training
    paper = None if args.skip_paper_timing else paper_setting_times(args, device)
    if paper:
        h, w = args.timing_size
        print(f"paper setting ({h}x{w} image, 100 detections, random weights): RefineMask "
              f"{paper['refinemask']:.4f} s, Mask R-CNN {paper['maskrcnn']:.4f} s, infer_time_ratio "
              f"{paper['refinemask'] / paper['maskrcnn']:.3f}", flush=True)

    dm = SyntheticShapesDataModule(
        task="instance", num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        height=args.height, width=args.width, batch_size=args.batch_size, num_workers=0,
        persistent_workers=False, pin_memory=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    num_classes = dm.num_classes
    models, optims = {}, {}
    for name in NAMES:
        models[name] = build(name, num_classes, args).to(device).train()
        optims[name] = make_optimizer(models[name], args)
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}

    stats = {n: {"wall": 0.0, "cpu": 0.0, "loss": []} for n in NAMES}
    torch.manual_seed(args.seed)  # the loader's shuffle order
    step, t_start, mem = 0, time.perf_counter(), {}
    while step < args.steps:
        for batch in dm.train_dataloader():
            if step >= args.steps:
                break
            batch = batch.to(device)
            if not mem:
                mem = {n: train_memory_per_image(m, batch, device) for n, m in models.items()}
            order = NAMES if step % 2 == 0 else tuple(reversed(NAMES))
            for name in order:
                model, (opt, sched) = models[name], optims[name]
                w0, c0 = time.perf_counter(), time.process_time()
                losses = model(batch)
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                sched.step()
                value = float(loss.detach())
                stats[name]["wall"] += time.perf_counter() - w0
                stats[name]["cpu"] += time.process_time() - c0
                stats[name]["loss"].append(value)
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                recent = {n: statistics.mean(stats[n]["loss"][-args.log_every:]) for n in NAMES}
                print(f"step {step}/{args.steps}  loss refinemask {recent['refinemask']:.3f}  "
                      f"maskrcnn {recent['maskrcnn']:.3f}  ({time.perf_counter() - t_start:.0f} s)",
                      flush=True)

    val_loader = dm.val_dataloader()
    results, stages = evaluate(models, val_loader, device, list(dm.info.class_names))
    times = inference_times(models, val_loader, device, args.timing_repeats)

    print(f"\n{'':28s}{'RefineMask':>12s}{'Mask R-CNN':>12s}")
    rows = [("mask AP", "segm/AP"), ("mask AP50", "segm/AP50"), ("mask AP75", "segm/AP75"),
            ("boundary AP", "boundary/AP"), ("box AP", "bbox/AP")]
    for cls in dm.info.class_names:
        rows += [(f"mask AP {cls}", f"segm/AP/{cls}"), (f"boundary AP {cls}", f"boundary/AP/{cls}")]
    for label, key in rows:
        print(f"{label:28s}{results['refinemask'].get(key, float('nan')):12.4f}"
              f"{results['maskrcnn'].get(key, float('nan')):12.4f}")
    print(f"{'train CPU s/step':28s}{stats['refinemask']['cpu'] / args.steps:12.3f}"
          f"{stats['maskrcnn']['cpu'] / args.steps:12.3f}")
    print(f"{'inference s (val set)':28s}{times['refinemask']:12.3f}{times['maskrcnn']:12.3f}")
    if paper:
        print(f"{'inference s (paper setting)':28s}{paper['refinemask']:12.3f}{paper['maskrcnn']:12.3f}")
    print(f"{'train MB per image':28s}{mem['refinemask']:12.1f}{mem['maskrcnn']:12.1f}")
    print(f"{'parameters (M)':28s}{params['refinemask']:12.2f}{params['maskrcnn']:12.2f}")
    print("RefineMask per stage (mask IoU, Boundary IoU) of the positive RoIs:", stages)

    out = {
        "mask_ap_refinemask": round(float(results["refinemask"]["segm/AP"]), 4),
        "mask_ap_maskrcnn": round(float(results["maskrcnn"]["segm/AP"]), 4),
        "boundary_ap_refinemask": round(float(results["refinemask"]["boundary/AP"]), 4),
        "boundary_ap_maskrcnn": round(float(results["maskrcnn"]["boundary/AP"]), 4),
        "box_ap_refinemask": round(float(results["refinemask"]["bbox/AP"]), 4),
        "box_ap_maskrcnn": round(float(results["maskrcnn"]["bbox/AP"]), 4),
        "infer_time_ratio": round(paper["refinemask"] / paper["maskrcnn"], 3) if paper else None,
        "infer_time_ratio_synthetic": round(times["refinemask"] / times["maskrcnn"], 3),
        "train_mem_per_image_mb_refinemask": round(mem["refinemask"], 1),
        "train_mem_per_image_mb_maskrcnn": round(mem["maskrcnn"], 1),
        "train_cpu_s_per_step_refinemask": round(stats["refinemask"]["cpu"] / args.steps, 3),
        "train_cpu_s_per_step_maskrcnn": round(stats["maskrcnn"]["cpu"] / args.steps, 3),
        "refinemask_stage_ious": stages,
        "steps": args.steps, "batch_size": args.batch_size, "device": str(device),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
