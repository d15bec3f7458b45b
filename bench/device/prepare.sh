#!/usr/bin/env bash
# Prepares the GPU checks for the lent device machine (Python 3.12, CUDA 13, no network, 64 MiB per
# upload), from the project's root here: onnxruntime-gpu's files as a tar.xz cut into parts under
# .ortgpu/p1..pN (four of 58 MiB instead of the wheel's five), and serving's other cp312 wheels in
# .whl/. Both folders are ignored by git. It prints the calls to make there, back to back.
set -euo pipefail
ORT_VERSION=${ORT_GPU_VERSION:-1.31.1}
PART=${PART_MIB:-58}M
root=$(git rev-parse --show-toplevel)
cd "$root"
for folder in /.ortgpu/ /.whl/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
download() {  # cp312 manylinux wheels, without their dependencies
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "$@"
}
cache=${ORT_GPU_CACHE:-/tmp/ortgpu-cache}
mkdir -p "$cache"
wheel=$(ls "$cache"/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $wheel ]]; then
  download -d "$cache" "onnxruntime-gpu==$ORT_VERSION"
  wheel=$(ls "$cache"/onnxruntime_gpu-"$ORT_VERSION"-cp312-*.whl | head -n1)
fi
packed=$cache/onnxruntime_gpu-$ORT_VERSION.tar.xz
if [[ ! -s $packed ]]; then  # xz -9 takes ~3 minutes on two cores
  unpacked=$(mktemp -d)
  (cd "$unpacked" && python3 -m zipfile -e "$wheel" . && tar -cf - . | xz -9 -T2 > "$packed.partial")
  mv "$packed.partial" "$packed"
  rm -rf "$unpacked"
fi
rm -rf .ortgpu && mkdir -p .ortgpu/parts
split -b "$PART" -d -a 2 "$packed" .ortgpu/parts/part-
n=0
for f in .ortgpu/parts/part-*; do n=$((n + 1)); mkdir -p ".ortgpu/p$n"; mv "$f" ".ortgpu/p$n/"; done
rmdir .ortgpu/parts
# The versions this project pins or tests with; tritonclient, python-rapidjson for the tests' clients,
# py-spy for bench.run_stats --py-spy. numpy, prometheus-client, aiohttp, uvloop, rich and pytest are
# in the machine's image already.
rm -rf .whl && mkdir -p .whl
download -d .whl grpcio==1.81.1 grpcio-health-checking==1.81.1 grpcio-reflection==1.81.1 protobuf==6.33.6 \
  tritonclient==2.73.0 python-rapidjson==1.25 orjson==3.13.0 py-spy==0.4.3
echo "onnxruntime-gpu $ORT_VERSION: $n parts; wheels: $(ls .whl | wc -l) in .whl ($(du -sh .whl | cut -f1))"
echo "Calls, back to back (the machine goes back ~30 s after a call):"
for i in $(seq 1 $((n - 1))); do
  echo "  carry [\".ortgpu/p$i\"]: mkdir -p /tmp/ortgpu && cp .ortgpu/p$i/* /tmp/ortgpu/"
done
echo "  carry [\".ortgpu/p$n\", \".whl\"]: bash bench/device/gpu_items.sh   (or: source bench/device/env.sh; your commands)"
