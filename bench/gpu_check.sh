#!/usr/bin/env bash
# The engine on CUDA in bfloat16 at concurrency 1, 16 and 64; finishes well under 8 minutes on one GPU.
# Runs from the repository root on the device machine, whose python3 already has torch and transformers.
# The llmserve packages are pure Python and are used from the source tree. structlog is carried as a
# wheel in .whl/ when that machine lacks it (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 450 python3 bench/gpu_check.py --device cuda --dtype bfloat16 --concurrency 1 16 64 --new-tokens 64
