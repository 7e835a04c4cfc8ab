"""Learning parity of our Mask R-CNN against torchvision's on the synthetic shapes world (issue #4).

Both detectors are trained from scratch (random init, same seed, same ResNet-``depth`` FPN,
trainable BatchNorm in both) with the same budget: the same batches in the same order (one
loader iteration feeds both), the same number of SGD steps, the same optimizer and
warm-up schedule. Steps are interleaved (ours, torchvision, ours, ...) so that machine load
affects both alike; each side's process CPU time per step is recorded. Both are then evaluated
with the project's ``COCOEvaluator`` (bbox + segm) on the validation split.

Ours is the network of ``experiments/mask_rcnn_r50_fpn_shapes_24e.yaml`` (what ``lseg fit``
trains) with the depth and the CPU budget knobs below as overrides; it uses its paper defaults
(``aligned=True`` RoIAlign); torchvision uses its own
(``aligned=False``). torchvision's transform is set so that it does not resize
(``min_size=H``, ``max_size=W`` gives a scale of exactly 1 for ``H x W`` images) and uses the
same ImageNet normalisation. Goal: ``mask_ap_ours >= mask_ap_torchvision - 0.01``.

Usage::

    python benchmarks/maskrcnn_learning_parity.py --steps 300 --depth 18 --threads 1

Prints a short table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from lightning_seg.constants import IMAGENET_MEAN, IMAGENET_STD
from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
from lightning_seg.metrics.coco import COCOEvaluator
from lightning_seg.optim import WarmupMultiStepLR
from lightning_seg.structures import InstancePredictions, InstanceTargets

REPO = Path(__file__).resolve().parents[1]

PIXEL_MEAN, PIXEL_STD = IMAGENET_MEAN, IMAGENET_STD


def build_torchvision(
    depth: int, num_classes: int, height: int, width: int, budget: dict[str, int]
) -> nn.Module:
    """torchvision Mask R-CNN, ResNet-``depth`` FPN from scratch, no resize in its transform.

    ``num_classes`` excludes the background (torchvision gets ``num_classes + 1``).
    Trainable ``nn.BatchNorm2d`` as torchvision's own builders use without pretrained weights.
    """
    backbone = resnet_fpn_backbone(
        backbone_name=f"resnet{depth}", weights=None, trainable_layers=5,
        norm_layer=nn.BatchNorm2d,
    )
    return TorchvisionMaskRCNN(
        backbone, num_classes=num_classes + 1,
        min_size=min(height, width), max_size=max(height, width),
        image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD),
        rpn_pre_nms_top_n_train=budget["rpn_pre_train"],
        rpn_post_nms_top_n_train=budget["rpn_post_train"],
        rpn_pre_nms_top_n_test=budget["rpn_pre_test"],
        rpn_post_nms_top_n_test=budget["rpn_post_test"],
        box_batch_size_per_image=budget["box_rois"],
        box_detections_per_img=budget["detections"],
    )


def torchvision_inputs(
    images: torch.Tensor, image_sizes: list[tuple[int, int]], targets: list[InstanceTargets]
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Unpadded image list and target dicts (labels + 1: torchvision's 0 is background)."""
    imgs = [images[i, :, :h, :w] for i, (h, w) in enumerate(image_sizes)]
    tv_targets = [
        {"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks.to(torch.uint8)}
        for t in targets
    ]
    return imgs, tv_targets


def from_torchvision(out: dict[str, torch.Tensor], size: tuple[int, int]) -> InstancePredictions:
    """torchvision detections -> ``InstancePredictions`` (labels - 1, masks ``> 0.5``)."""
    return InstancePredictions(
        boxes=out["boxes"], scores=out["scores"], labels=out["labels"] - 1,
        image_size=size, masks=out["masks"][:, 0] > 0.5,  # [N, 1, H, W] -> [N, H, W]
    )


def make_optimizer(model: nn.Module, lr: float, steps: int, warmup: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    milestones = [int(steps * 0.75)]
    sched = WarmupMultiStepLR(opt, milestones, gamma=0.1, warmup_iters=warmup,
                              warmup_factor=0.001)
    return opt, sched


def train_step(model, opt, sched, loss_fn) -> tuple[float, float, float]:
    """One SGD step; returns (loss, wall seconds, process CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    losses = loss_fn()
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()
    sched.step()
    loss = float(loss.detach())  # waits for the device
    return loss, time.perf_counter() - w0, time.process_time() - c0


@torch.no_grad()
def evaluate(ours, tv, loader, device: torch.device) -> dict[str, dict[str, float]]:
    ours.eval()
    tv.eval()
    ev = {"ours": COCOEvaluator(iou_types=("bbox", "segm")),
          "torchvision": COCOEvaluator(iou_types=("bbox", "segm"))}
    for batch in loader:
        batch = batch.to(device)
        ids = [m.image_id for m in batch.meta]
        preds_ours = ours(batch)
        imgs = [batch.images[i, :, :h, :w] for i, (h, w) in enumerate(batch.image_sizes)]
        preds_tv = [from_torchvision(o, tuple(s)) for o, s in zip(tv(imgs), batch.image_sizes)]
        ev["ours"].update(preds_ours, batch.instances, ids)
        ev["torchvision"].update(preds_tv, batch.instances, ids)
    return {name: e.compute() for name, e in ev.items()}


def experiment_network(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """Our network as ``experiments/mask_rcnn_r50_fpn_shapes_24e.yaml`` builds it (random init,
    trainable BatchNorm), with the benchmark's depth and CPU budget knobs as overrides."""
    from lightning_seg.cli import build_experiment

    net = "--model.init_args.model.init_args"
    task, data = build_experiment(
        REPO / "experiments" / "mask_rcnn_r50_fpn_shapes_24e.yaml",
        f"{net}.backbone.init_args.depth={args.depth}",
        f"{net}.rpn.init_args.pre_nms_top_n_train={args.rpn_pre_train}",
        f"{net}.rpn.init_args.post_nms_top_n_train={args.rpn_post_train}",
        f"{net}.rpn.init_args.pre_nms_top_n_test={args.rpn_pre_test}",
        f"{net}.rpn.init_args.post_nms_top_n_test={args.rpn_post_test}",
        f"{net}.box_head.init_args.batch_size_per_image={args.box_rois}",
        f"{net}.box_head.init_args.detections_per_img={args.detections}",
    )
    if data.num_classes != num_classes:
        raise ValueError(f"the experiment has {data.num_classes} classes, the benchmark's data {num_classes}")
    return task.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50))
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-val", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--log-every", type=int, default=25)
    # CPU budget knobs, applied identically to both models (paper / torchvision defaults)
    parser.add_argument("--rpn-pre-train", type=int, default=2000)
    parser.add_argument("--rpn-post-train", type=int, default=2000)
    parser.add_argument("--rpn-pre-test", type=int, default=1000)
    parser.add_argument("--rpn-post-test", type=int, default=1000)
    parser.add_argument("--box-rois", type=int, default=512, help="sampled RoIs per image")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dm = SyntheticShapesDataModule(
        task="instance", num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        height=args.height, width=args.width, batch_size=args.batch_size, num_workers=0,
        persistent_workers=False, pin_memory=False,
    )
    dm.prepare_data()
    dm.setup("fit")
    num_classes = dm.num_classes

    budget = {"rpn_pre_train": args.rpn_pre_train, "rpn_post_train": args.rpn_post_train,
              "rpn_pre_test": args.rpn_pre_test, "rpn_post_test": args.rpn_post_test,
              "box_rois": args.box_rois, "detections": args.detections}
    torch.manual_seed(args.seed)
    ours = experiment_network(args, num_classes)
    torch.manual_seed(args.seed)
    tv = build_torchvision(args.depth, num_classes, args.height, args.width, budget)
    ours.to(device).train()
    tv.to(device).train()
    warmup = min(args.warmup, max(args.steps // 4, 1))
    opt_o, sched_o = make_optimizer(ours, args.lr, args.steps, warmup)
    opt_t, sched_t = make_optimizer(tv, args.lr, args.steps, warmup)

    stats = {"ours": {"wall": 0.0, "cpu": 0.0, "loss": []},
             "torchvision": {"wall": 0.0, "cpu": 0.0, "loss": []}}
    torch.manual_seed(args.seed)  # the loader's shuffle order
    step, epoch, t_start = 0, 0, time.perf_counter()
    while step < args.steps:
        for batch in dm.train_dataloader():
            if step >= args.steps:
                break
            batch = batch.to(device)
            targets = list(batch.instances)
            imgs, tv_targets = torchvision_inputs(batch.images, batch.image_sizes, targets)
            runs = {
                "ours": (ours, opt_o, sched_o, partial(ours, batch)),
                "torchvision": (tv, opt_t, sched_t, partial(tv, imgs, tv_targets)),
            }
            order = ("ours", "torchvision") if step % 2 == 0 else ("torchvision", "ours")
            for name in order:
                loss, wall, cpu = train_step(*runs[name])
                stats[name]["wall"] += wall
                stats[name]["cpu"] += cpu
                stats[name]["loss"].append(loss)
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                n = min(args.log_every, step)
                lo = sum(stats["ours"]["loss"][-n:]) / n
                lt = sum(stats["torchvision"]["loss"][-n:]) / n
                print(f"step {step}/{args.steps} epoch {epoch} loss ours {lo:.3f} "
                      f"tv {lt:.3f} elapsed {time.perf_counter() - t_start:.0f}s", flush=True)
        epoch += 1

    t_eval = time.perf_counter()
    results = evaluate(ours, tv, dm.val_dataloader(), device)
    eval_s = time.perf_counter() - t_eval

    def per_step(name: str, key: str) -> float:
        return stats[name][key] / max(args.steps, 1)

    rows = [("metric", "ours", "torchvision")]
    for key in ("segm/AP", "segm/AP50", "segm/AP75", "bbox/AP", "bbox/AP50"):
        rows.append((key, f"{results['ours'][key]:.4f}", f"{results['torchvision'][key]:.4f}"))
    rows.append(("train CPU s/step", f"{per_step('ours', 'cpu'):.3f}",
                 f"{per_step('torchvision', 'cpu'):.3f}"))
    rows.append(("train wall s/step", f"{per_step('ours', 'wall'):.3f}",
                 f"{per_step('torchvision', 'wall'):.3f}"))
    n = min(args.log_every, args.steps)
    rows.append((f"final loss (mean last {n})",
                 f"{sum(stats['ours']['loss'][-n:]) / n:.3f}",
                 f"{sum(stats['torchvision']['loss'][-n:]) / n:.3f}"))
    for r in rows:
        print(f"{r[0]:<26}{r[1]:>12}{r[2]:>14}")
    mask_ours = results["ours"]["segm/AP"]
    mask_tv = results["torchvision"]["segm/AP"]
    print(f"depth {args.depth}, {args.steps} steps x batch {args.batch_size}, {epoch} epochs "
          f"over {args.num_train} images, eval {eval_s:.0f}s; goal ours >= tv - 0.01: "
          f"{'MET' if mask_ours >= mask_tv - 0.01 else 'NOT MET'}")
    print(json.dumps({
        "mask_ap_ours": round(mask_ours, 4),
        "mask_ap_torchvision": round(mask_tv, 4),
        "box_ap_ours": round(results["ours"]["bbox/AP"], 4),
        "box_ap_torchvision": round(results["torchvision"]["bbox/AP"], 4),
        "mask_ap50_ours": round(results["ours"]["segm/AP50"], 4),
        "mask_ap50_torchvision": round(results["torchvision"]["segm/AP50"], 4),
        "steps": args.steps,
        "seed": args.seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "depth": args.depth,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "budget": budget,
        "train_s_per_step_ours": round(per_step("ours", "cpu"), 4),
        "train_s_per_step_torchvision": round(per_step("torchvision", "cpu"), 4),
        "train_wall_s_per_step_ours": round(per_step("ours", "wall"), 4),
        "train_wall_s_per_step_torchvision": round(per_step("torchvision", "wall"), 4),
    }))


if __name__ == "__main__":
    main()
