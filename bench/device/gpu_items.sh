#!/usr/bin/env bash
# The GPU checks in one call on the device machine (docs/gpu.md), each bounded so that all of them fit
# in about six minutes; results under $OUT. Run after the uploads that bench/device/prepare.sh prints.
set -u
source bench/device/env.sh || { echo "setting up onnxruntime-gpu failed"; exit 1; }
out=${OUT:-bench/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
step() { echo "[$(date +%T) +${SECONDS}s] $*"; }
step "pytest -m cuda"
timeout 150 python3 -m pytest -m cuda -q -p no:cacheprovider tests/server/test_server_cuda.py \
  tests/bench/test_gpu_check.py 2>&1 | tail -n 5 | tee "$out/pytest_cuda.txt"
step "where served CUDA runs' time goes: digits_cnn"
timeout 150 python3 -m bench.run_stats --device cuda --warmup 5 --duration 5 \
  --variants one_worker,one_worker_batching_off,defaults --out "$out/run_stats_digits.json" digits_cnn 2>&1 | tail -n 4
step "resnet50_shaped (built with the image's torch)"
timeout 200 python3 -m bench.run_stats --device cuda --warmup 5 --duration 5 \
  --variants one_worker,one_worker_batching_off,defaults --out "$out/run_stats_resnet50.json" resnet50_shaped 2>&1 | tail -n 4
step end
