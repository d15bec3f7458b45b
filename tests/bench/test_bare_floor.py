"""The transport floor the grid measures beside layerserve must really run the model, and the transport
alone, which answers a repeated request from its cache, must still answer what the model answers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from bench.payloads import COMMITTED, manifest, model_input
from bench.peers.bare_grpc import BareGrpcPeer


@pytest.mark.parametrize("cached", [False, True], ids=["floor", "transport alone"])
def test_the_bare_floor_answers_what_onnx_runtime_answers_on_six_connections(cached: bool) -> None:
    folder, spec = manifest(COMMITTED, "digits_cnn")
    model_file = folder / spec.full_model.path
    x = model_input(spec, 3)["x"]
    (want,) = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with BareGrpcPeer(model_file, processes=2, cached=cached) as floor:
        for _ in range(6):  # a connection each, which SO_REUSEPORT spreads over the processes
            with triton.InferenceServerClient(floor.address, channel_args=[("grpc.use_local_subchannel_pool", 1)]) as client:
                tensor = triton.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                np.testing.assert_allclose(client.infer("digits_cnn", [tensor]).as_numpy("logits"), want,
                                           rtol=1e-5, atol=1e-5)
        pid = floor.process.pid
    assert floor.process.returncode == 0, pid
