#!/usr/bin/env bash
# The GPU check on a machine whose Python has torch, accelerate, timm, safetensors and tensorboard but not
# `datasets`: installs the wheels carried in .whl/ (make device-wheels) into a temporary folder, then runs
# scripts/device_check.py (pass --cpu_rehearsal to rehearse on a CPU). Results go to $OUT or outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
wheels="${WHEELS:-.whl}"
if ! "$python" -c "import datasets" 2>/dev/null; then
    [ -d "$wheels" ] || { echo "error: datasets is missing and $wheels/ holds no wheels: run make device-wheels" >&2; exit 2; }
    site="$(mktemp -d)"
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
df -h /dev/shm 2>/dev/null | tail -1 || true
PYTHONUNBUFFERED=1 exec "$python" scripts/device_check.py "$@"
