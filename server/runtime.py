"""ONNX Runtime, in one place: session options, execution providers, running graphs.

Nothing else in the server imports onnxruntime. The providers a session *really*
uses come from ``session.get_providers()``: ONNX Runtime falls back to the CPU
quietly when the CUDA provider is present but its libraries do not load, so
asking for CUDA proves nothing until a session reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from layerserve.proto.tensors import ORT_TYPES

from .errors import DeviceUnavailable

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """What every session of a server is created with."""

    device: str = "cpu"  # cpu | cuda | auto
    intra_op_threads: int = 1
    allow_spinning: bool = False


def available_providers() -> list[str]:
    """Providers this onnxruntime build offers (not proof that they load)."""
    return list(ort.get_available_providers())


def requested_providers(device: str) -> list[str]:
    """The provider list to create sessions with; DeviceUnavailable if ``cuda`` is not in the build."""
    if device == "cpu":
        return [CPU]
    if CUDA not in available_providers():
        if device == "cuda":
            raise DeviceUnavailable(
                f"--device cuda: this onnxruntime build ({ort.__version__}, package "
                f"{'onnxruntime-gpu' if 'gpu' in ort.get_device().lower() else 'onnxruntime'}) "
                f"offers only {available_providers()}; install onnxruntime-gpu (make setup-gpu)"
            )
        return [CPU]
    return [CUDA, CPU]


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """Session options: few, non-spinning intra-op threads so gRPC keeps its cores."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


@dataclass(frozen=True)
class IOSpec:
    """A session's input or output as ONNX Runtime declares it."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for any symbolic dimension


class Graph:
    """One ONNX file as a runnable session.

    ``run`` takes and returns host numpy arrays keyed by tensor name. On CUDA,
    ``run_on_device`` keeps tensors as OrtValues on the GPU (IOBinding), which
    ``chain`` uses so intermediates never cross to the host.
    """

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        providers = requested_providers(options.device)
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), session_options(options), providers=providers)
        self.providers: list[str] = list(self.session.get_providers())
        if options.device == "cuda" and CUDA not in self.providers:
            raise DeviceUnavailable(
                f"--device cuda: {CUDA} is in this onnxruntime build but did not load for {path.name} "
                f"(session uses {self.providers}); check the CUDA and cuDNN libraries onnxruntime-gpu needs"
            )
        self.on_cuda = CUDA in self.providers
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays; returns every output as a host array."""
        results = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def run_on_device(self, feeds: Mapping[str, ort.OrtValue]) -> dict[str, ort.OrtValue]:
        """Run with inputs and outputs bound as CUDA OrtValues (no host copies)."""
        binding = self.session.io_binding()
        for spec in self.inputs:
            binding.bind_ortvalue_input(spec.name, feeds[spec.name])
        for name in self._output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.get_outputs(), strict=True))


def _spec(arg: ort.NodeArg) -> IOSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return IOSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), shape)


def chain(
    graphs: Sequence[Graph], feeds: Mapping[str, np.ndarray], keep: Sequence[int] = ()
) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """Run ``graphs`` in order, each taking its inputs by name from what came before.

    Returns the last graph's outputs and, for each index in ``keep``, that graph's
    outputs, all as host arrays. On CUDA the tensors between graphs stay on the
    device as OrtValues; only the last outputs and kept ones are copied back.
    """
    if graphs and all(graph.on_cuda for graph in graphs):
        return _chain_on_device(graphs, feeds, keep)
    values: dict[str, np.ndarray] = dict(feeds)
    kept: dict[int, dict[str, np.ndarray]] = {}
    outputs: dict[str, np.ndarray] = {}
    for index, graph in enumerate(graphs):
        outputs = graph.run({spec.name: values[spec.name] for spec in graph.inputs})
        values.update(outputs)
        if index in keep:
            kept[index] = outputs
    return outputs, kept


def _chain_on_device(
    graphs: Sequence[Graph], feeds: Mapping[str, np.ndarray], keep: Sequence[int]
) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    values: dict[str, ort.OrtValue] = {
        name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
        for name, array in feeds.items()
    }
    kept: dict[int, dict[str, np.ndarray]] = {}
    outputs: dict[str, ort.OrtValue] = {}
    for index, graph in enumerate(graphs):
        outputs = graph.run_on_device({spec.name: values[spec.name] for spec in graph.inputs})
        values.update(outputs)
        if index in keep:
            kept[index] = {name: value.numpy() for name, value in outputs.items()}
    return {name: value.numpy() for name, value in outputs.items()}, kept
