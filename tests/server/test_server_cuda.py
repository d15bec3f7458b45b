"""CUDA execution provider: served providers and on-device chains (skipped where CUDA does not exist)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_harness import ServerThread

from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto import tensors
from layerserve.server.settings import Settings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDAExecutionProvider here"
    ),
]


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_cuda_sessions_report_cuda_and_match_cpu(tiny_repository: Path, device: str) -> None:
    settings = Settings(models=tiny_repository, port=0, metrics_port=-1, device=device)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    cpu = ort.InferenceSession(str(tiny_repository / "tiny_cnn/2/model.onnx"), providers=["CPUExecutionProvider"])
    (want,) = cpu.run(None, {"x": x})
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as channel:
        listing = lpb_grpc.LayerServiceStub(channel).ListBlocks(lpb.ListBlocksRequest(model_name="tiny_cnn"))
        assert listing.providers[0] == "CUDAExecutionProvider"
        request = lpb.ChainRequest(model_name="tiny_cnn", start=0, keep=[0])
        tensors.add_raw_input(request.request, "x", x)
        outputs = tensors.outputs_by_name(lpb_grpc.LayerServiceStub(channel).Chain(request).response)
        np.testing.assert_allclose(outputs["logits"], want, rtol=1e-3, atol=1e-3)
        assert outputs["00_stem/h1"].shape == (4, 4, 8, 8)
        with triton.InferenceServerClient(running.address) as client:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer("tiny_cnn.chain", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
