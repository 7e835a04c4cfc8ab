#!/usr/bin/env bash
# Create .venv (if missing) and install lightning_seg with its test, benchmark, export and report
# extras, at the exact versions of constraints.txt (those the test suite passed with). Works on a fresh machine
# with Python 3.11+ and nothing else; safe to run again: it reinstalls when pyproject.toml or
# constraints.txt is newer than the last install, or when the pinning mode changed.
#   LSEG_UNPINNED=1 bash scripts/setup.sh   # without the pins: the newest releases pyproject allows
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
STAMP=.venv/.lseg-installed
ARGS=(-e ".[dev,benchmark,export,report]")
if [ "${LSEG_UNPINNED:-0}" = 1 ]; then
  MODE=unpinned
  ARGS+=(--upgrade)
else
  MODE=pinned
  ARGS+=(-c constraints.txt)
fi
# torch/torchvision resolve from PyPI (do not pin a local +cpu build: torchvision's ops fail on it).
if ! python -c "import lightning_seg, torch, torchvision, lightning, albumentations" 2>/dev/null \
   || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$MODE" ] || [ pyproject.toml -nt "$STAMP" ] \
   || { [ "$MODE" = pinned ] && [ constraints.txt -nt "$STAMP" ]; }; then
  echo "[setup] installing lightning_seg and its dependencies, $MODE (first time: a few minutes)"
  python -m pip install -q --upgrade pip
  if ! python -m pip install -q "${ARGS[@]}"; then
    [ "$MODE" = pinned ] && echo "[setup] error: the pinned versions (constraints.txt) did not" \
      "install with $(python --version); its header names the Python they were tested with." \
      "Install without the pins: LSEG_UNPINNED=1 bash scripts/setup.sh" >&2
    exit 1
  fi
  echo "$MODE" >"$STAMP"
fi
python - <<'PY'
import torch, torchvision
from torchvision.ops import nms
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails fast on a torch/torchvision mismatch
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
