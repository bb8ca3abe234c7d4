#!/usr/bin/env bash
# One-step set-up: a local virtual environment in .venv with mechbd and its dependencies.
#   bash scripts/setup.sh          # library + CLI
#   bash scripts/setup.sh --dev    # plus test and lint tools
# On a machine without CUDA, torch is pinned to the CPU build (torch==2.13.0) first, so no
# CUDA packages are pulled. Set TORCH_INDEX_URL to take torch from another index (for example
# PyTorch's CPU index on a machine whose default index serves CUDA builds only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip

if ! command -v nvidia-smi >/dev/null 2>&1 || [ "${MECHBD_CPU:-0}" = "1" ]; then
  if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "setup: no CUDA here; installing the CPU build of torch (torch==2.13.0)"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    else
      .venv/bin/python -m pip install -q "torch==2.13.0"
    fi
  fi
fi

.venv/bin/python -m pip install -q -e ".${extra}"

# The report's browser test needs a headless Chromium (Debian's package). Best effort: without
# root or apt the test is skipped, and nothing else depends on it.
if [ -n "$extra" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = "0" ]; then
  echo "setup: installing chromium for the report's browser test"
  (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
   || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1)) \
   || echo "setup: chromium not installed (the browser test will be skipped)"
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
