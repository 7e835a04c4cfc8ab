"""Index a COCO-scale instances JSON with our reader and with ``pycocotools.COCO``.

Generates (once, cached, deterministic) a COCO-2017-train-sized file: 118,287 images and
860,001 polygon instances (1-2 polygons of 6-42 vertices each, 2 decimals, COCO key order and
image fields), then indexes it in two fresh subprocesses so that memory is measured cleanly:

- ours: ``CocoIndex.build(ann_file)`` (what ``CocoInstanceDataset`` does; no mask decoded);
- reference: ``pycocotools.coco.COCO(ann_file)`` (``json.load`` + ``createIndex``).

Memory is the process's peak RSS while indexing (``VmHWM`` after resetting it through
``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere) minus its RSS just before indexing (after
imports: our package imports torch, pycocotools does not), i.e. what indexing costs.
The last line printed is one JSON object: ``index_s``, ``pycocotools_s``, ``time_ratio``
(ours / pycocotools), ``rss_mb``, ``pycocotools_rss_mb``, ``rss_ratio`` (goal <= 1.0 each),
plus sizes and ``gc_dicts_after`` (dicts still alive after our index is built: none may be
per-annotation).

Usage:
    python benchmarks/coco_index_scale.py                       # full size (~450 MB JSON)
    python benchmarks/coco_index_scale.py --num-images 2000 --num-instances 15000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so that import-time peaks do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(path: Path, num_images: int, num_instances: int, seed: int = 0) -> None:
    """Write a deterministic COCO-style instances JSON, streaming (never the whole doc in RAM)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(600_000, size=num_images, replace=False)) + 1
    heights = rng.integers(240, 641, num_images)
    widths = rng.integers(240, 641, num_images)
    cat_ids = np.sort(rng.choice(90, size=80, replace=False)) + 1
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "synthetic COCO-scale benchmark", "year": 2017}, ')
        f.write('"licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, '
                '"name": "Attribution License"}], "images": [')
        for k in range(num_images):
            i = int(ids[k])
            f.write(("," if k else "") + json.dumps({
                "license": int(k % 8) + 1, "file_name": f"{i:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                "height": int(heights[k]), "width": int(widths[k]),
                "date_captured": "2013-11-14 11:18:45",
                "flickr_url": f"http://farm1.staticflickr.com/1/{i}_abcdef_z.jpg", "id": i,
            }))
        f.write('], "annotations": [')
        owner = np.sort(rng.integers(0, num_images, num_instances))
        block = 50_000
        for start in range(0, num_instances, block):
            n = min(block, num_instances - start)
            own = owner[start : start + n]
            h, w = heights[own].astype(np.float64), widths[own].astype(np.float64)
            cx, cy = rng.uniform(0.2, 0.8, n) * w, rng.uniform(0.2, 0.8, n) * h
            radius = rng.uniform(0.02, 0.25, n) * np.minimum(h, w)
            parts = np.where(rng.random(n) < 0.1, 2, 1)
            cats = cat_ids[rng.integers(0, 80, n)]
            # one row per polygon part, its vertices flattened
            part_ann = np.repeat(np.arange(n), parts)  # [P]
            part_k = np.concatenate([[0, 1][:p] for p in parts])  # part index inside its ann
            verts = rng.integers(6, 43, len(part_ann))  # [P]
            vert_part = np.repeat(np.arange(len(part_ann)), verts)  # [V]
            a = part_ann[vert_part]
            k = part_k[vert_part]
            ang = rng.uniform(0, 2 * np.pi, len(vert_part))
            ang = ang + 2 * np.pi * vert_part  # sort angles inside each part only
            ang = np.sort(ang) - 2 * np.pi * vert_part
            r = radius[a] * rng.uniform(0.6, 1.0, len(vert_part)) / (k + 1)
            xs = np.clip(cx[a] + r * np.cos(ang) + k * radius[a], 0, w[a]).round(2)
            ys = np.clip(cy[a] + r * np.sin(ang), 0, h[a]).round(2)
            starts = np.concatenate([[0], np.cumsum(verts)[:-1]])
            # shoelace area per part, summed per annotation
            nxt = np.arange(len(xs)) + 1
            nxt[np.cumsum(verts) - 1] = starts  # wrap to the part's first vertex
            cross = xs * ys[nxt] - ys * xs[nxt]
            area = np.bincount(part_ann, 0.5 * np.abs(np.add.reduceat(cross, starts)), n)
            x0 = np.full(n, np.inf)
            y0 = np.full(n, np.inf)
            x1 = np.full(n, -np.inf)
            y1 = np.full(n, -np.inf)
            np.minimum.at(x0, a, xs)
            np.minimum.at(y0, a, ys)
            np.maximum.at(x1, a, xs)
            np.maximum.at(y1, a, ys)
            flat = np.empty(2 * len(xs))
            flat[0::2], flat[1::2] = xs, ys
            text = list(map(repr, flat.tolist()))
            polys = [
                "[" + ",".join(text[2 * s0 : 2 * (s0 + v)]) + "]"
                for s0, v in zip(starts.tolist(), verts.tolist())
            ]
            out = []
            p = 0
            for j in range(n):
                seg = ",".join(polys[p : p + parts[j]])
                p += parts[j]
                bbox = [round(float(x0[j]), 2), round(float(y0[j]), 2),
                        round(float(x1[j] - x0[j]), 2), round(float(y1[j] - y0[j]), 2)]
                out.append(
                    f'{{"segmentation": [{seg}], "area": {round(float(area[j]), 4)!r}, '
                    f'"iscrowd": 0, "image_id": {int(ids[own[j]])}, "bbox": {json.dumps(bbox)}, '
                    f'"category_id": {int(cats[j])}, "id": {start + j + 1}}}'
                )
            f.write(("," if start else "") + ",".join(out))
        f.write('], "categories": [')
        f.write(",".join(
            json.dumps({"supercategory": "thing", "id": int(c), "name": f"class_{int(c)}"})
            for c in cat_ids
        ))
        f.write("]}")
    tmp.replace(path)


def worker(kind: str, ann_file: str) -> dict:
    """Index ``ann_file`` in this process and report time and memory (run in a subprocess)."""
    if kind == "ours":
        from lightning_seg.data.formats.coco import CocoIndex
    else:
        from pycocotools.coco import COCO
    gc.collect()
    dicts_before = sum(isinstance(o, dict) for o in gc.get_objects())
    base = _rss_mb()
    _reset_peak()
    t0 = time.perf_counter()
    if kind == "ours":
        index = CocoIndex.build(ann_file)
        n = index.num_annotations
    else:
        sys.stdout = open(os.devnull, "w")  # pycocotools prints progress
        index = COCO(ann_file)
        sys.stdout = sys.__stdout__
        n = len(index.anns)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "rss_mb": _peak_mb() - base, "peak_abs_mb": _peak_mb(),
           "base_mb": base, "num_annotations": n}
    if kind == "ours":
        gc.collect()
        out["gc_dicts_after"] = sum(isinstance(o, dict) for o in gc.get_objects()) - dicts_before
        out["index_mb"] = index.nbytes / 2**20
    return out


def _run_worker(kind: str, ann_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--ann-file", str(ann_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=118_287)
    parser.add_argument("--num-instances", type=int, default=860_001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("LSEG_BENCH_CACHE", tempfile.gettempdir()))
                        / "lightning_seg_bench")
    parser.add_argument("--worker", choices=["ours", "pycocotools"], help=argparse.SUPPRESS)
    parser.add_argument("--ann-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.ann_file)))
        return
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    ann_file = args.cache_dir / (
        f"coco_scale_{args.num_images}img_{args.num_instances}ann_seed{args.seed}.json"
    )
    if not ann_file.is_file():
        t0 = time.perf_counter()
        generate(ann_file, args.num_images, args.num_instances, args.seed)
        print(f"generated {ann_file} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ours = _run_worker("ours", ann_file)
    ref = _run_worker("pycocotools", ann_file)
    if ours["num_annotations"] != ref["num_annotations"]:
        raise RuntimeError(f"annotation counts differ: {ours} vs {ref}")
    result = {
        "num_images": args.num_images,
        "num_instances": args.num_instances,
        "json_mb": round(ann_file.stat().st_size / 2**20, 1),
        "index_s": round(ours["seconds"], 3),
        "pycocotools_s": round(ref["seconds"], 3),
        "time_ratio": round(ours["seconds"] / ref["seconds"], 3),
        "rss_mb": round(ours["rss_mb"], 1),
        "pycocotools_rss_mb": round(ref["rss_mb"], 1),
        "rss_ratio": round(ours["rss_mb"] / ref["rss_mb"], 3),
        "index_mb": round(ours["index_mb"], 1),
        "peak_abs_mb": round(ours["peak_abs_mb"], 1),
        "pycocotools_peak_abs_mb": round(ref["peak_abs_mb"], 1),
        "gc_dicts_after": ours["gc_dicts_after"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
