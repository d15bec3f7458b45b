"""Splitting an ONNX file from elsewhere (``layerserve split``) into a model repository.

Contract of :func:`split_to_repository`: load ``source`` (refusing non-ONNX files and
graphs with several inputs), split it, check the chain on seeded random inputs
(standard normal, ``check_batch`` samples, symbolic dimensions taken as 1 after the
batch), and write ``<out>/1``. No samples, no accuracy: the model is "imported".
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from layerserve.proto.repository_pb2 import ModelManifest, Provenance
from layerserve.proto.tensors import ONNX_ELEM_TYPES, numpy_dtype

from .graph import LoadedModel, SplitError, load_model
from .parity import chain_check
from .repository import write_repository
from .split import split

CHECK_SEED = 0


def random_inputs(model: LoadedModel, batch: int, seed: int = CHECK_SEED) -> np.ndarray:
    """Seeded standard-normal inputs of the graph input's shape with batch ``batch``."""
    value = model.input
    dims = [batch] + [d if isinstance(d, int) else 1 for d in list(value.shape)[1:]]
    dtype = numpy_dtype(ONNX_ELEM_TYPES[int(value.dtype)])
    if dtype.kind != "f":
        raise SplitError(f"input {value.name!r} is {dtype}; the chain check feeds floating-point images")
    return np.random.default_rng(seed).standard_normal(dims).astype(dtype)


def split_to_repository(
    source: Path,
    out: Path,
    name: str | None = None,
    granularity: str = "layer",
    at: list[str] | None = None,
    check_batch: int = 2,
) -> ModelManifest:
    """Split ``source`` and write its repository version ``<out>/1``; SplitError when refused."""
    from .builtin import tool_versions

    model = load_model(source)
    result = split(model, granularity, at)
    report = chain_check(model.proto, result, random_inputs(model, check_batch))
    provenance = Provenance(
        architecture="imported",
        chain_max_abs_diff=report.max_abs_diff,
        tool_versions=tool_versions(),
        created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        source=str(source),
        granularity=result.granularity,
    )
    out = Path(out)
    return write_repository(out.parent, name or out.name, model.proto, result, provenance,
                            description=f"imported from {Path(source).name}")
