"""YOLACT against Mask R-CNN, both from this framework: inference speed, Fast NMS, learning.

Three parts (``--parts``, all by default):

``speed``
    Inference time per image of YOLACT-R50-FPN at 550 x 550 and Mask R-CNN R50-FPN at short
    side 800 (longer side at most 1333), their papers' standard inputs, on the same images (the
    6 real COCO images of ``--coco-mini`` when present, else random images of the same sizes),
    one image per call, in one run, interleaved so that machine load hits both alike; each
    produces exactly 100 detections of the 80 COCO classes (score thresholds at 0: the weights
    are random, and the work after the backbone depends on the number of detections). Peak
    memory: CUDA ``max_memory_allocated``, on a CPU the growth of the process's peak resident
    memory over the run of each model, measured in a fresh process per model. Key ``speedup``:
    Mask R-CNN time / YOLACT time (paper: 3.9x on a GPU, Table 4 / Fig. 1). ``--precisions``
    also times YOLACT under ``torch.autocast`` in fp16 / bf16: keys ``yolact_r50_550_fps_<p>``
    (paper: 33.5 fps for YOLACT-550 R101 and 42.5 for R50 on a Titan Xp).
``nms``
    Fast NMS (``lightning_seg.ops.fast_nms``) against ``torchvision.ops.batched_nms`` on YOLACT's
    real candidate sets: per image, the anchors whose best class score exceeds 0.05 and per
    class their 200 best (what YOLACT's detection step feeds to NMS), flattened to (boxes,
    scores, labels); from the YOLACT trained in ``learn`` when that part runs, and always from an
    untrained COCO YOLACT at threshold 0 (80 x 200 candidates, the largest set the architecture
    makes). Key ``fast_nms_speedup``: median batched_nms time / median fast_nms time.
``learn``
    Both models trained from scratch on the synthetic shapes world for the same budget each
    (``--budget-minutes`` of CPU time of this process, so that other jobs on a shared machine
    do not shorten one model's training; wall time on CUDA), built from their CPU-budget twin
    experiments: ``experiments/yolact_r18_shapes_cpu.yaml`` and
    ``experiments/mask_rcnn_r18_fpn_shapes_cpu.yaml`` (ResNet-18 from scratch, widths 128,
    128 x 160 images, batch 4, each with its experiment's optimizer and schedule; R50 from
    scratch learns next to nothing in a CPU budget). Then mask AP on the validation images;
    YOLACT is evaluated with Fast NMS and with standard NMS (key ``fast_minus_standard_mask_ap``;
    paper: about -0.1 AP on COCO), and pictures of its failure modes are written.

Usage::

    python benchmarks/yolact_vs_maskrcnn.py                          # everything (about 2 x 10 CPU min of training)
    python benchmarks/yolact_vs_maskrcnn.py --parts speed,nms --repeats 3
    python benchmarks/yolact_vs_maskrcnn.py --parts speed,nms --precisions fp32,fp16,bf16   # on a GPU
    python benchmarks/yolact_vs_maskrcnn.py --parts learn --budget-minutes 0.2 --num-val 4   # smoke test

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- speed
def speed_images(coco_mini: Path | None, n: int = 6) -> list[torch.Tensor]:
    """``Tensor[3, H, W]`` float images: the coco_mini images, else random ones of COCO sizes."""
    if coco_mini is not None and (coco_mini / "images").is_dir():
        from PIL import Image

        files = sorted((coco_mini / "images").glob("*.jpg"))[:n]
        import numpy as np

        return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
                for f in files]
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 480, 640, generator=g) for _ in range(n)]


def build(name: str):
    """The two networks with 80 classes and thresholds that give exactly 100 detections."""
    if name == "yolact":
        from lightning_seg.models.detectors.yolact import yolact_r50

        return yolact_r50(80, conf_thresh=0.0)
    from lightning_seg.models.detectors.mask_rcnn import mask_rcnn_r50_fpn

    model = mask_rcnn_r50_fpn(80)
    model.box_head.score_thresh = 0.0
    return model


def prepare(name: str, image: torch.Tensor):
    """The batch each model sees: YOLACT squashed to 550 x 550, Mask R-CNN at short side 800
    (longer side at most 1333), both mapped back to the image's own size."""
    from lightning_seg.structures import Batch

    h, w = image.shape[-2:]
    if name == "yolact":
        size = (550, 550)
    else:
        s = min(800 / min(h, w), 1333 / max(h, w))
        size = (round(h * s), round(w * s))
    x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return Batch.from_images(x, orig_sizes=[(h, w)], size_divisibility=32 if name != "yolact" else 1)


#: --precisions: the autocast dtype of each (fp32: no autocast)
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def time_model(name: str, images, repeats: int, device: torch.device, precision: str = "fp32") -> dict:
    """Median seconds per image and peak memory of one model (run in its own process on a CPU),
    under ``torch.autocast`` in ``precision`` (fp16 / bf16) or in float32."""
    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build(name).eval().to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = [prepare(name, im).to(device) for im in images]
    times, dets = [], []
    dtype = PRECISIONS[precision]
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(batches[0])  # warm-up
        for _ in range(repeats):
            for b in batches:
                _sync(device)
                t = time.perf_counter()
                out = model(b)
                _sync(device)
                times.append(time.perf_counter() - t)
                dets.append(len(out[0]))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024  # kB -> MiB
    return {"seconds": statistics.median(times), "detections": statistics.median(dets), "peak_mib": peak}


def run_speed(args, device: torch.device) -> dict:
    images = speed_images(args.coco_mini)
    result = {}
    runs = [("yolact", "fp32"), ("maskrcnn", "fp32")]
    runs += [("yolact", p) for p in args.precisions if p != "fp32"]
    for name, precision in runs:
        if device.type == "cuda":
            result[name, precision] = time_model(name, images, args.repeats, device, precision)
            continue
        cmd = [sys.executable, __file__, "--_time-one", name, "--repeats", str(args.repeats),
               "--precisions", precision]
        if args.coco_mini:
            cmd += ["--coco-mini", str(args.coco_mini)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
        result[name, precision] = json.loads(out.stdout.strip().splitlines()[-1])
    fps = {f"yolact_r50_550_fps_{p}": round(1 / result["yolact", p]["seconds"], 2)
           for name, p in runs if name == "yolact"}
    result = {name: result[name, "fp32"] for name in ("yolact", "maskrcnn")}
    return {
        **fps,
        "yolact_r50_550_s": round(result["yolact"]["seconds"], 4),
        "maskrcnn_r50_800_s": round(result["maskrcnn"]["seconds"], 4),
        "speedup": round(result["maskrcnn"]["seconds"] / result["yolact"]["seconds"], 3),
        "detections": [result["yolact"]["detections"], result["maskrcnn"]["detections"]],
        "yolact_peak_mib": round(result["yolact"]["peak_mib"], 1),
        "maskrcnn_peak_mib": round(result["maskrcnn"]["peak_mib"], 1),
        "images": len(images),
    }


# ---------------------------------------------------------------------- Fast NMS
def candidate_sets(model, batches, conf_thresh: float, top_k: int = 200) -> list[tuple]:
    """YOLACT's NMS inputs per image: (boxes, scores, labels) of the per-class top-k candidates."""
    sets = []
    with torch.no_grad():
        for b in batches:
            sizes = [(int(h), int(w)) for h, w in b.image_sizes]
            features, _, input_size = model.features(b.images, sizes)
            boxes, probs = model.head.decode(model.head(features, input_size))
            scores = probs[0, :, 1:]  # [N, K]
            cand = scores.amax(1) > conf_thresh
            boxes, scores = boxes[0][cand], scores[cand].T  # [n, 4], [K, n]
            k = min(top_k, scores.shape[1])
            top, idx = scores.topk(k, dim=1)  # [K, k]
            labels = torch.arange(scores.shape[0], device=scores.device)[:, None].expand(-1, k)
            sets.append((boxes[idx.reshape(-1)], top.reshape(-1), labels.reshape(-1)))
    return sets


def time_nms(sets, repeats: int) -> dict:
    from torchvision.ops import batched_nms

    from lightning_seg.ops import fast_nms

    fast, std, kept_fast, kept_std = [], [], [], []
    for boxes, scores, labels in sets:
        device = boxes.device
        fast_nms(boxes, scores, labels, 0.5, top_k=200)  # warm-up (CUDA kernels, caches)
        batched_nms(boxes, scores, labels, 0.5)
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            a = fast_nms(boxes, scores, labels, 0.5, top_k=200)
            _sync(device)
            fast.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = batched_nms(boxes, scores, labels, 0.5)
            _sync(device)
            std.append(time.perf_counter() - t)
        kept_fast.append(len(a))
        kept_std.append(len(b))
    return {
        "candidates": statistics.median(len(s[1]) for s in sets),
        "fast_ms": round(1000 * statistics.median(fast), 3),
        "batched_ms": round(1000 * statistics.median(std), 3),
        "fast_nms_speedup": round(statistics.median(std) / statistics.median(fast), 3),
        "kept_fast": statistics.median(kept_fast),
        "kept_batched": statistics.median(kept_std),
    }


def run_nms_untrained(args, device: torch.device) -> dict:
    from lightning_seg.models.detectors.yolact import yolact_r50

    torch.manual_seed(0)
    model = yolact_r50(80).eval().to(device)
    batches = [prepare("yolact", im).to(device) for im in speed_images(args.coco_mini, n=3)]
    return time_nms(candidate_sets(model, batches, conf_thresh=0.0), args.repeats)


# ---------------------------------------------------------------------- learning
LEARN_EXPERIMENTS = {"yolact": "yolact_r18_shapes_cpu.yaml", "maskrcnn": "mask_rcnn_r18_fpn_shapes_cpu.yaml"}


def _clock(device: torch.device) -> float:
    """CPU time of this process on a CPU (other jobs on a shared machine do not eat the budget),
    wall time on CUDA."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def train_for(task, loader, budget_s: float, device: torch.device) -> dict:
    """Train ``task.model`` with its experiment's optimizer and per-step schedule until the
    budget is spent (CPU seconds on a CPU, wall seconds on CUDA); steps done and the last loss.
    Gradients are clipped at norm 10, as both experiments' ``trainer.gradient_clip_val``."""
    conf = task.configure_optimizers()
    opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(conf, dict) else (conf, None)
    model = task.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    start, steps, skipped, total = _clock(device), 0, 0, torch.tensor(float("nan"))
    while _clock(device) - start < budget_s:
        for batch in loader:
            losses = model(batch.to(device))
            total = sum(losses.values())
            opt.zero_grad()
            if torch.isfinite(total):
                total.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
            else:
                skipped += 1
            if sched is not None:
                sched.step()
            steps += 1
            if _clock(device) - start >= budget_s:
                break
    return {"steps": steps, "skipped": skipped, "last_loss": round(float(total.detach()), 4)}


def mask_ap(model, loader) -> dict:
    from lightning_seg.metrics.coco import COCOEvaluator
    from lightning_seg.tasks.instance import rescale_targets

    metric = COCOEvaluator(iou_types=("segm",))
    model.eval()
    with torch.no_grad():
        for batch in loader:
            preds = model(batch)
            targets = [rescale_targets(t, m.orig_size) for t, m in zip(batch.instances, batch.meta)]
            metric.update(preds, targets, [m.image_id for m in batch.meta])
    result = metric.compute()
    return {"AP": round(float(result["segm/AP"]), 4), "AP50": round(float(result["segm/AP50"]), 4)}


def save_failure_pictures(model, loader, folder: Path) -> list[str]:
    """PNG pictures of YOLACT's failure modes (``failure_mode_pictures``) on the first validation
    batch: mask leakage with an enlarged box, and the most crowded image."""
    from PIL import Image

    from lightning_seg.callbacks.prototypes import failure_mode_pictures
    from lightning_seg.visualize import to_numpy

    folder.mkdir(parents=True, exist_ok=True)
    batch = next(iter(loader))
    names = ["circle", "triangle", "square", "star"]
    written = []
    for name, picture in failure_mode_pictures(model.eval(), batch, class_names=names).items():
        path = folder / f"yolact_{name}.png"
        Image.fromarray(to_numpy(picture)).save(path)
        written.append(str(path))
    return written


def run_learn(args, device: torch.device) -> tuple[dict, object, list]:
    from lightning_seg.cli import build_experiment

    budget = args.budget_minutes * 60
    result, built = {"budget_minutes": args.budget_minutes, "experiments": LEARN_EXPERIMENTS}, {}
    for name, experiment in LEARN_EXPERIMENTS.items():
        task, dm = build_experiment(REPO / "experiments" / experiment, "--seed_everything=0",
                                    f"--data.init_args.num_val={args.num_val}")
        dm.setup("fit")
        torch.manual_seed(0)  # the same shuffle order for both
        trained = train_for(task, dm.train_dataloader(), budget, device)
        val = [b.to(device) for b in dm.val_dataloader()]
        result[name] = {**trained, "mask": mask_ap(task.model, val)}
        built[name] = (task.model, val)
    yolact, val = built["yolact"]
    yolact.nms = "standard"
    result["yolact"]["mask_standard_nms"] = mask_ap(yolact, val)
    yolact.nms = "fast"
    result["fast_minus_standard_mask_ap"] = round(
        result["yolact"]["mask"]["AP"] - result["yolact"]["mask_standard_nms"]["AP"], 4)
    result["pictures"] = save_failure_pictures(yolact, val, Path(args.pictures))
    return result, yolact, val[:8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="speed,nms,learn")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images")
    parser.add_argument("--coco-mini", type=Path,
                        default=Path(os.environ.get("LSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
                        / "instance" / "coco_mini")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="training budget of each model: CPU minutes of this process on a CPU, "
                             "wall minutes on CUDA")
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--precisions", default="fp32",
                        help="speed part: YOLACT also timed under autocast in these, e.g. fp32,fp16,bf16 "
                             "(the paper's fps are GPU figures; a CPU runs them too, more slowly)")
    parser.add_argument("--pictures", default="outputs/yolact_failure_modes",
                        help="folder for the failure-mode pictures of the trained YOLACT")
    parser.add_argument("--_time-one", dest="time_one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.budget_minutes <= 0 or args.num_val < 1 or args.repeats < 1:
        parser.error("--budget-minutes must be > 0, --num-val and --repeats >= 1")
    args.precisions = args.precisions.split(",")
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"--precisions: unknown {unknown}; choose from {sorted(PRECISIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.coco_mini is not None and not args.coco_mini.is_dir():
        args.coco_mini = None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.time_one:
        print(json.dumps(time_model(args.time_one, speed_images(args.coco_mini), args.repeats, device,
                                    args.precisions[0])))
        return
    parts = set(args.parts.split(","))
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
              "torch": torch.__version__}
    if "speed" in parts:
        result.update(run_speed(args, device))
    trained = None
    if "learn" in parts:
        result["learn"], trained, val_batches = run_learn(args, device)
    if "nms" in parts:
        result["nms_untrained_coco"] = run_nms_untrained(args, device)
        if trained is not None:
            trained.eval()
            result["nms_trained_synthetic"] = time_nms(candidate_sets(trained, val_batches, 0.05), args.repeats)
        headline = result.get("nms_trained_synthetic") or result["nms_untrained_coco"]
        result["fast_nms_speedup"] = headline["fast_nms_speedup"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
