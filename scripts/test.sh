#!/usr/bin/env bash
# Set everything up, lint, then run the test suite (slow and GPU tests are opt-in: -m slow / -m gpu)
# on two pytest-xdist workers (LSEG_TEST_WORKERS=N for another count, 0 for one process), the 20
# slowest tests listed at the end. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
echo "[test] ruff check ."
ruff check .
exec python -m pytest -q -n "${LSEG_TEST_WORKERS:-2}" --dist worksteal --durations=20 "$@"
