# Sourced by env.sh and vllm_env.sh. pip_quiet PYTHON ARGS...: `PYTHON -m pip ARGS...` with quiet
# output: pip -q still prints one "Location ... is ignored" warning per package on machines whose
# pip config names a missing local index, so those lines are dropped; everything is shown when pip
# fails.
pip_quiet() {
  local py="$1" log rc=0
  shift
  log=$(mktemp)
  "$py" -m pip --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then grep -v -e "is ignored: it is neither" -e '^[[:space:]]*$' "$log" || true
  else cat "$log" >&2; fi
  rm -f "$log"
  return "$rc"
}
