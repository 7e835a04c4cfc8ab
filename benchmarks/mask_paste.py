"""Speed of Mask R-CNN mask pasting: the per-box path against the chunked grid_sample path.

``paste_masks_in_image(..., impl="per_box")`` is the previous implementation's algorithm (one
``F.interpolate`` per mask, torchvision's arithmetic); ``impl="chunked"`` samples chunks of
masks with one ``F.grid_sample`` each. torchvision's ``paste_masks_in_image`` (one mask at a
time, the same arithmetic) runs beside them as the peer. Each case pastes ``N`` random 28 x 28
masks into an ``H x W`` image; box centres are uniform in the image and box sides log-uniform
between 8 px and half the image's shorter side (so some boxes stick out of the image). The
implementations are interleaved, their order rotating each repeat, and medians are reported,
at each intra-op thread count; a call shorter than ``--min-sample-s`` is repeated within each
sample (the mean of those calls is one sample). ``alloc_ms`` is the cost of the zeroed
``[N, H, W]`` float32 canvas alone, which every implementation pays.

Usage::

    python benchmarks/mask_paste.py --repeats 11 --threads 1 2

The last line printed is one JSON object; ``ratio_old_new`` = per_box / chunked (> 1: the
chunked path is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.models.detection import roi_heads as tv_roi_heads

from lightning_seg.models.postprocess.masks import paste_masks_in_image

CASES = [(100, 800, 1333), (20, 480, 640)]  # (N, H, W)
MASK_SIZE = 28


def make_inputs(
    n: int, h: int, w: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Tensor[n, 1, 28, 28]`` probabilities and ``Tensor[n, 4]`` x1y1x2y2 boxes."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, 1, MASK_SIZE, MASK_SIZE, generator=g)
    centers = torch.rand(n, 2, generator=g) * torch.tensor([w, h])  # [n, 2]
    lo, hi = math.log(8.0), math.log(0.5 * min(h, w))
    sides = torch.exp(lo + (hi - lo) * torch.rand(n, 2, generator=g))  # [n, 2]
    boxes = torch.cat([centers - sides / 2, centers + sides / 2], dim=1)  # [n, 4]
    return masks.to(device), boxes.to(device)


def timed(fn: Callable[[], torch.Tensor], device: torch.device, calls: int = 1) -> float:
    """Mean seconds of ``calls`` back-to-back calls (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls


def run_case(
    n: int, h: int, w: int, repeats: int, device: torch.device, min_sample_s: float
) -> dict[str, float | int]:
    masks, boxes = make_inputs(n, h, w, seed=n + h + w, device=device)
    impls: dict[str, Callable[[], torch.Tensor]] = {
        "per_box": lambda: paste_masks_in_image(masks, boxes, (h, w), impl="per_box"),
        "chunked": lambda: paste_masks_in_image(masks, boxes, (h, w), impl="chunked"),
        "torchvision": lambda: tv_roi_heads.paste_masks_in_image(masks, boxes, (h, w), 1),
        "alloc": lambda: torch.zeros(n, h, w, device=device),
    }
    max_diff = (impls["per_box"]() - impls["chunked"]()).abs().max().item()  # also warms up
    # Short calls are repeated within one sample so that each sample lasts >= min_sample_s.
    one_call = min(timed(impls[name], device) for name in ("per_box", "chunked"))
    calls = max(1, math.ceil(min_sample_s / max(one_call, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(impls[name], device, calls))
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {
        "n": n,
        "h": h,
        "w": w,
        "threads": torch.get_num_threads(),
        "calls_per_sample": calls,
        "per_box_ms": round(med["per_box"], 2),
        "chunked_ms": round(med["chunked"], 2),
        "torchvision_ms": round(med["torchvision"], 2),
        "alloc_ms": round(med["alloc"], 2),
        "ratio_old_new": round(med["per_box"] / med["chunked"], 3),
        "max_abs_diff": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--min-sample-s", type=float, default=0.1, help="repeat short calls up to this long"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n, h, w in CASES:
            row = run_case(n, h, w, args.repeats, device, args.min_sample_s)
            rows.append(row)
            print(
                f"threads={threads} N={n} {h}x{w}: per_box {row['per_box_ms']} ms, "
                f"chunked {row['chunked_ms']} ms, torchvision {row['torchvision_ms']} ms, "
                f"canvas alloc {row['alloc_ms']} ms, per_box/chunked {row['ratio_old_new']}, "
                f"max |diff| {row['max_abs_diff']:.2e}"
            )
    print(json.dumps({"device": str(device), "repeats": args.repeats, "cases": rows}))


if __name__ == "__main__":
    main()
