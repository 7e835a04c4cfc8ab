"""COCOEvaluator under DDP: 2 CPU processes (gloo) give exactly the single-process numbers."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_seg.metrics.coco import COCOEvaluator

sys.path.insert(0, str(Path(__file__).parent))
from test_coco_cases import make_case  # noqa: E402

IOU_TYPES = ("bbox", "segm", "boundary", "keypoints")
SIGMAS = [0.03, 0.05, 0.07, 0.09]
NUM_IMAGES = 9


def _case():
    preds, targets = make_case(21, num_images=NUM_IMAGES, num_kpts=len(SIGMAS))
    ids = [int(i) * 3 + 1 for i in range(NUM_IMAGES)]
    return preds, targets, ids


def _metric() -> COCOEvaluator:
    return COCOEvaluator(IOU_TYPES, kpt_sigmas=SIGMAS, per_class=True)


def _feed(metric: COCOEvaluator, preds, targets, ids, indices: list[int], batch_size: int = 2):
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        chunk_ids = None if ids is None else [ids[i] for i in chunk]
        metric.update([preds[i] for i in chunk], [targets[i] for i in chunk], chunk_ids)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    preds, targets, ids = _case()
    # DistributedSampler(shuffle=False): pad by repeating the first samples, then interleave.
    padded = list(range(NUM_IMAGES)) + list(range(-NUM_IMAGES % world))
    results = {}
    padded_metric = _metric()
    _feed(padded_metric, preds, targets, ids, padded[rank::world])
    results["padded"] = padded_metric.compute()
    idle_metric = _metric()  # rank 1 never sees an image
    if rank == 0:
        _feed(idle_metric, preds, targets, ids, list(range(NUM_IMAGES)))
    results["idle_rank"] = idle_metric.compute()
    default_ids = _metric()  # no image ids: a running index made unique across ranks
    _feed(default_ids, preds, targets, None, list(range(8))[rank::world], batch_size=1)
    results["default_ids"] = default_ids.compute()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    preds, targets, ids = _case()
    single = _metric()
    _feed(single, preds, targets, ids, list(range(NUM_IMAGES)), batch_size=4)
    expected = single.compute()
    single_default = _metric()
    _feed(single_default, preds, targets, None, list(range(8)), batch_size=3)
    expected_default = single_default.compute()
    assert expected["segm/AP50"] > 0.05 and expected["keypoints/AP50"] > 0.05
    for rank in range(2):
        got = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert got["padded"] == expected, rank  # exact: same records, same order per image
        assert got["idle_rank"] == expected, rank
        assert got["default_ids"] == expected_default, rank
