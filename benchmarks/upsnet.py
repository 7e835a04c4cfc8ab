"""UPSNet on the synthetic shapes world: its panoptic head against the heuristic merge, and the
cost of one panoptic network against two single-task ones (issue #14).

1. **PQ**: one UPSNet (ResNet-``depth`` FPN, random init, the paper's heads and losses) is
   trained on the panoptic shapes world (SGD with warm-up, fixed seed and budget). The same
   trained network is then evaluated twice on the validation split: with its parameter-free
   panoptic head (the official inference) and with the heuristic merge (Panoptic FPN style:
   its ordinary detections pasted by score, the rest filled from the semantic arg-max).
   ``pq_gain_vs_heuristic = PQ(UPSNet head) - PQ(heuristic merge)``; the paper reports > 0.
   ``pq_gain_ci95_images``: its 95% interval over the validation images (paired bootstrap of
   the per-image matching counts, the same trained network): how much gain the choice of
   images alone makes; the spread over training seeds takes runs with other ``--seed``.
   ``--fusion-ablation`` re-scores the network with the head changed at test only: without
   its unknown channel, and with the mask logits weighted 2 against the semantic channel.
   ``--outline`` measures where the thing outlines come from: for each ground-truth thing with
   a detection, the IoU of what the mask logits, the semantic head and the panoptic head's sum of
   the two draw inside the detection's box (``part_outlines``), by thing size.
2. **Cost**: per-image inference time (batch 1, interleaved, medians) of UPSNet producing its
   panoptic output, against our Mask R-CNN plus our DeepLab v3+ (same ResNet depth, output
   stride 16) run one after the other, as a two-network panoptic system would.
   ``time_ratio_vs_two_models = t(UPSNet) / (t(Mask R-CNN) + t(DeepLab v3+))`` (goal < 1: one
   backbone instead of two), the Mask R-CNN keeping detections with a score of at least 0.6
   (``--score-thresh``), the panoptic threshold (both sides then make the same instance
   work). The Mask R-CNN has the same parts as UPSNet's instance branch and carries its
   trained weights, so that it makes as many detections (and pastes as many masks) as a
   trained detector; DeepLab's cost does not
   depend on its weights. The two networks' side leaves out the merge they would still need:
   ``time_ratio_vs_two_models_merged`` adds it; ``time_ratio_vs_two_models_default_thresh``
   times the Mask R-CNN at its own default score threshold (0.05, up to 100 detections and
   masks, as for COCO AP). ``time_ratio_vs_two_models_untrained_r50`` times the three networks
   again at the paper's depth (``--structural-depth``), untrained (no detection passes 0.6 in
   any of them): the cost of the structure alone, one backbone and a semantic head against two
   backbones.
3. **Cost in the paper's setting** (first, as it needs no training):
   ``time_ratio_vs_two_models_paper_setting`` is the same ratio for the COCO experiments'
   networks (``upsnet_r50_fpn_coco_1x.yaml``; ``mask_rcnn_r50_fpn_coco_1x.yaml`` with its
   weights; DeepLab v3+ R50 over COCO panoptic's 133 classes), random weights, on one image of
   ``--timing-size`` (800 x 1216), with exactly ``n`` detections on both sides for each ``n``
   of ``--paper-detections`` (score thresholds 0, so that both sides' detection post-processing
   ranks all 80 000 (RoI, class) pairs; none of UPSNet's removed as covered, the most work its
   panoptic head can have for ``n`` instances).

The networks are those of ``experiments/upsnet_r50_fpn_shapes_24e.yaml``,
``mask_rcnn_r50_fpn_shapes_24e.yaml`` and ``deeplabv3plus_r50_shapes_30e.yaml`` (what ``lseg
fit`` trains), with the depth and the CPU budget knobs below as overrides; at the defaults the
UPSNet and its training are ``experiments/upsnet_r18_fpn_shapes_cpu.yaml`` (8 whole epochs there,
1024 steps).

Usage::

    python benchmarks/upsnet.py                      # default: 1000 steps (41 min on two idle cores)
    python benchmarks/upsnet.py --steps 20 --num-train 16 --num-val 4 --timing-images 2  # smoke
    python benchmarks/upsnet.py --device cuda --steps 3000 --depth 50   # where a GPU is lent
    python benchmarks/upsnet.py --save outputs/upsnet_bench.pt   # keep the trained network ...
    python benchmarks/upsnet.py --load outputs/upsnet_bench.pt   # ... and score / time it again
    python benchmarks/upsnet.py --load outputs/upsnet_bench.pt --fusion-ablation   # + test-time head variants
    python benchmarks/upsnet.py --load outputs/upsnet_bench.pt --max-objects 16   # on a more crowded world
    python benchmarks/upsnet.py --load outputs/upsnet_bench.pt --paper-detections  # without the paper setting
    python benchmarks/upsnet.py --load outputs/upsnet_bench.pt --outline   # what each part draws

Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_seg.data.datamodules.synthetic import SyntheticShapesDataModule
from lightning_seg.data.formats.masks import masks_to_boxes
from lightning_seg.data.transforms import TrainTransform
from lightning_seg.metrics.panoptic import PanopticCounts, panoptic_counts, pq_from_counts
from lightning_seg.models.heads import HeuristicPanopticMerge
from lightning_seg.models.postprocess.panoptic import box_extents, box_masks, paste_mask_logits
from lightning_seg.ops.boxes import box_iou
from lightning_seg.optim import WarmupMultiStepLR
from lightning_seg.structures import Batch

REPO = Path(__file__).resolve().parents[1]
NET = "--model.init_args.model.init_args"
CLIP_NORM = 10.0  # gradient norm clipping of the training loop
UPSNET_PARTS = ("semantic_head.", "panoptic_head.")  # what --set may change


def instance_overrides(args) -> list[str]:
    """The CPU budget knobs of the parts UPSNet and Mask R-CNN share (backbone, FPN, RPN, box
    head), as ``lseg`` overrides."""
    return [
        f"{NET}.backbone.init_args.depth={args.depth}",
        f"{NET}.neck.init_args.out_channels={args.fpn_channels}",
        f"{NET}.rpn.init_args.anchor_sizes=[{','.join(str(a) for a in args.anchor_sizes)}]",
        f"{NET}.rpn.init_args.pre_nms_top_n_train={args.rpn_pre_train}",
        f"{NET}.rpn.init_args.post_nms_top_n_train={args.rpn_post_train}",
        f"{NET}.rpn.init_args.pre_nms_top_n_test={args.rpn_pre_test}",
        f"{NET}.rpn.init_args.post_nms_top_n_test={args.rpn_post_test}",
        f"{NET}.box_head.init_args.batch_size_per_image={args.box_rois}",
    ]


def upsnet_change(change: str) -> str:
    """A ``--set`` value: an override of one of UPSNet's own heads (``PART.init_args.KEY=VALUE``).

    Raises:
        argparse.ArgumentTypeError: another part (the two networks UPSNet is timed against share
            the others, and take UPSNet's weights), or no ``=``.
    """
    if not change.startswith(UPSNET_PARTS) or "=" not in change:
        raise argparse.ArgumentTypeError(
            f"{change!r}: expected PART.init_args.KEY=VALUE with PART one of "
            f"{', '.join(p.rstrip('.') for p in UPSNET_PARTS)}, UPSNet's own heads")
    return change


def build_upsnet(args, info) -> nn.Module:
    """The network of ``experiments/upsnet_r50_fpn_shapes_24e.yaml`` with the budget knobs."""
    from lightning_seg.cli import build_experiment

    task, data = build_experiment(
        REPO / "experiments" / "upsnet_r50_fpn_shapes_24e.yaml", *instance_overrides(args),
        f"{NET}.panoptic_head.init_args.stuff_area_limit={args.stuff_area_limit}",
        f"{NET}.panoptic_head.init_args.score_thresh={args.score_thresh}",
        *(f"{NET}.{change}" for change in args.net_set),
        f"--seed_everything={args.seed}",  # the initial weights
    )
    if data.info.class_names != info.class_names:
        raise ValueError("the experiment's classes differ from the benchmark's data")
    return task.model


def build_peers(args, info, upsnet: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The networks of ``mask_rcnn_r50_fpn_shapes_24e.yaml`` (with UPSNet's instance parts and
    trained weights) and ``deeplabv3plus_r50_shapes_30e.yaml``, both at ``depth``."""
    from lightning_seg.cli import build_experiment

    task, _ = build_experiment(REPO / "experiments" / "mask_rcnn_r50_fpn_shapes_24e.yaml",
                               *instance_overrides(args))
    mrcnn = task.model
    state = {k: v for k, v in upsnet.state_dict().items() if not k.startswith("semantic_head.")}
    mrcnn.load_state_dict(state)
    grid = "[1,2]" if args.depth == 18 else "[1,2,4]"  # one rate per block of layer4
    task, _ = build_experiment(REPO / "experiments" / "deeplabv3plus_r50_shapes_30e.yaml",
                               f"{NET}.backbone.init_args.depth={args.depth}",
                               f"{NET}.backbone.init_args.multi_grid={grid}")
    if task.model.num_classes != info.num_classes:
        raise ValueError("the DeepLab experiment's classes differ from the benchmark's data")
    return mrcnn, task.model


@torch.no_grad()
def evaluate(model, loader, info, device) -> tuple[dict[str, float], list[PanopticCounts]]:
    """PQ / SQ / RQ on the loader's images, and each image's matching counts (to resample)."""
    model.eval()
    per_image = []
    for batch in loader:
        batch = batch.to(device)
        for pred, target in zip(model(batch), batch.panoptic):
            per_image.append(panoptic_counts(pred.to("cpu"), target.to("cpu"), info.num_classes))
    r = pq_from_counts(sum(per_image[1:], per_image[0]), info.thing_classes, info.stuff_classes)
    return {k: float(r[k]) for k in ("pq", "pq_th", "pq_st", "sq", "rq", "sq_th", "rq_th")}, per_image


def bootstrap_pq_gain(a: list[PanopticCounts], b: list[PanopticCounts], info, samples: int,
                      seed: int) -> tuple[float, float]:
    """95% interval of ``PQ(a) - PQ(b)`` over validation images resampled with replacement,
    the same images for both (a paired bootstrap): how much of a gain the choice of validation
    images alone could make. It says nothing about the spread over training seeds."""
    fields = ("iou_fixed", "tp", "fp", "fn")
    stacked = [{f: torch.stack([getattr(c, f) for c in side]) for f in fields} for side in (a, b)]
    gen = torch.Generator().manual_seed(seed)
    gains = []
    for _ in range(samples):
        idx = torch.randint(len(a), (len(a),), generator=gen)
        pq = [float(pq_from_counts(PanopticCounts(*(s[f][idx].sum(0) for f in fields)),
                                   info.thing_classes, info.stuff_classes)["pq"])
              for s in stacked]
        gains.append(pq[0] - pq[1])
    lo, hi = torch.tensor(gains, dtype=torch.float64).quantile(torch.tensor([0.025, 0.975], dtype=torch.float64))
    return float(lo), float(hi)


OUTLINE_PARTS = ("mask", "semantic", "semantic_class", "panoptic")
OUTLINE_BINS = ((0, 12), (12, 20), (20, 32), (32, None))  # sqrt(area) in pixels: 3, 5, 8 semantic strides


def part_outlines(semantic: Tensor, detections, mask_logits: Tensor, target, stuff_classes, thing_classes,
                  mask_logit_weight: float = 1.0, with_unknown: bool = True) -> list[tuple[float, dict[str, float]]]:
    """What each part of UPSNet's panoptic head draws for the things of one image.

    For every ground-truth thing (not crowd) whose class has a detection with a box IoU of at
    least 0.5 (the best such detection), the IoU with the thing's mask of the pixels inside that
    detection's box (``box_extents``, as the panoptic head) where

    * ``mask``: its pasted mask logits are above 0 (the mask the heuristic merge pastes);
    * ``semantic``: the semantic head's best thing logit is above its best stuff logit (any
      thing class: the semantic head's outline of things against stuff);
    * ``semantic_class``: the semantic arg-max is the detection's class;
    * ``panoptic``: the instance's panoptic logit ``Y + w X`` is above every stuff logit and,
      with the unknown class, above the unknown logit of this box alone (``max thing logit - Y``):
      the panoptic head's outline against stuff, other instances left out.

    Args:
        semantic: ``Tensor[K, H, W]`` semantic logits at input resolution (what the head gets).
        detections: ``InstancePredictions`` of the head (labels in dataset classes).
        mask_logits: ``Tensor[N, M, M]`` each detection's own-class mask logits.
        target: the image's ``PanopticTargets``, at the same ``(H, W)``.
        stuff_classes, thing_classes: dataset class indices.
        mask_logit_weight, with_unknown: the head's settings.

    Returns:
        one ``(sqrt(area), {part: IoU})`` per matched thing.
    """
    size = tuple(semantic.shape[-2:])
    if tuple(target.segment_map.shape) != size:
        raise ValueError(f"the target is {tuple(target.segment_map.shape)}, the logits {size}: outlines are "
                         f"compared at input resolution, so the validation images must not be resized")
    extents = box_extents(detections.boxes)
    inside = box_masks(extents, size)  # [N, H, W]
    pasted = paste_mask_logits(mask_logits.float(), extents, size)  # [N, H, W]
    stuff_max = semantic[list(stuff_classes)].amax(0)
    thing_max = semantic[list(thing_classes)].amax(0)
    arg = semantic.argmax(0)
    out = []
    for sid, label, isthing, crowd in zip(target.ids.tolist(), target.labels.tolist(),
                                          target.isthing.tolist(), target.iscrowd.tolist()):
        candidates = torch.nonzero(detections.labels == label).squeeze(1)
        if not isthing or crowd or candidates.numel() == 0:
            continue
        gt = target.segment_map == sid
        gt_box = torch.from_numpy(masks_to_boxes(gt[None].numpy()))  # [1, 4]; an empty segment: 0s, no match
        iou = box_iou(detections.boxes[candidates].float(), gt_box)[:, 0]
        if iou.max() < 0.5:
            continue
        j = int(candidates[iou.argmax()])
        y = semantic[label]
        logit = y + mask_logit_weight * pasted[j]
        panoptic = logit > stuff_max
        if with_unknown:
            panoptic &= logit > thing_max - y
        parts = {"mask": pasted[j] > 0, "semantic": thing_max > stuff_max, "semantic_class": arg == label,
                 "panoptic": panoptic}
        out.append((float(gt.sum()) ** 0.5,
                    {k: float((m & inside[j] & gt).sum() / ((m & inside[j]) | gt).sum()) for k, m in parts.items()}))
    return out


@torch.no_grad()
def outline_ious(model, loader, info, device) -> dict[str, dict[str, float]]:
    """``part_outlines`` over the loader's images: the mean IoU of each part, over all matched
    things (``"all"``) and per size (``OUTLINE_BINS``, keys ``"12-20"`` ...), and their counts."""
    head = model.panoptic_head
    recorder, seen = copy.copy(head), []
    recorder.predict = lambda *inputs: seen.append(inputs) or head.predict(*inputs)  # the head's own inference
    model.panoptic_head = recorder
    rows = []
    try:
        model.eval()
        for batch in loader:
            seen.clear()
            model(batch.to(device))
            for (semantic, detections, mask_logits, _), target in zip(seen, batch.panoptic):
                rows += part_outlines(semantic.cpu(), detections.to("cpu"), mask_logits.cpu(), target.to("cpu"),
                                      info.stuff_classes, info.thing_classes, head.mask_logit_weight,
                                      head.with_unknown)
    finally:
        model.panoptic_head = head
    out = {}
    for lo, hi in ((0, None), *OUTLINE_BINS):
        chosen = [parts for side, parts in rows if side >= lo and (hi is None or side < hi)]
        name = "all" if (lo, hi) == (0, None) else f"{lo}-{hi if hi is not None else ''}"
        out[name] = {"things": len(chosen), **{k: sum(p[k] for p in chosen) / len(chosen) if chosen else None
                                               for k in OUTLINE_PARTS}}  # None: no thing of this size
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def single_images(loader, num_images: int, device) -> list[Batch]:
    """The loader's first ``num_images`` images, each as a batch of one (the timing's input)."""
    images = []
    for batch in loader:
        for i in range(len(batch)):
            h, w = batch.image_sizes[i]
            images.append(Batch.from_images([batch.images[i, :, :h, :w]], size_divisibility=32).to(device))
        if len(images) >= num_images:
            break
    return images[:num_images]


@torch.no_grad()
def time_inference(upsnet, mrcnn, deeplab, images, info, device, repeats, default_thresh_too=True):
    """Median per-image seconds of each system on ``images`` (batches of one), interleaved (the
    order rotates per image).

    ``mrcnn`` runs with its box head's score threshold set to the panoptic threshold (0.6: the
    detections a merge would use) and, with ``default_thresh_too``, again with its own default
    (0.05, for COCO AP).
    """
    for m in (upsnet, mrcnn, deeplab):
        m.eval()
    head = upsnet.panoptic_head
    merge = HeuristicPanopticMerge(info.thing_classes, info.stuff_classes, score_thresh=head.score_thresh,
                                   overlap_thresh=head.mask_overlap_thresh,
                                   stuff_area_limit=head.stuff_area_limit)
    things = torch.tensor(info.thing_classes, device=device)
    default_thresh = mrcnn.box_head.score_thresh
    panoptic_thresh = head.score_thresh
    outputs: dict[str, object] = {}

    def run_mrcnn(batch, thresh):
        mrcnn.box_head.score_thresh = thresh
        outputs["mrcnn"] = mrcnn(batch)

    def run_merge():
        sem = outputs["deeplab"].original(0)
        inst = outputs["mrcnn"][0]
        merge.predict(sem, replace(inst, labels=things[inst.labels]))

    systems = {
        "upsnet": upsnet,
        "mrcnn_default": lambda b: run_mrcnn(b, default_thresh),
        "deeplab": lambda b: outputs.__setitem__("deeplab", deeplab(b)),
        "mrcnn": lambda b: run_mrcnn(b, panoptic_thresh),  # last: the merge uses its output
    }
    if not default_thresh_too:
        del systems["mrcnn_default"]
    for system in systems.values():  # warm-up
        system(images[0])
    times: dict[str, list[float]] = {name: [] for name in [*systems, "merge"]}
    detections = []
    names = [name for name in systems if name != "mrcnn"]
    for r in range(repeats):
        for j, batch in enumerate(images):
            k = (r + j) % len(names)
            for name in [*names[k:], *names[:k], "mrcnn"]:
                _sync(device)
                t0 = time.perf_counter()
                systems[name](batch)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
            detections.append(len(outputs["mrcnn"][0]))
            _sync(device)
            t0 = time.perf_counter()
            run_merge()
            _sync(device)
            times["merge"].append(time.perf_counter() - t0)
    mrcnn.box_head.score_thresh = default_thresh
    out = {k: statistics.median(v) for k, v in times.items()}
    out["detections"] = statistics.mean(detections)
    return out


@torch.no_grad()
def paper_setting_times(args, device) -> dict[int, dict[str, float]]:
    """The cost comparison in the paper's setting, for each count in ``--paper-detections``: the
    COCO experiments' R50-FPN networks at the paper's widths (``upsnet_r50_fpn_coco_1x.yaml``,
    ``mask_rcnn_r50_fpn_coco_1x.yaml`` with UPSNet's weights for its parts, and a DeepLab v3+ R50
    over COCO panoptic's 133 classes), random weights, on one ``--timing-size`` image.

    Both instance sides make exactly ``n`` detections (score thresholds 0), and every one of
    UPSNet's reaches its panoptic logits (``mask_overlap_thresh`` 1: none removed as covered),
    the most work its head can have for ``n`` instances."""
    from lightning_seg.cli import build_experiment
    from lightning_seg.models.detectors.deeplab import deeplabv3plus_resnet50

    no_weights = f"{NET}.backbone.init_args.weights=null"
    task, data = build_experiment(REPO / "experiments" / "upsnet_r50_fpn_coco_1x.yaml",
                                  "--seed_everything=0", no_weights)
    upsnet, info = task.model.to(device), data.info
    task, _ = build_experiment(REPO / "experiments" / "mask_rcnn_r50_fpn_coco_1x.yaml", no_weights)
    mrcnn = task.model
    mrcnn.load_state_dict({k: v for k, v in upsnet.state_dict().items() if not k.startswith("semantic_head.")})
    deeplab = deeplabv3plus_resnet50(info.num_classes).to(device)
    head = upsnet.panoptic_head
    head.score_thresh = mrcnn.box_head.score_thresh = 0.0
    head.mask_overlap_thresh = 1.0
    fused = []
    hook = upsnet.mask_head.register_forward_hook(lambda m, inputs, out: fused.append(sum(map(len, inputs[1]))))
    h, w = args.timing_size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    images = [Batch.from_images([image], size_divisibility=32).to(device)]
    results = {}
    for n in args.paper_detections:
        head.detections_per_img = mrcnn.box_head.detections_per_img = n
        fused.clear()
        t = time_inference(upsnet, mrcnn.to(device), deeplab, images, info, device, args.timing_repeats,
                           default_thresh_too=False)
        if set(fused) != {n} or t["detections"] != n:
            raise RuntimeError(f"expected {n} detections on both sides, got UPSNet {sorted(set(fused))}, "
                               f"Mask R-CNN {t['detections']}")
        results[n] = t
        two = t["mrcnn"] + t["deeplab"]
        print(f"paper setting (R50-FPN, {h} x {w}, {n} detections): UPSNet {1000 * t['upsnet']:.0f} ms; "
              f"Mask R-CNN {1000 * t['mrcnn']:.0f} + DeepLab v3+ {1000 * t['deeplab']:.0f} = "
              f"{1000 * two:.0f} ms (+ merge {1000 * t['merge']:.0f} ms); ratio {t['upsnet'] / two:.3f}",
              flush=True)
    hook.remove()
    return results


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's options (their defaults are also experiments/upsnet_r18_fpn_shapes_cpu.yaml)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50, 101))
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--num-val", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--max-objects", type=int, default=6,
                        help="most shapes per image (the world's default 6); with --load, scores a "
                             "trained network on a more crowded world")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps from lr / 10")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--stuff-area-limit", type=int, default=64,
                        help="stuff regions below this (pixels) become void: COCO's 4096 scaled "
                             "to the 128x160 images")
    parser.add_argument("--score-thresh", type=float, default=0.6,
                        help="lowest detection score pasted by both heads (official 0.6); with --load, "
                             "re-scores a saved network at another threshold")
    parser.add_argument("--anchor-sizes", type=float, nargs=5, default=[16, 32, 64, 128, 256])
    parser.add_argument("--rpn-pre-train", type=int, default=1000)
    parser.add_argument("--rpn-post-train", type=int, default=500)
    parser.add_argument("--rpn-pre-test", type=int, default=500)
    parser.add_argument("--rpn-post-test", type=int, default=300)
    parser.add_argument("--box-rois", type=int, default=256, help="sampled RoIs per image")
    parser.add_argument("--timing-images", type=int, default=16)
    parser.add_argument("--structural-depth", type=int, default=50, choices=(0, 18, 34, 50, 101),
                        help="also time the three networks untrained at this depth (0: no)")
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--paper-detections", type=int, nargs="*", default=[10, 100],
                        help="detection counts of the paper-setting timing (none: skip it)")
    parser.add_argument("--timing-size", type=int, nargs=2, default=(800, 1216),
                        help="image of the paper-setting timing (COCO: shorter side 800)")
    parser.add_argument("--fusion-ablation", action="store_true",
                        help="also re-score the trained network with the panoptic head changed at test: "
                             "without the unknown channel, and with the mask logits weighted 2")
    parser.add_argument("--outline", action="store_true",
                        help="also measure what each part of the panoptic head draws for the matched things "
                             "(IoU of the mask logits, the semantic head and their sum; by thing size)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="resamples of the validation images for the gain's 95%% interval")
    parser.add_argument("--save", type=Path, default=None,
                        help="write the trained network's state dict here (to re-score it with --load)")
    parser.add_argument("--set", action="append", default=[], metavar="PART.init_args.KEY=VALUE",
                        dest="net_set", type=upsnet_change,
                        help="change UPSNet's own heads as the experiment YAML would (repeatable; "
                             "PART is semantic_head or panoptic_head), e.g. the official Cityscapes "
                             "semantic head: --set semantic_head.init_args.num_layers=2 --set "
                             "semantic_head.init_args.loss_weight=1.0; with --load, the values the "
                             "network was trained with")
    parser.add_argument("--load", type=Path, default=None,
                        help="skip training: score and time the network saved by --save, or the "
                             "network of an `lseg fit` checkpoint of upsnet_r18_fpn_shapes_cpu.yaml "
                             "(its data seed is 0: score it with --seed 0)")
    return parser


def lightning_checkpoint_as_saved(saved: dict) -> dict:
    """A Lightning checkpoint (``lseg fit``'s ``*.ckpt``) in the ``--save`` format: the
    network's weights (the task's ``model.`` entries, the network ``unwrap_network`` returns),
    its steps and its finished epochs; any other dict unchanged.

    Raises:
        ValueError: a Lightning checkpoint without network weights.
    """
    if not {"state_dict", "global_step", "epoch"} <= saved.keys():
        return saved
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"a Lightning checkpoint without network weights (no '{prefix}*' entry among "
                         f"{len(saved['state_dict'])}: {sorted(saved['state_dict'])[:3]})")
    return {"state_dict": weights, "steps": saved["global_step"], "epochs": saved["epoch"] + 1}


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    for name in ("bootstrap", "num_train", "num_val", "batch_size", "timing_images", "timing_repeats",
                 "max_objects"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if any(n < 1 for n in args.paper_detections) or min(args.timing_size) < 32:
        parser.error(f"--paper-detections must be at least 1 and --timing-size at least 32 px, got "
                     f"{args.paper_detections} and {args.timing_size}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dm = SyntheticShapesDataModule(
        task="panoptic", num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        max_objects=args.max_objects,
        height=args.height, width=args.width, batch_size=args.batch_size, num_workers=0,
        persistent_workers=False, pin_memory=False,
        train_transform=TrainTransform(size=(args.height, args.width), scale_range=(0.75, 1.25),
                                       hflip_prob=0.5, seed=args.seed),
    )
    dm.prepare_data()
    dm.setup("fit")
    info = dm.info

    # the timings that need no training come first, so that a run cut short still prints them
    paper = paper_setting_times(args, device) if args.paper_detections else {}
    structural = None
    if args.structural_depth:
        # the same three networks at another depth, untrained (random init, the same for all):
        # none has a detection above 0.6, so this times the structure alone
        other = argparse.Namespace(**{**vars(args), "depth": args.structural_depth})
        upsnet_d = build_upsnet(other, info).to(device)
        mrcnn_d, deeplab_d = build_peers(other, info, upsnet_d)
        structural = time_inference(upsnet_d, mrcnn_d.to(device), deeplab_d.to(device),
                                    single_images(dm.val_dataloader(), args.timing_images, device),
                                    info, device, args.timing_repeats)
        del upsnet_d, mrcnn_d, deeplab_d
        two_d = structural["mrcnn"] + structural["deeplab"]
        print(f"untrained, depth {args.structural_depth}: UPSNet {1000 * structural['upsnet']:.1f} ms; "
              f"Mask R-CNN {1000 * structural['mrcnn']:.1f} + DeepLab v3+ "
              f"{1000 * structural['deeplab']:.1f} = {1000 * two_d:.1f} ms", flush=True)

    model = build_upsnet(args, info).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = WarmupMultiStepLR(opt, [int(args.steps * 0.75)], warmup_iters=min(args.warmup, args.steps),
                              warmup_factor=0.1)
    torch.manual_seed(args.seed)  # the loader's shuffle order, the kept instances
    step, epoch, t_start, history, skipped = 0, 0, time.perf_counter(), [], 0
    if args.load is not None:
        from lightning_seg.models.weights import load_checkpoint_file

        saved = load_checkpoint_file(args.load, "--load")  # names the file when missing / unreadable
        try:
            saved = lightning_checkpoint_as_saved(saved)
        except ValueError as exc:
            raise SystemExit(f"--load {args.load}: {exc}") from exc
        if not {"state_dict", "steps", "epochs"} <= saved.keys():
            raise SystemExit(f"--load {args.load}: neither a file written by --save nor a Lightning "
                             f"checkpoint (keys {sorted(saved)[:5]})")
        try:
            model.load_state_dict(saved["state_dict"])
        except RuntimeError as exc:  # another experiment's network, or other --depth / widths
            raise SystemExit(f"--load {args.load}: its weights do not fit the benchmark's network "
                             f"(--depth {args.depth} and the width flags must be those it was trained "
                             f"with, and --set the heads' structure it was trained with, such as "
                             f"semantic_head.init_args.num_layers; an lseg fit checkpoint must be of "
                             f"experiments/upsnet_r18_fpn_shapes_cpu.yaml): {str(exc)[:400]}") from exc
        step = args.steps = saved["steps"]
        epoch = saved["epochs"]
        print(f"loaded {args.load} (trained {step} steps, {epoch} epochs); training skipped")
    while step < args.steps:
        for batch in dm.train_dataloader():
            if step >= args.steps:
                break
            model.train()
            losses = model(batch.to(device))
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                nn.utils.clip_grad_norm_(params, CLIP_NORM)
                opt.step()
            else:
                skipped += 1
            sched.step()
            history.append({k: float(v.detach()) for k, v in losses.items()})
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                recent = history[-args.log_every:]
                terms = {k: sum(h[k] for h in recent) / len(recent) for k in recent[-1]}
                print(f"step {step}/{args.steps} epoch {epoch} "
                      + " ".join(f"{k[5:]} {v:.3f}" for k, v in terms.items())
                      + f" elapsed {time.perf_counter() - t_start:.0f}s", flush=True)
        epoch += 1
    train_s = time.perf_counter() - t_start
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "steps": step, "epochs": epoch}, args.save)
        print(f"saved the trained network to {args.save}")

    t_eval = time.perf_counter()
    pq_upsnet, counts_upsnet = evaluate(model, dm.val_dataloader(), info, device)
    upsnet_head = model.panoptic_head
    model.panoptic_head = HeuristicPanopticMerge(info.thing_classes, info.stuff_classes,
                                                 score_thresh=args.score_thresh,
                                                 stuff_area_limit=args.stuff_area_limit)
    pq_heuristic, counts_heuristic = evaluate(model, dm.val_dataloader(), info, device)
    model.panoptic_head = upsnet_head
    gain_ci = bootstrap_pq_gain(counts_upsnet, counts_heuristic, info, args.bootstrap, args.seed)
    ablation = {}
    if args.fusion_ablation:
        # the trained network re-scored with its panoptic head changed at test only (the head
        # has no parameters, so a changed copy is the same head otherwise)
        for name, change in (("no_unknown_at_test", {"box_keep_fraction": 1.0}),
                             ("mask_logit_weight_2", {"mask_logit_weight": 2.0})):
            model.panoptic_head = copy.copy(upsnet_head)
            vars(model.panoptic_head).update(change)
            r, counts = evaluate(model, dm.val_dataloader(), info, device)
            lo, hi = bootstrap_pq_gain(counts, counts_heuristic, info, args.bootstrap, args.seed)
            ablation[name] = {**r, "pq_gain_vs_heuristic": r["pq"] - pq_heuristic["pq"],
                              "pq_gain_ci95_images": [lo, hi]}
        model.panoptic_head = upsnet_head
    outline = outline_ious(model, dm.val_dataloader(), info, device) if args.outline else {}
    eval_s = time.perf_counter() - t_eval

    mrcnn, deeplab = build_peers(args, info, model)
    mrcnn.to(device)
    deeplab.to(device)
    t = time_inference(model, mrcnn, deeplab, single_images(dm.val_dataloader(), args.timing_images, device),
                       info, device, args.timing_repeats)
    two = t["mrcnn"] + t["deeplab"]

    columns = ("pq", "pq_th", "pq_st", "sq", "rq", "sq_th", "rq_th")
    print(f"{'':26}" + "".join(f"{k.upper().replace('_TH', '_th').replace('_ST', '_st'):>8}" for k in columns))
    rows = {"UPSNet head": pq_upsnet, "heuristic merge": pq_heuristic,
            **{f"UPSNet, {name}": r for name, r in ablation.items()}}
    for name, r in rows.items():
        print(f"{name:26}" + "".join(f"{100 * r[k]:8.2f}" for k in columns))
    print(f"inference per image: UPSNet {1000 * t['upsnet']:.1f} ms; Mask R-CNN "
          f"{1000 * t['mrcnn']:.1f} (score >= {args.score_thresh}; {t['detections']:.1f} detections) + DeepLab v3+ "
          f"{1000 * t['deeplab']:.1f} = {1000 * two:.1f} ms (+ merge {1000 * t['merge']:.1f} ms); "
          f"Mask R-CNN at its default score 0.05: {1000 * t['mrcnn_default']:.1f} ms")
    gain = pq_upsnet["pq"] - pq_heuristic["pq"]
    print(f"pq_gain_vs_heuristic {100 * gain:+.2f} PQ; 95% interval over the {args.num_val} validation "
          f"images (paired bootstrap, one trained network): {100 * gain_ci[0]:+.2f} .. {100 * gain_ci[1]:+.2f}")
    for name, r in ablation.items():
        lo, hi = r["pq_gain_ci95_images"]
        print(f"  {name}: {100 * r['pq_gain_vs_heuristic']:+.2f} PQ ({100 * lo:+.2f} .. {100 * hi:+.2f})")
    if outline:
        print(f"outline IoU of the matched things inside their detection's box, by sqrt(area) in px:\n"
              f"{'':10}{'things':>8}" + "".join(f"{k:>16}" for k in OUTLINE_PARTS))
        for name, r in outline.items():
            print(f"{name:10}{r['things']:8d}" + "".join(f"{r[k]:16.3f}" if r[k] is not None else f"{'-':>16}"
                                                          for k in OUTLINE_PARTS))
    ratio = t["upsnet"] / two
    print(f"depth {args.depth}, {args.steps} steps x batch {args.batch_size} ({epoch} epochs of "
          f"{args.num_train} images), train {train_s:.0f}s, eval {eval_s:.0f}s, skipped {skipped}; "
          f"goals: pq_gain_vs_heuristic > 0 {'MET' if gain > 0 else 'NOT MET'}, "
          f"time_ratio_vs_two_models < 1 {'MET' if ratio < 1 else 'NOT MET'}")
    print(json.dumps({
        "pq_gain_vs_heuristic": round(gain, 4),
        "pq_gain_ci95_images": [round(gain_ci[0], 4), round(gain_ci[1], 4)],
        "time_ratio_vs_two_models": round(ratio, 4),
        "time_ratio_vs_two_models_merged": round(t["upsnet"] / (two + t["merge"]), 4),
        "time_ratio_vs_two_models_default_thresh": round(
            t["upsnet"] / (t["mrcnn_default"] + t["deeplab"]), 4),
        f"time_ratio_vs_two_models_untrained_r{args.structural_depth}": None if structural is None
        else round(structural["upsnet"] / (structural["mrcnn"] + structural["deeplab"]), 4),
        "time_ratio_vs_two_models_paper_setting": {
            str(n): round(t_n["upsnet"] / (t_n["mrcnn"] + t_n["deeplab"]), 4) for n, t_n in paper.items()},
        "ms_paper_setting": {str(n): {k: round(1000 * t_n[k], 1) for k in ("upsnet", "mrcnn", "deeplab", "merge")}
                             for n, t_n in paper.items()},
        "pq_upsnet": round(pq_upsnet["pq"], 4),
        "pq_th_upsnet": round(pq_upsnet["pq_th"], 4),
        "pq_st_upsnet": round(pq_upsnet["pq_st"], 4),
        "sq_th_upsnet": round(pq_upsnet["sq_th"], 4),
        "pq_heuristic": round(pq_heuristic["pq"], 4),
        "pq_th_heuristic": round(pq_heuristic["pq_th"], 4),
        "pq_st_heuristic": round(pq_heuristic["pq_st"], 4),
        "sq_th_heuristic": round(pq_heuristic["sq_th"], 4),
        "fusion_ablation": {name: {k: [round(x, 4) for x in v] if isinstance(v, list) else round(v, 4)
                                   for k, v in r.items()} for name, r in ablation.items()},
        "outline_iou": {name: {k: v if k == "things" or v is None else round(v, 4) for k, v in r.items()}
                        for name, r in outline.items()},
        "ms_upsnet": round(1000 * t["upsnet"], 2),
        "ms_maskrcnn": round(1000 * t["mrcnn"], 2),
        "ms_maskrcnn_default_thresh": round(1000 * t["mrcnn_default"], 2),
        "maskrcnn_detections": round(t["detections"], 2),
        "ms_deeplabv3plus": round(1000 * t["deeplab"], 2),
        "ms_merge": round(1000 * t["merge"], 2),
        "score_thresh": args.score_thresh,
        "net_set": args.net_set,
        "loaded_from": None if args.load is None else str(args.load),  # then train_s is not a training time
        "steps": args.steps,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "max_objects": args.max_objects,
        "num_val": args.num_val,
        "skipped_steps": skipped,
        "train_s": round(train_s, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
    }))


if __name__ == "__main__":
    main()
