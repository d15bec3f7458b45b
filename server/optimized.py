"""ONNX Runtime's optimized copies of the served graphs: made once per server, weights mapped, not copied.

A session that optimizes its graph as it loads (layout changes, fusions, constant
folding) writes the weights it transforms into private memory: every worker process
then holds its own copy of every weight, twice when the full graph and the blocks
are both served. Instead, the server asks ONNX Runtime once for the optimized graph
(``optimized_model_filepath``) with its weights in an external data file, and every
session loads that copy with optimizations off: ONNX Runtime maps external data
into memory, so the workers' sessions share one copy of the pages (measured in
docs/BENCHMARKS.md, "Memory"). The copies are specific to this machine's CPU (the
NCHWc layout depends on its vector width), so they live in a folder made per
server run and removed with it, never beside the models.

For devices other than the CPU the sessions copy weights to the device anyway; the
copies are not made there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from . import shared_weights

log = logging.getLogger(__name__)

# Initializers smaller than this stay inside the optimized graph (shape constants, small biases).
EXTERNAL_MIN_BYTES = 1024


def copy_path(folder: Path, source: Path) -> Path:
    """Where the optimized copy of ``source`` lives in ``folder``: named by the file's path, size and time."""
    stat = Path(source).stat()
    key = f"{Path(source).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"


def optimized_copy(folder: Path, source: Path, options: Callable[[], ort.SessionOptions]) -> Path:
    """The optimized copy of ``source`` in ``folder``, made now if no process has made it yet.

    ``options`` builds the session options the copy is optimized with (the server's, so the same
    optimizations apply). A process that does not find the shared copy writes its own under a
    name with its pid (never a half-written file under the shared name).
    """
    target = copy_path(folder, source)
    if target.exists():
        return target
    own = target.with_name(f"{target.stem}.{os.getpid()}.onnx")
    so = options()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(own)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", own.stem + ".weights")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                str(EXTERNAL_MIN_BYTES))
    ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    return own


def prepare(folder: Path, sources: list[Path], options: Callable[[], ort.SessionOptions]) -> list[str]:
    """Make the shared optimized copy of every graph in ``sources`` (before any session loads them),
    then point identical weights of all copies at one place (server/shared_weights.py: a block and the
    full graph hold the same transformed convolutions); returns one line per graph that could not be
    optimized (the session loading it reports why)."""
    failed, made_now = [], []
    for source in sources:
        target = copy_path(folder, source)
        if target.exists():
            continue
        try:
            made = optimized_copy(folder, source, options)
        except Exception as error:  # noqa: BLE001 - the worker loading this graph gives the reason
            failed.append(f"{source.name}: {type(error).__name__}")
            continue
        # Publish under the shared name: the data file keeps its own name, referenced from the graph.
        os.replace(made, target)
        made_now.append(target)
    shared = shared_weights.share_identical(made_now)
    log.debug("optimized copies made", extra={"fields": {"graphs": len(made_now), "bytes_shared": shared}})
    return failed
