"""Speed of the CPU deformable convolution: ours (``deform_conv2d_sampled``) against torchvision's.

``lightning_seg.layers.DeformConv2d`` runs ``deform_conv2d_sampled`` on a CPU (the bilinear
samples gathered by one weighted ``F.embedding_bag`` from a channels-last table, then one matrix
product) and ``torchvision.ops.deform_conv2d`` on CUDA; both compute the same function
(``tests/models/test_layers.py`` checks outputs and gradients in float64). This times the two
on a CPU, forward without gradients (inference) and forward + backward (training), at the shapes
of the networks that use the layer:

* ``upsnet_p2`` / ``upsnet_p3``: UPSNet's semantic head (128 channels, DCNv1) at P2 / P3 of
  ``benchmarks/upsnet.py``'s 128 x 160 images, one image (inference) and the batch of 4;
* ``yolactpp_c5``: a YOLACT++ backbone block (DCNv2, 512 channels) at C5 of a 550 x 550 image;
* ``upsnet_coco_p3``: UPSNet's first semantic layer (256 channels) at P3 of an 800 x 1216 COCO
  image (the paper's setting; at this size the forward runs in blocks of output pixels).

The two are interleaved, their order rotating each repeat, and medians are reported.

Usage::

    python benchmarks/deform_conv.py --repeats 7 --threads 2

The last line printed is one JSON object; ``speedup_*`` = torchvision / ours (> 1: ours is
faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torchvision.ops import deform_conv2d

from lightning_seg.layers.deform import deform_conv2d_sampled

# name: (batch, channels, height, width, modulated)
CASES = {
    "upsnet_p2": (1, 128, 32, 40, False),
    "upsnet_p2_batch4": (4, 128, 32, 40, False),
    "upsnet_p3": (1, 128, 16, 20, False),
    "yolactpp_c5": (1, 512, 18, 18, True),
    "upsnet_coco_p3": (1, 256, 100, 152, False),
}


def make_inputs(b: int, c: int, h: int, w: int, modulated: bool, seed: int) -> list[torch.Tensor | None]:
    """Input, offsets of a few pixels (some leaving the image), 3x3 weights, bias and mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    offset = 2 * torch.randn(b, 18, h, w, generator=g)
    weight = torch.randn(c, c, 3, 3, generator=g) / (3 * c**0.5)
    bias = torch.randn(c, generator=g)
    mask = torch.rand(b, 9, h, w, generator=g) if modulated else None
    return [x, offset, weight, bias, mask]


def run(fn: Callable, inputs: list, backward: bool) -> None:
    x, offset, weight, bias, mask = inputs
    if not backward:
        with torch.no_grad():
            fn(x, offset, weight, bias, padding=(1, 1), mask=mask)
        return
    leaves = [t.detach().requires_grad_() for t in (x, offset, weight)]
    fn(*leaves, bias, padding=(1, 1), mask=mask).square().mean().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    impls = {"ours": deform_conv2d_sampled, "torchvision": deform_conv2d}
    result: dict[str, object] = {"threads": args.threads, "repeats": args.repeats}
    for name, shape in CASES.items():
        inputs = make_inputs(*shape, seed=args.seed)
        x, offset, weight, bias, mask = inputs
        diff = (deform_conv2d_sampled(x, offset, weight, bias, padding=(1, 1), mask=mask)
                - deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)).abs().max()
        for backward in (False, True):
            times: dict[str, list[float]] = {k: [] for k in impls}
            order = list(impls)
            for impl in order:  # warm-up
                run(impls[impl], inputs, backward)
            for r in range(args.repeats):
                for impl in order[r % 2:] + order[: r % 2]:
                    start = time.perf_counter()
                    run(impls[impl], inputs, backward)
                    times[impl].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            mode = "fwd_bwd" if backward else "fwd"
            print(f"{name} {tuple(shape[:4])}{' DCNv2' if shape[4] else ''} {mode}: ours "
                  f"{med['ours']:.2f} ms, torchvision {med['torchvision']:.2f} ms, "
                  f"x{med['torchvision'] / med['ours']:.2f} (max |diff| {float(diff):.1e})", flush=True)
            result[f"ms_ours_{name}_{mode}"] = round(med["ours"], 3)
            result[f"ms_torchvision_{name}_{mode}"] = round(med["torchvision"], 3)
            result[f"speedup_{name}_{mode}"] = round(med["torchvision"] / med["ours"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
