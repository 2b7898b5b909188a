#!/usr/bin/env bash
# Set up the pinned virtual environment (once, again when constraints.txt or pyproject.toml change), then run:
#   ./dev.sh demo [ARGS]   train the bundled digits CNN and pack it (ONNX + TFLite, verified, benched, reported)
#   ./dev.sh test [ARGS]   run the whole test suite
#   ./dev.sh edgepack ...  any edgepack command inside the environment
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.edgepack-setup-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"

if [ ! -f "$stamp" ]; then
  echo "edgepack: setting up $VENV from constraints.txt (first run takes a minute or two)" >&2
  "$PY" -m venv "$VENV"
  # torch first and pinned: the local CPU wheel; a range left open pulls gigabytes of CUDA packages.
  "$VENV/bin/pip" install -q -c constraints.txt "torch==2.13.0"
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[dev,ray]"
  rm -f "$VENV"/.edgepack-setup-*
  touch "$stamp"
fi

# Keep the tools' caches out of the user's home (Keras, matplotlib, onnxruntime write there on import).
export KERAS_HOME="${KERAS_HOME:-$PWD/$VENV/cache/keras}" MPLCONFIGDIR="${MPLCONFIGDIR:-$PWD/$VENV/cache/mpl}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec "$VENV/bin/edgepack" demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  edgepack) exec "$VENV/bin/edgepack" "$@" ;;
  *) echo "usage: ./dev.sh demo|test|edgepack [ARGS]" >&2; exit 2 ;;
esac
