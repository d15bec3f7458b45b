"""The one table of ``--device`` choices: execution providers, their options, and where tensors live.

Plain data (no onnxruntime import), so the settings' validation and the CLI's
choices derive from it cheaply; server/runtime.py creates sessions from it.
Adding TensorRT or ROCm is one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Device:
    """One ``--device`` choice: the execution providers its sessions ask for, in preference order
    (each with its provider options), the one that must really load, and where a chain keeps its
    intermediates (an OrtValue device, None for host memory)."""

    name: str
    providers: tuple[tuple[str, dict[str, str]], ...]
    required: str
    value_device: tuple[str, int] | None = None
    install_hint: str = ""


# The one table of devices: the settings' validation, the CLI's choices and session creation read it.
# Adding TensorRT or ROCm is one row (and "auto" tries the rows in order, before the CPU).
DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", ((CPU, {}),), CPU),
    # No "device_id" option: device 0 is the default, and naming it makes ONNX Runtime >= 1.26 log a
    # "No registered plugin EP device found" warning for every session (seen with 1.31.1 on an H200).
    # cuDNN's heuristic choice of convolution algorithm, as PyTorch's default, not ONNX Runtime's
    # exhaustive search: that search runs again for every new input shape, and dynamic batching makes
    # new batch sizes. Measured on an H100 (docs/BENCHMARKS.md, "On a GPU: NVIDIA H100"): the same speed
    # once warm, a first run at a new batch size of 12-19 ms instead of 51-558 ms (digits_cnn), and one
    # worker serving 16 clients 4.5x faster. --provider-options cudnn_conv_algo_search=EXHAUSTIVE restores it.
    "cuda": Device("cuda", ((CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), (CPU, {})), CUDA, ("cuda", 0),
                   "install onnxruntime-gpu (make setup-gpu)"),
}
AUTO = "auto"
DEVICE_CHOICES: tuple[str, ...] = (*DEVICES, AUTO)

_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


def parse_provider_options(text: str) -> dict[str, str]:
    """``--provider-options`` ("KEY=VALUE[,KEY=VALUE]", ONNX Runtime's option names) as a dict; ValueError
    naming what was expected and what came (bounded) when it is not that."""
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not _OPTION_KEY.fullmatch(key.strip()) or not value.strip():
            shown = item if len(item) <= 80 else item[:77] + "..."
            raise ValueError(f"provider options expect KEY=VALUE[,KEY=VALUE] such as "
                             f"cudnn_conv_algo_search=HEURISTIC, got {shown!r}")
        options[key.strip()] = value.strip()
    return options
