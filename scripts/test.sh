#!/usr/bin/env bash
# Runs every test: pytest (CPU always; CUDA tests skip without a GPU) and the framework-free C++
# tests through CMake/ctest. Creates the environment and builds the extension first if needed.
#   scripts/test.sh [pytest args...]        DOMINO_TORCH=cuda scripts/test.sh  (CUDA build)
source "$(dirname "$0")/env.sh"
cmake_dir="build/cmake-cpu"
cmake_cuda=OFF
if [ "$DOMINO_TORCH" = cuda ]; then cmake_dir="build/cmake-cuda"; cmake_cuda=ON; fi
# Ninja from the venv (env.sh puts it first on PATH), named explicitly so CMake does not pick
# another one; Makefiles where there is no ninja at all. A build directory keeps its generator.
if [ -f "$cmake_dir/CMakeCache.txt" ]; then
  generator=()
elif ninja=$(command -v ninja) && "$ninja" --version >/dev/null 2>&1; then
  generator=(-G Ninja "-DCMAKE_MAKE_PROGRAM=$ninja")
else
  generator=(-G "Unix Makefiles")
fi
echo "[test] C++ (cmake + ctest, DOMINO_WITH_CUDA=$cmake_cuda)"
cmake -S . -B "$cmake_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DDOMINO_WITH_CUDA=$cmake_cuda >/dev/null
cmake --build "$cmake_dir" -j "$MAX_JOBS" >/dev/null
ctest --test-dir "$cmake_dir" --output-on-failure
echo "[test] Python (pytest)"
"$PY" -m pytest -q tests "$@"
