"""Command line: ``python -m lightning_seg.data.synthetic --out DIR --num-images N --seed S``."""

from __future__ import annotations

import argparse
import time

from lightning_seg.data.synthetic.world import generate_shapes_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_seg.data.synthetic",
        description="Write the synthetic shapes world (COCO instances/keypoints/panoptic, "
        "semantic PNGs; or videos with --video).",
    )
    parser.add_argument("--out", required=True, help="folder that gets train/, val/, world.json")
    parser.add_argument(
        "--num-images", type=int, required=True, help="train images (videos with --video)"
    )
    parser.add_argument("--num-val", type=int, default=None, help="default max(4, N // 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--vary-size", action="store_true", help="unequal sizes, 0.75..1.25 x H, W")
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--min-visible-area", type=int, default=24)
    parser.add_argument("--crowd-prob", type=float, default=0.1)
    parser.add_argument("--rle-prob", type=float, default=0.2)
    parser.add_argument("--video", action="store_true", help="write video sequences instead")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per video")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate_shapes_world(
        args.out,
        args.num_images,
        seed=args.seed,
        num_val=args.num_val,
        height=args.height,
        width=args.width,
        video=args.video,
        num_frames=args.num_frames,
        max_objects=args.max_objects,
        vary_size=args.vary_size,
        min_visible_area=args.min_visible_area,
        crowd_prob=args.crowd_prob,
        rle_prob=args.rle_prob,
    )
    print(f"shapes world in {out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
