#!/usr/bin/env bash
# Set everything up, then run the test suite (slow and GPU tests are opt-in: -m slow / -m gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
exec python -m pytest -q "$@"
