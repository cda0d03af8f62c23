#!/usr/bin/env bash
# Every GPU figure from one command: `python launch.py gpu-check` (alexnet_jax/gpu_check.py), run
# from a checkout of this repository on a GPU host, with no network and no install of the project.
#
#   scripts/gpu_check.sh [--out gpu_check_out] [--budget 480] [--parts env,bench,...]
#
# Output: one summary line per figure on stdout, and OUT/summary.md, OUT/summary.json, OUT/logs/.
#
# The check needs two small pure-Python packages that GPU hosts may lack: ml_collections (every
# config is an ml_collections.ConfigDict) and tqdm (the training loop's progress bar). Fetch their
# wheels on a machine with network access, in the repository root, and bring wheels/ along:
#
#   pip download ml_collections tqdm --no-deps -d wheels/
#
# This script installs whichever of them is missing from wheels/ into wheels/site (nothing outside
# the checkout changes) and puts that on PYTHONPATH. Their own dependencies (absl-py, PyYAML) come
# with JAX's optax and orbax. PYTHON=... picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE="$PWD/wheels/site"
if [ -d "$SITE" ]; then
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

missing=()
for module in ml_collections tqdm; do
  "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
  wheels=()
  for module in "${missing[@]}"; do
    found=$(ls wheels/"$module"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$found" ]; then
      echo "error: $PYTHON cannot import ${missing[*]} and wheels/ has no $module wheel; on a" \
           "machine with network access run 'pip download ml_collections tqdm --no-deps -d" \
           "wheels/' in the repository root and bring wheels/ along" >&2
      exit 2
    fi
    wheels+=("$found")
  done
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --no-index --no-deps \
    --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

exec "$PYTHON" launch.py gpu-check "$@"
