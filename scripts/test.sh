#!/usr/bin/env bash
# Runs every test: pytest (CPU always; CUDA tests skip without a GPU) and the framework-free C++
# tests through CMake/ctest. Creates the environment and builds the extension first if needed.
#   scripts/test.sh [pytest args...]        DOMINO_TORCH=cuda scripts/test.sh  (CUDA build)
source "$(dirname "$0")/env.sh"
cmake_dir="build/cmake-cpu"
cmake_cuda=OFF
if [ "$DOMINO_TORCH" = cuda ]; then cmake_dir="build/cmake-cuda"; cmake_cuda=ON; fi
echo "[test] C++ (cmake + ctest, DOMINO_WITH_CUDA=$cmake_cuda)"
cmake -S . -B "$cmake_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDOMINO_WITH_CUDA=$cmake_cuda >/dev/null
cmake --build "$cmake_dir" -j "$MAX_JOBS" >/dev/null
ctest --test-dir "$cmake_dir" --output-on-failure
echo "[test] Python (pytest)"
"$PY" -m pytest -q tests "$@"
