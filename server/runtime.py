"""ONNX Runtime, in one place: session options, execution providers, running graphs.

Nothing else in the server imports onnxruntime. The providers a session *really*
uses come from ``session.get_providers()``: ONNX Runtime falls back to the CPU
quietly when the CUDA provider is present but its libraries do not load, so
asking for CUDA proves nothing until a session reports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from layerserve.proto.tensors import ORT_TYPES, TensorSpec

from . import composed, optimized
from .devices import AUTO, CPU, CUDA, DEVICE_CHOICES, DEVICES, Device, parse_provider_options
from .errors import DeviceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["AUTO", "CPU", "CUDA", "DEVICES", "DEVICE_CHOICES", "Device", "Graph", "RuntimeOptions", "chain"]


@dataclass(frozen=True)
class RuntimeOptions:
    """What every session of a server is created with.

    ``optimized_dir``: where this server keeps ONNX Runtime's optimized copies of its graphs
    (server/optimized.py); None optimizes each session's graph as it loads.
    """

    device: str = "cpu"  # a DEVICES key, or "auto"
    intra_op_threads: int = 1
    allow_spinning: bool = False
    optimized_dir: Path | None = None
    provider_options: str = ""  # "KEY=VALUE[,...]" for the device's own provider (devices.parse_provider_options)
    native_seams: bool = True  # chains may join blocks in ONNX Runtime's blocked layout (server/chains.py)
    composed_chain: bool = True  # the chain of every block may run as one composed session (server/composed.py)
    # Intra-op threads of a CPU graph's second session, for a run the server gives every core (``every_core``);
    # 0: none. Made in the background the first time such a run asks for it.
    every_core_threads: int = 0


def provider_list(device: Device, provider_options: str = "") -> list[tuple[str, dict[str, str]]]:
    """The providers a session asks for, in order, each with its options: the device table's, and
    ``provider_options`` over them for the provider the device requires."""
    extra = parse_provider_options(provider_options)
    return [(name, {**values, **extra} if name == device.required else dict(values))
            for name, values in device.providers]


def available_providers() -> list[str]:
    """Providers this onnxruntime build offers (not proof that they load)."""
    return list(ort.get_available_providers())


def resolve_device(device: str) -> Device:
    """The DEVICES row for ``device``; "auto" picks the first accelerator this build offers, else the CPU.

    Raises DeviceUnavailable when a named accelerator's provider is not in this onnxruntime build.
    """
    if device == AUTO:
        offered = available_providers()
        return next((d for d in DEVICES.values() if d.name != "cpu" and d.required in offered), DEVICES["cpu"])
    try:
        chosen = DEVICES[device]
    except KeyError:
        raise DeviceUnavailable(f"unknown device {device!r} (choose one of {', '.join(DEVICE_CHOICES)})") from None
    if chosen.required not in available_providers():
        package = "onnxruntime-gpu" if "gpu" in ort.get_device().lower() else "onnxruntime"
        raise DeviceUnavailable(
            f"--device {device}: this onnxruntime build ({ort.__version__}, package {package}) offers only "
            f"{available_providers()}; {chosen.install_hint or 'install a build with ' + chosen.required}"
        )
    return chosen


def requested_providers(device: str) -> list[str]:
    """The provider names sessions are created with; DeviceUnavailable if a named accelerator is not in the build."""
    return [name for name, _ in resolve_device(device).providers]


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
    # No arena: ONNX Runtime's CPU arena keeps the memory of the largest batch it ever ran, per
    # session, for good; through malloc (server/allocator.py) it is reused while busy and given back
    # once the load stops.
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    # Kernels log through ONNX Runtime's default logger, not the session's: its coloured warnings broke the
    # server's one-JSON-object-a-line log.
    ort.set_default_logger_severity(3)
    return so


_this_thread = threading.local()


def on_every_core(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, with every Graph it runs on this thread using its every-core session where it has one
    ready (``RuntimeOptions.every_core_threads``): for a long run the server has no other work for."""
    _this_thread.every_core = True
    try:
        return fn(*args)
    finally:
        _this_thread.every_core = False


def on_every_core_now() -> bool:
    """Whether the run on this thread was given every core (``on_every_core``)."""
    return getattr(_this_thread, "every_core", False)


class Graph:
    """One ONNX file as a runnable session.

    ``run`` takes and returns host numpy arrays keyed by tensor name. On an
    accelerator (``value_device``), ``run_on_device`` keeps tensors as OrtValues on
    it (IOBinding), which ``chain`` uses so intermediates never cross to the host.
    """

    def __init__(self, path: Path, options: RuntimeOptions, prepared: Path | None = None) -> None:
        """``prepared``: an optimized graph made from ``path`` (server/seams.py's variants), loaded as it is."""
        device = resolve_device(options.device)
        self.path = Path(path)
        load_from, so = self.path, session_options(options)
        providers = provider_list(device, options.provider_options)
        # The optimized copy this session reads, if any (server/seams.py makes its variants from it).
        self.optimized: Path | None = None
        if prepared is not None:
            load_from = self.optimized = Path(prepared)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif options.optimized_dir is not None and [name for name, _ in device.providers] == [CPU]:
            try:
                load_from = self.optimized = optimized.optimized_copy(
                    options.optimized_dir, self.path, lambda: session_options(options))
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # it is optimized already
            except OSError as error:  # no room or no write access: optimize in place, weights private
                log.warning("optimized copy not written; loading the graph as it is",
                            extra={"fields": {"graph": self.path.name, "error": str(error)}})
        self.session = ort.InferenceSession(
            str(load_from), so,
            providers=[name for name, _ in providers],
            provider_options=[values for _, values in providers],
        )
        # The same graph on every core, for runs on_every_core marks: made once, on first ask, on a thread.
        self._every_core: ort.InferenceSession | None = None
        self._every_core_threads = options.every_core_threads if device.name == "cpu" else 0
        self._every_core_source = (str(load_from), replace(options, intra_op_threads=options.every_core_threads),
                                   so.graph_optimization_level)
        self._every_core_asked = threading.Lock()
        self._every_core_thread: threading.Thread | None = None
        self.providers: list[str] = list(self.session.get_providers())
        if options.device != AUTO and device.required not in self.providers:
            raise DeviceUnavailable(
                f"--device {device.name}: {device.required} is in this onnxruntime build but did not load for "
                f"{path.name} (session uses {self.providers}); check the libraries that provider needs"
            )
        # Where device-resident chains keep tensors; None when the session fell back to host memory.
        self.value_device = device.value_device if device.required in self.providers else None
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on host arrays; returns every output as a host array."""
        session = self._every_core_session() if on_every_core_now() else self.session
        results = session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, results, strict=True))

    def _every_core_session(self) -> ort.InferenceSession:
        """The every-core session once made, else this graph's own (and the first ask starts making it)."""
        if self._every_core is not None or not self._every_core_threads:
            return self._every_core or self.session
        if self._every_core_asked.acquire(blocking=False):  # never released: one attempt per graph
            self._every_core_thread = threading.Thread(target=self._make_every_core, name="every-core session",
                                                       daemon=True)
            self._every_core_thread.start()
        return self.session

    def _make_every_core(self) -> None:
        path, options, level = self._every_core_source
        try:
            packable = composed.packable_bytes(Path(path))
            if packable > composed.PACKABLE_MAX:
                log.info("lone long runs keep one thread: a session on every core would pack a copy of its weights "
                         "in every worker",
                         extra={"fields": {"graph": self.path.name, "packable_mib": round(packable / 2**20, 1)}})
                return
            so = session_options(options)
            so.graph_optimization_level = level  # as this graph's own session: an optimized copy loads as it is
            self._every_core = ort.InferenceSession(path, so, providers=[CPU])
        except Exception as error:  # noqa: BLE001 - runs keep this graph's own session
            log.warning("every-core session not made; long lone runs keep one thread",
                        extra={"fields": {"graph": self.path.name, "error": str(error)[:200]}})

    def run_on_device(self, feeds: Mapping[str, ort.OrtValue]) -> dict[str, ort.OrtValue]:
        """Run with inputs and outputs bound as CUDA OrtValues (no host copies)."""
        binding = self.session.io_binding()
        for spec in self.inputs:
            binding.bind_ortvalue_input(spec.name, feeds[spec.name])
        kind, index = self.value_device or ("cpu", 0)
        for name in self._output_names:
            binding.bind_output(name, kind, index)
        self.session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.get_outputs(), strict=True))


def _spec(arg: ort.NodeArg) -> TensorSpec:
    """A session input or output as ONNX Runtime declares it (-1 for any symbolic dimension)."""
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, ORT_TYPES.get(arg.type, arg.type), shape)


def chain(
    graphs: Sequence[Graph], feeds: Mapping[str, np.ndarray], keep: Sequence[int] = ()
) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
    """Run ``graphs`` in order, each taking its inputs by name from what came before.

    Returns the last graph's outputs and, for each index in ``keep``, that graph's
    outputs, all as host arrays. On CUDA the tensors between graphs stay on the
    device as OrtValues; only the last outputs and kept ones are copied back.
    """
    device = graphs[0].value_device if graphs else None
    if device is not None and all(graph.value_device == device for graph in graphs):
        kind, index = device

        def to_value(array: np.ndarray) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), kind, index)

        def to_host(value: ort.OrtValue) -> np.ndarray:
            return value.numpy()

        def run(graph: Graph, inputs: dict) -> dict:
            return graph.run_on_device(inputs)
    else:
        def to_value(array: np.ndarray) -> np.ndarray:
            return array

        to_host = to_value

        def run(graph: Graph, inputs: dict) -> dict:
            return graph.run(inputs)

    values = {name: to_value(array) for name, array in feeds.items()}
    kept: dict[int, dict[str, np.ndarray]] = {}
    outputs: dict = {}
    for position, graph in enumerate(graphs):
        outputs = run(graph, {spec.name: values[spec.name] for spec in graph.inputs})
        values.update(outputs)
        if position in keep:
            kept[position] = {name: to_host(value) for name, value in outputs.items()}
    return {name: to_host(value) for name, value in outputs.items()}, kept
