#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer (CPU only) in a copy of
# the sources under build/sanitize/ (the normal in-place build is untouched) and runs the op tests
# and the fuzz suite against it. Any ASan report or UB aborts the process, which fails the test.
#   scripts/sanitize.sh [pytest args...]     e.g. scripts/sanitize.sh -k fuzz
# Environment: PY (python with torch; default: the project venv), MAX_JOBS, SANITIZE_TESTS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
COPY="$ROOT/build/sanitize"
start=$(date +%s)

# A copy of the tracked (and untracked, not ignored) sources: setup.py builds in place there.
mkdir -p "$COPY"
rm -rf "$COPY/domino_kernels/assets"
git ls-files -z --cached --others --exclude-standard \
  | grep -zv '^domino_kernels/assets/' \
  | tar --null -T - -cf - | tar -xf - -C "$COPY"
# The shipped assets are large and only read: link them.
ln -s "$ROOT/domino_kernels/assets" "$COPY/domino_kernels/assets"

SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer"
echo "[sanitize] building the extension with $SAN"
(
  cd "$COPY"
  export DOMINO_BUILD_CUDA=0 CFLAGS="$SAN" LDFLAGS="$SAN" MAX_JOBS="${MAX_JOBS:-2}"
  if command -v ccache >/dev/null; then export PATH="/usr/lib/ccache:$PATH" CCACHE_BASEDIR="$COPY"; fi
  "$PY" setup.py -q build_ext --inplace > "$COPY/build-ext.log" 2>&1 \
    || { tail -50 "$COPY/build-ext.log"; exit 1; }
)
echo "[sanitize] built in $(( $(date +%s) - start ))s"

# Python and torch are not instrumented: the ASan runtime must be loaded first.
LIBASAN=$(${CXX:-g++} -print-file-name=libasan.so)
LIBUBSAN=$(${CXX:-g++} -print-file-name=libubsan.so)
export LD_PRELOAD="$LIBASAN:$LIBUBSAN"
# Leaks: CPython and torch keep allocations alive at exit by design. alloc_dealloc_mismatch:
# torch's allocator pairs are not visible to ASan across uninstrumented libraries.
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$COPY" OMP_NUM_THREADS=2

cd "$COPY"
"$PY" -c "import domino_kernels, sys; f = domino_kernels.__file__; \
sys.exit(0 if f.startswith('$COPY') else 'sanitize: imported ' + f)"
TESTS="${SANITIZE_TESTS:-tests/test_sampling.py tests/test_verify.py tests/test_attention.py tests/test_rollout.py tests/test_hardening.py tests/test_fuzz_ops.py}"
echo "[sanitize] pytest $TESTS"
# shellcheck disable=SC2086
"$PY" -m pytest -q -p no:cacheprovider $TESTS "$@"
echo "[sanitize] done in $(( $(date +%s) - start ))s"
