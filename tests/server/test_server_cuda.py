"""The execution providers end to end: what ListBlocks reports, device-resident chains, kept activations.

The same test runs on the CPU everywhere and on CUDA where onnxruntime-gpu loads (``pytest -m cuda``
selects the CUDA cases), so the GPU path cannot drift from the API unnoticed between GPU runs.
"""

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

CUDA = "CUDAExecutionProvider"
_needs_cuda = [pytest.mark.cuda,
               pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="no CUDAExecutionProvider here")]


@pytest.mark.parametrize(("device", "provider"), [
    ("cpu", "CPUExecutionProvider"),
    pytest.param("cuda", CUDA, marks=_needs_cuda),
    pytest.param("auto", CUDA, marks=_needs_cuda),
])
def test_sessions_report_their_provider_and_match_the_cpu(tiny_repository: Path, device: str, provider: str) -> None:
    settings = Settings(models=tiny_repository, port=0, metrics_port=-1, device=device)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    cpu = ort.InferenceSession(str(tiny_repository / "tiny_cnn/2/model.onnx"), providers=["CPUExecutionProvider"])
    (want,) = cpu.run(None, {"x": x})
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as channel:
        stub = lpb_grpc.LayerServiceStub(channel)
        listing = stub.ListBlocks(lpb.ListBlocksRequest(model_name="tiny_cnn"))
        assert listing.providers[0] == provider
        request = lpb.ChainRequest(model_name="tiny_cnn", start=0, keep=[0])
        tensors.add_raw_input(request.request, "x", x)
        answer = stub.Chain(request)
        np.testing.assert_allclose(tensors.outputs_by_name(answer.response)["logits"], want, rtol=1e-3, atol=1e-3)
        (kept,) = answer.kept
        assert (kept.block_index, kept.block_name) == (0, "00_stem")
        assert tensors.outputs_by_name(kept.outputs)["h1"].shape == (4, 4, 8, 8)
        with triton.InferenceServerClient(running.address) as client:
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer("tiny_cnn.chain", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
