"""``benchmarks/gpu.sh`` refuses what it cannot run before spending GPU time: a misspelt run name
(exit 2, the names listed) and, on a machine without CUDA, any run (exit 1, said why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _gpu_sh(tmp_path: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "out"), *names],
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("names", [("upsnet", "upsnett"), ("",)])
def test_an_unknown_run_name_stops_before_anything_runs(tmp_path, names):
    proc = _gpu_sh(tmp_path, *names)
    assert proc.returncode == 2, proc.stderr
    assert f"unknown run '{names[-1]}' (one of: refinemask upsnet_large upsnet maskrcnn paste)" in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA refusal needs a machine without CUDA")
def test_without_cuda_it_says_so_and_runs_nothing(tmp_path):
    proc = _gpu_sh(tmp_path, "paste")
    assert proc.returncode == 1
    assert "torch sees no CUDA device" in proc.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()
