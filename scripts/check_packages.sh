#!/usr/bin/env bash
# Checks the packages, not the checkout: builds the sdist, installs it into a fresh virtual
# environment with the pinned CPU torch (pip install --no-build-isolation, so it compiles against
# that torch), builds a wheel from the same sdist and installs it into a second fresh environment
# that gets only the wheel's declared dependencies. In each, from a directory outside the source
# tree: `python -m domino_kernels.info`, `domino-kernels demo --max-new-tokens 8` and
# scripts/package_smoke.py (ops vs reference, metadata, assets, torch-mismatch error).
#   scripts/check_packages.sh [WORK_DIR]      (default build/packages; removed and recreated)
# Needs python3 with venv, a C++ compiler; pip's cache is reused, so torch is not downloaded twice.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$(mkdir -p "${1:-build/packages}" && cd "${1:-build/packages}" && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1 MAX_JOBS="${MAX_JOBS:-2}" DOMINO_BUILD_CUDA=0
unset PYTHONPATH
rm -rf "$WORK"/{dist,venv-sdist,venv-wheel,*.log}
mkdir -p "$WORK/dist"
# The installed packages run from an empty directory outside the checkout (nothing importable
# from the source tree can shadow them).
RUN_DIR=$(mktemp -d)
trap 'rm -rf "$RUN_DIR"' EXIT
start=$(date +%s)
step() { echo "[packages] [$(( $(date +%s) - start ))s] $*"; }
# Long logs go to files, shown only when a step fails.
logged() { local log="$WORK/$1.log"; shift; "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "[packages] FAILED: $*" >&2; return 1; }; }
# The pinned CPU torch and the pins of requirements/common.txt as constraints.
PINS=(-r requirements/cpu.txt -c requirements/common.txt)

# The sdist needs only setuptools and torch (setup.py imports it): any python that has both.
BUILD_PY="${DOMINO_BUILD_PYTHON:-}"
if [ -z "$BUILD_PY" ]; then
  if [ -x .venv/bin/python ]; then BUILD_PY=.venv/bin/python; else source scripts/env.sh; BUILD_PY="$PY"; fi
fi
step "sdist ($BUILD_PY setup.py sdist)"
rm -rf domino_kernels.egg-info
logged sdist "$BUILD_PY" setup.py sdist -d "$WORK/dist"
SDIST=$(ls "$WORK"/dist/domino_kernels-*.tar.gz)
step "$(basename "$SDIST"): $(du -h "$SDIST" | cut -f1), $(tar tzf "$SDIST" | grep -c -v '/$') files"

check_installed() {  # $1: venv; runs outside the source tree, with only the venv's python
  local py="$1/bin/python"
  (cd "$RUN_DIR" && "$py" -m domino_kernels.info && "$1/bin/domino-kernels" demo --max-new-tokens 8 \
     && "$py" "$ROOT/scripts/package_smoke.py")
}

step "fresh venv for the sdist: pinned CPU torch + runtime and build dependencies"
python3 -m venv "$WORK/venv-sdist"
logged venv-sdist "$WORK/venv-sdist/bin/pip" install "${PINS[@]}" numpy safetensors tokenizers ninja "setuptools>=77"
step "pip install --no-build-isolation $(basename "$SDIST") (compiles the extension)"
# The venv's bin holds ninja; torch's extension builder looks for it on PATH.
PATH="$WORK/venv-sdist/bin:$PATH" logged install-sdist "$WORK/venv-sdist/bin/pip" install -v --no-build-isolation "$SDIST"
step "check the sdist install"
check_installed "$WORK/venv-sdist"

step "pip wheel --no-build-isolation from the sdist"
PATH="$WORK/venv-sdist/bin:$PATH" logged wheel "$WORK/venv-sdist/bin/pip" wheel --no-build-isolation --no-deps -w "$WORK/dist" "$SDIST"
WHEEL=$(ls "$WORK"/dist/domino_kernels-*.whl)
step "$(basename "$WHEEL"): $(du -h "$WHEEL" | cut -f1); contains: $(unzip -Z1 "$WHEEL" | grep -x -E 'domino_kernels/(_C[^/]*\.so|_build_info\.py|assets/NOTICE|assets/default/target/model\.safetensors)' | tr '\n' ' ')"
step "fresh venv for the wheel: the wheel and the dependencies it declares (pinned torch), nothing else"
python3 -m venv "$WORK/venv-wheel"
logged install-wheel "$WORK/venv-wheel/bin/pip" install "${PINS[@]}" "$WHEEL"
step "check the wheel install"
check_installed "$WORK/venv-wheel"
step "packages OK"
