#!/usr/bin/env bash
# GPU benchmark of the trainer on world_a (bench/gpu.py): time to quality, throughput grid, compile modes.
# Writes bench/results/gpu.json (and gpu.log), and copies both to $OUT when that is set. Finishes in about 7 minutes.
#
# 1. Here, once (needs the package index and ../shared/data/world_a):
#        bash bench/gpu.sh prepare
#    puts into bench/results/gpu_in/ (ignored by git, about 50 MB): the polars and h3 wheels for Python 3.12
#    (the GPU machine has torch, numpy, scipy, pyarrow and tqdm, but neither polars nor h3), and world_a minus its
#    test cells without the geometry column, with the truth of the test cells.
# 2. On the GPU machine (the device tool: carry ["bench/results/gpu_in"], timeout_s 560):
#        bash bench/gpu.sh [extra bench/gpu.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
IN=bench/results/gpu_in

if [ "${1:-}" = prepare ]; then
    mkdir -p "$IN/wheels"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$IN/wheels" polars==1.33.1 h3==4.5.0
    python bench/gpu.py --prepare
    du -sh "$IN"
    exit 0
fi

[ -d "$IN/wheels" ] || { echo "no $IN: run 'bash bench/gpu.sh prepare' first and carry $IN"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$IN"/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
set +e
timeout 470 python3 bench/gpu.py "$@" 2>&1 | tee bench/results/gpu.log
rc=${PIPESTATUS[0]}
set -e
if [ -n "${OUT:-}" ]; then cp bench/results/gpu.json bench/results/gpu.log "$OUT"/ 2>/dev/null || true; fi
exit "$rc"
