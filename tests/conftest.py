"""Shared fixtures: the real sample data beside the checkout, deterministic seeds, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

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
