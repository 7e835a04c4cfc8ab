"""Every metric under DDP (2 CPU processes, gloo) gives exactly the single-process value."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_seg.metrics.keypoints import NME, PCK, KeypointDistanceNorm
from lightning_seg.metrics.panoptic import PanopticQualityMetric
from lightning_seg.metrics.semantic import SegmentationMetrics
from lightning_seg.metrics.temporal import TemporalStability
from lightning_seg.metrics.vpq import VideoPanopticQualityMetric
from lightning_seg.structures import PanopticTargets

WORLD_SIZE = 2
THINGS, STUFF = [0, 1, 2], [3, 4]


def _panoptic(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray | None = None, crowd: bool = True
) -> PanopticTargets:
    """Random blocky segment map (small ids), or a noisy copy of ``base``."""
    if base is None:
        seg = np.repeat(np.repeat(rng.integers(0, 9, (h // 3 + 1, w // 4 + 1)), 3, 0), 4, 1)[:h, :w]
    else:
        seg = np.where(rng.random(base.shape) < 0.15, rng.integers(0, 9, base.shape), base)
    ids = np.unique(seg)
    ids = ids[ids != 0]
    labels = rng.integers(0, 5, ids.size)
    return PanopticTargets(
        segment_map=torch.from_numpy(seg),
        ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        isthing=torch.from_numpy(labels < 3),
        iscrowd=torch.from_numpy((rng.random(ids.size) < 0.2) & (labels < 3) & crowd),
    )


def make_inputs() -> dict[str, list]:
    """Deterministic inputs; each list entry is one ``update`` call."""
    rng = np.random.default_rng(123)
    out: dict[str, list] = {k: [] for k in ("pq", "vpq", "sem", "pck", "nme", "tmp")}
    for _ in range(7):
        h, w = int(rng.integers(9, 20)), int(rng.integers(9, 25))
        gt = _panoptic(rng, h, w)
        pred = _panoptic(rng, h, w, base=gt.segment_map.numpy(), crowd=False)
        out["pq"].append(([pred], [gt]))
    for _ in range(3):
        h, w = int(rng.integers(9, 16)), int(rng.integers(9, 16))
        frames = [_panoptic(rng, h, w) for _ in range(int(rng.integers(2, 6)))]
        preds = [_panoptic(rng, h, w, base=f.segment_map.numpy(), crowd=False) for f in frames]
        out["vpq"].append((preds, frames))
    for _ in range(5):
        t = torch.from_numpy(rng.integers(0, 6, (2, 11, 13)))
        t[torch.from_numpy(rng.random((2, 11, 13)) < 0.1)] = 255
        logits = torch.from_numpy(rng.normal(size=(2, 6, 11, 13)))
        out["sem"].append((logits, t))
    for _ in range(5):
        gt = torch.from_numpy(rng.uniform(0, 50, (4, 5, 3)))
        gt[..., 2] = torch.from_numpy(rng.integers(0, 2, (4, 5))).double() + 1
        pred = gt[..., :2] + torch.from_numpy(rng.normal(0, 3, (4, 5, 2)))
        boxes = torch.from_numpy(np.concatenate([rng.uniform(0, 5, (4, 2)), rng.uniform(40, 60, (4, 2))], 1))
        out["pck"].append((pred, gt, boxes))
        out["nme"].append((pred, gt))
    for _ in range(3):
        g = torch.from_numpy(rng.random((4, 2, 8, 9)) < 0.5)
        p = g ^ torch.from_numpy(rng.random((4, 2, 8, 9)) < 0.2)
        out["tmp"].append((p, g))
    return out


def make_metrics() -> dict:
    return {
        "pq": PanopticQualityMetric(THINGS, STUFF),
        "vpq": VideoPanopticQualityMetric(THINGS, STUFF, window_frames=(1, 2, 3)),
        "sem": SegmentationMetrics(6, ignore_index=255),
        "pck": PCK(5, alpha=0.1),
        "nme": NME(KeypointDistanceNorm(0, 1), failure_thresh=0.2),
        "tmp": TemporalStability(),
    }


def evaluate(rank: int, world_size: int) -> dict:
    """Compute every metric on this rank's share (items rank, rank + world_size, ...)."""
    inputs = make_inputs()
    results = {}
    for name, metric in make_metrics().items():
        for args in inputs[name][rank::world_size]:
            metric.update(*args)
        results[name] = {k: v.clone() for k, v in metric.compute().items()}
    return results


def _worker(rank: int, world_size: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = evaluate(rank, world_size)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_equals_single_process(tmp_path):
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(WORLD_SIZE, _free_port(), out_path), nprocs=WORLD_SIZE, join=True)
    ddp = torch.load(out_path)
    single = evaluate(0, 1)
    for name, res in single.items():
        for key, value in res.items():
            other = ddp[name][key]
            assert other.dtype == value.dtype, (name, key)
            same = torch.equal(torch.nan_to_num(other, nan=-7.0), torch.nan_to_num(value, nan=-7.0))
            assert same, (name, key, value, other)
    # the data must make the comparison meaningful
    assert 0 < float(single["pq"]["pq"]) < 1 and 0 < float(single["vpq"]["vpq"]) < 1
    assert 0 < float(single["sem"]["mIoU"]) < 1 and 0 < float(single["pck"]["pck"]) < 1
    assert not math.isnan(float(single["nme"]["auc"])) and int(single["tmp"]["num_pairs"]) > 0
