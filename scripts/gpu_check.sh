#!/usr/bin/env bash
# GPU check (issue 13): parity on CUDA (float32 and bf16), a 2000-step triton-vs-naive drift test and the
# benchmarks, written under $OUT (or --out). Run it on a lent device machine in one call:
#     bash scripts/gpu_check.sh                 # the full check on cuda (about 8 minutes on an H200)
#     bash scripts/gpu_check.sh --device cpu --dry --out /tmp/gpu_check   # what CI runs: small, interpreted Triton
# It installs the project (no dependencies: the device's own torch/Triton/JAX serve) when pylo is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import pylo.optim" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . || "$PY" -m pip install --quiet --no-deps -e .
fi
export NVIDIA_TF32_OVERRIDE=0          # no TF32 anywhere (parity is float32 to 1e-6)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$PY" scripts/gpu_check.py "$@"
