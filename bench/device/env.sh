# Sourced on the device machine, in the project's root, after the uploads of bench/device/prepare.sh:
# unpacks onnxruntime-gpu and the wheels, puts them and this checkout first on PYTHONPATH (the folders
# proto/ export/ server/ client/ cli/ linked as the layerserve package, so an edit needs no wheel),
# and checks that a session really runs on CUDA (a silent CPU fallback is the classic failure).
mkdir -p /tmp/ortsite
if [[ ! -d /tmp/ortsite/onnxruntime ]]; then
  last=$(ls -d .ortgpu/p* | sort -V | tail -n1)
  cat /tmp/ortgpu/part-* "$last"/part-* | xz -d -T4 | tar -x -C /tmp/ortsite || return 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/pkg/layerserve
for d in proto export server client cli; do ln -sfn "$PWD/$d" "/tmp/pkg/layerserve/$d"; done
export PYTHONPATH=/tmp/ortsite:/tmp/site:/tmp/pkg:$PWD${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
python3 - <<'PY' || return 1
import onnxruntime as ort
session = ort.InferenceSession("models/digits_cnn/1/model.onnx", providers=["CUDAExecutionProvider"])
print("onnxruntime", ort.__version__, "session providers", session.get_providers())
assert session.get_providers()[0] == "CUDAExecutionProvider", "CUDA did not load: the session fell back to the CPU"
PY
