#!/usr/bin/env bash
# Set everything up, lint, then run the test suite (slow and GPU tests are opt-in: -m slow / -m gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
echo "[test] ruff check ."
ruff check .
exec python -m pytest -q "$@"
