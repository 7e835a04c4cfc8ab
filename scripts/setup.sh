#!/usr/bin/env bash
# Create .venv (if missing) and install lightning_seg with its test and benchmark extras.
# Works on a fresh machine with Python 3.10+ and nothing else; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# torch/torchvision resolve from PyPI (do not pin a local +cpu build: torchvision's ops fail on it).
if ! python -c "import lightning_seg, torch, torchvision, lightning, albumentations" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.lseg-installed ]; then
  echo "[setup] installing lightning_seg and its dependencies (first time: a few minutes)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[dev,benchmark]"
  touch .venv/.lseg-installed
fi
python - <<'PY'
import torch, torchvision
from torchvision.ops import nms
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails fast on a torch/torchvision mismatch
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
