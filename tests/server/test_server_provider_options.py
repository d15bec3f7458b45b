"""--provider-options: ONNX Runtime's provider options reach the device's own provider, and bad ones are refused."""

from __future__ import annotations

import pytest

from layerserve.server import runtime
from layerserve.server.devices import DEVICES, parse_provider_options
from layerserve.server.settings import from_sources


def test_options_go_to_the_provider_the_device_requires() -> None:
    options = "cudnn_conv_algo_search=HEURISTIC, use_tf32=0"
    assert runtime.provider_list(DEVICES["cuda"], options) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}),
        ("CPUExecutionProvider", {}),
    ]
    assert runtime.provider_list(DEVICES["cpu"]) == [("CPUExecutionProvider", {})]


def test_cuda_chooses_convolution_algorithms_by_heuristic_unless_told_otherwise() -> None:
    """The exhaustive search ONNX Runtime defaults to runs again for every batch size dynamic batching makes."""
    assert runtime.provider_list(DEVICES["cuda"])[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    told = runtime.provider_list(DEVICES["cuda"], "cudnn_conv_algo_search=EXHAUSTIVE")
    assert told[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})


@pytest.mark.parametrize("text", ["cudnn_conv_algo_search", "=HEURISTIC", "a=", "1x=2", "a=b,,c"])
def test_a_malformed_option_is_refused_naming_what_was_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"provider options expect KEY=VALUE\[,KEY=VALUE\] such as"):
        from_sources({"provider_options": text}, environ={})


def test_the_refusal_is_bounded() -> None:
    with pytest.raises(ValueError) as refused:
        parse_provider_options("k" * 10_000)
    assert len(str(refused.value)) < 200


def test_a_cpu_server_starts_with_options_and_serves(tiny_repository) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from server_harness import ServerThread

    from layerserve.server.settings import Settings

    settings = Settings(models=tiny_repository, port=0, metrics_port=-1, provider_options="arena_extend_strategy=1")
    with ServerThread(settings) as running, triton.InferenceServerClient(running.address) as client:
        tensor = triton.InferInput("x", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        assert client.infer("tiny_cnn", [tensor]).as_numpy("logits").shape == (1, 10)
