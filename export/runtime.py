"""ONNX Runtime sessions for export's own checks and benchmarks (CPU provider).

The session options are chosen by measurement (docs/BENCHMARKS.md, "In-process
chain vs full graph"): with several sessions in one process, ORT's default
intra-op thread *spinning* makes idle pools burn the cores the running session
needs, so a chain of blocks runs several times slower than the full graph. With
spinning off, the chain costs about what the full graph costs. The server keeps
its own copy of this setting (server/ never imports export/).
"""

from __future__ import annotations

import re

import onnxruntime as ort

CPU_PROVIDERS = ["CPUExecutionProvider"]


def session_options(
    intra_op_threads: int = 0, allow_spinning: bool = False, sequential: bool = True
) -> ort.SessionOptions:
    """Session options for running many sessions in one process.

    ``intra_op_threads`` 0 lets ORT use one thread per physical core. Spinning is off
    by default (see the module docstring); ``sequential`` picks ORT's sequential
    executor (CNN graphs have little inter-op parallelism to exploit).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if sequential else ort.ExecutionMode.ORT_PARALLEL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
    options.log_severity_level = 3
    # Kernels log through ONNX Runtime's default logger, not the session's: tf2onnx's Resize printed
    # coloured deprecation warnings through split's table three times.
    ort.set_default_logger_severity(3)
    return options


def quiet_options() -> ort.SessionOptions:
    """:func:`session_options` that log nothing below FATAL: for runs expected to fail (probing a
    graph at another batch size), whose errors are caught and explained in one line."""
    options = session_options()
    options.log_severity_level = 4
    return options


def cpu_session(model: bytes | str, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider for serialized ONNX bytes or a file path."""
    return ort.InferenceSession(model, sess_options=options or session_options(), providers=CPU_PROVIDERS)


def probe_session(model: bytes) -> ort.InferenceSession:
    """A CPU session with graph optimizations off: quick to create, every requested tensor computed as written."""
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, sess_options=options, providers=CPU_PROVIDERS)


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
MAX_REASON = 300


def describe_runtime_error(error: BaseException) -> str:
    """ONNX Runtime's message as one bounded line (its ``[ONNXRuntimeError] : 2 : ...`` prefix dropped)."""
    text = " ".join(str(error).split())
    text = _ORT_PREFIX.sub("", text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
