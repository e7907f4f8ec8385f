# Sourced by the other scripts: makes sure a virtual environment with the pinned dependencies
# exists and that the extension is built, then exports PY (its python).
#   DOMINO_TORCH=cpu  (default) -> .venv,      torch==2.13.0 (CPU build)
#   DOMINO_TORCH=cuda           -> .venv-cuda, torch==2.14.1 (CUDA 13 build; also compiles the
#                                  CUDA kernels: needs nvcc, CUDA_HOME defaults to /usr/local/cuda)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DOMINO_TORCH="${DOMINO_TORCH:-cpu}"
if [ "$DOMINO_TORCH" = cuda ]; then
  VENV="${DOMINO_VENV:-.venv-cuda}"
  export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}"
  export DOMINO_BUILD_CUDA="${DOMINO_BUILD_CUDA:-1}"
else
  VENV="${DOMINO_VENV:-.venv}"
  export DOMINO_BUILD_CUDA="${DOMINO_BUILD_CUDA:-0}"
fi
export MAX_JOBS="${MAX_JOBS:-2}"
PY="$ROOT/$VENV/bin/python"
# The venv's bin first on PATH: its ninja (a pinned dependency) then serves torch's extension
# builder and CMake, so the machine needs no system ninja.
export PATH="$ROOT/$VENV/bin:$PATH"

source "$ROOT/scripts/pip_quiet.sh"

if [ ! -x "$PY" ]; then
  echo "[env] creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.domino-deps-$(cat requirements/common.txt "requirements/$DOMINO_TORCH.txt" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  echo "[env] installing pinned dependencies into $VENV (requirements/$DOMINO_TORCH.txt + common.txt)"
  pip_quiet "$PY" install -q -r "requirements/$DOMINO_TORCH.txt" -r requirements/common.txt
  touch "$stamp"
fi
if ! "$PY" -c "import domino_kernels" >/dev/null 2>&1 || [ ! -f "$VENV/.domino-installed" ]; then
  echo "[env] building and installing domino-kernels (pip install --no-build-isolation -e .)"
  pip_quiet "$PY" install -q --no-build-isolation --no-deps -e .
  touch "$VENV/.domino-installed"
else
  # Incremental rebuild: ninja recompiles only what changed (a no-op takes a few seconds).
  "$PY" setup.py -q build_ext --inplace >/dev/null
fi
export PY
