"""Shared fixtures: the real sample data beside the checkout, deterministic seeds, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Under pytest-xdist (scripts/test.sh runs the suite with ``-n 2``) each worker gets its share of the
# cores, for torch here and for the ``lseg`` processes tests start: N workers each starting one
# thread per core would oversubscribe the machine and run slower than one worker. An explicit
# OMP_NUM_THREADS wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    import torch

    from lightning_seg.sweeps.runner import core_share

    os.environ["OMP_NUM_THREADS"] = str(core_share(_WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (or ``$LSEG_SHARED_DATA``), None when absent."""
    env = os.environ.get("LSEG_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample datasets; the test is skipped with the reason when absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not beside this checkout (set LSEG_SHARED_DATA to its path)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
