"""KServe's Python ModelServer serving one ONNX model over the Open Inference Protocol (gRPC).

Runs inside the bench's own KServe virtual environment (bench/peers/kserve_peer.py
creates it), never inside layerserve's. KServe 0.21 binds every address; this
script binds gRPC and REST to 127.0.0.1 only, since benchmarks here may touch
loopback and nothing else.

    python kserve_onnx.py --model-file model.onnx --name digits_cnn --grpc-port 9001 --http-port 9002 [--tuned]

``--tuned`` gives KServe the same ONNX Runtime options layerserve uses (no spinning,
one intra-op thread, sequential execution) so the comparison is of the servers, not of ORT settings.
"""

from __future__ import annotations

import argparse
import sys

import grpc.aio
import numpy as np
import onnxruntime as ort
import uvicorn


def _bind_loopback_only() -> None:
    """Make KServe's hard-coded 0.0.0.0 / [::] listeners bind 127.0.0.1 instead."""
    original_config = uvicorn.Config.__init__

    def config_on_loopback(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["host"] = "127.0.0.1"
        original_config(self, *args, **kwargs)

    uvicorn.Config.__init__ = config_on_loopback  # type: ignore[method-assign]
    server_class = type(grpc.aio.server())
    original_port = server_class.add_insecure_port

    def port_on_loopback(self, address: str) -> int:  # type: ignore[no-untyped-def]
        return original_port(self, "127.0.0.1:" + address.rsplit(":", 1)[1])

    server_class.add_insecure_port = port_on_loopback  # type: ignore[method-assign]


_DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}


def _io_type(spec: ort.NodeArg) -> dict:
    """An ONNX Runtime input/output as an Open Inference Protocol tensor metadata dict (-1 for symbolic dims)."""
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return {"name": spec.name, "datatype": _DATATYPES.get(spec.type, spec.type), "shape": shape}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--tuned", action="store_true")
    args = parser.parse_args()
    _bind_loopback_only()
    sys.argv = sys.argv[:1]  # KServe parses sys.argv at import time

    import kserve
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(args.name)
            self.session: ort.InferenceSession | None = None

        def load(self) -> bool:
            options = ort.SessionOptions()
            if args.tuned:
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(args.model_file, options, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.output_name = self.session.get_outputs()[0].name
            self.ready = True
            return True

        # KServe's metadata hooks (empty by default); what a deployment would declare, so that
        # ModelMetadata-driven clients (bench/locustfile.py) can shape requests for this peer too.
        def get_input_types(self) -> list[dict]:
            return [_io_type(spec) for spec in self.session.get_inputs()]

        def get_output_types(self) -> list[dict]:
            return [_io_type(spec) for spec in self.session.get_outputs()]

        def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:  # type: ignore[no-untyped-def]
            x = payload.inputs[0].as_numpy()
            (y,) = self.session.run([self.output_name], {self.input_name: x})
            out = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(np.ascontiguousarray(y, dtype=np.float32), binary_data=True)
            return InferResponse(response_id=payload.id or "", model_name=args.name, infer_outputs=[out])

    model = OnnxModel()
    model.load()
    kserve.ModelServer(grpc_port=args.grpc_port, http_port=args.http_port, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
