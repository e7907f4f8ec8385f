#!/usr/bin/env bash
# The main job: a Domino decode on the embedded default model. Creates the environment and builds
# the extension first if needed. Extra arguments go to `python -m domino_kernels demo`.
source "$(dirname "$0")/env.sh"
exec "$PY" -m domino_kernels demo "$@"
