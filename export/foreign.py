"""Bringing ONNX files from elsewhere into the form splitting needs, losslessly.

Users bring graphs from the ONNX Model Zoo era (IR version 3, initializers listed
as graph inputs, or IR 3 without them, which the checker refuses although ONNX
Runtime runs it), graphs whose tensors ONNX's shape inference cannot type, and
weights stored as external data. What ONNX Runtime runs, splitting should accept:

* :func:`modernize` drops initializers from the graph inputs, raises the IR
  version to at least 4 (where initializers need not be inputs), reads dimensions
  declared as -1 (PaddlePaddle's exporter writes that for "any size") as free, and
  makes weights held in ``Constant`` nodes (PaddlePaddle's exporter again)
  initializers, so they count as parameters and are stored once with the others.
  Nothing about the computation changes.
* :func:`infer_types` runs ONNX's shape inference and, for the tensors it leaves
  untyped, asks ONNX Runtime: the probe graph outputs those tensors, and their
  types and shapes come from running it at two batch sizes (a dimension that
  follows the batch is the batch).

External data is read from the model file's folder (export/model_file.py); the repository written keeps
one weights file that the full graph and the blocks share (export/weights.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from layerserve.proto.tensors import ONNX_ELEM_TYPES, example_values, numpy_dtype

from .errors import GraphRefused, SplitError
from .stats import WEIGHT_TYPES

MIN_IR_VERSION = 4
# ONNX Runtime runs the default domain from opset 7 on.
MIN_OPSET = 7
BATCH_DIM = "batch"


def modernize(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy with initializers removed from the inputs, IR version >= 4, negative dimensions free and
    weights in ``Constant`` nodes made initializers; notes say what changed."""
    notes: list[str] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise SplitError(
            f"the graph uses opset {opset}; ONNX Runtime runs opset {MIN_OPSET} and later: convert it first with "
            f"onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    proto = _copy(proto)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    listed = [value for value in proto.graph.input if value.name in initializers]
    if listed:
        keep = [value for value in proto.graph.input if value.name not in initializers]
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        notes.append(f"{len(listed)} initializers removed from the graph inputs")
    if proto.ir_version < MIN_IR_VERSION:
        notes.append(f"IR version {proto.ir_version} raised to {MIN_IR_VERSION}")
        proto.ir_version = MIN_IR_VERSION
    # Shapes the file declares for its inner tensors are worked out again (infer_types): jax2onnx 0.17 declares
    # NHWC shapes for tensors its Flax ResNet computes in NCHW, which ONNX Runtime ignores and a block built
    # with them cannot run ("Incompatible dimensions" at the residual Add).
    del proto.graph.value_info[:]
    freed = _free_negative_dims(proto.graph)
    if freed:
        notes.append(f"{freed} dimension{'s' if freed != 1 else ''} declared -1 read as free")
    lifted = _lift_constant_weights(proto.graph)
    if lifted:
        notes.append(f"{lifted} weight tensor{'s' if lifted != 1 else ''} held in Constant nodes made "
                     f"initializer{'s' if lifted != 1 else ''}")
    return proto, notes


def _free_negative_dims(graph: onnx.GraphProto) -> int:
    """Clear every dimension declared as a negative number (ONNX's are >= 0; exporters that write -1 mean
    "any", as ONNX Runtime reads it); how many there were. Left in place, -1 would be taken for a size."""
    freed = 0
    for info in (*graph.input, *graph.output, *graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.ClearField("dim_value")
                freed += 1
    return freed


# A Constant node's tensor is a weight when it is floating point or 8-bit (as export/stats.py counts
# initializers) and holds at least this many elements: shapes, axes and scalars stay nodes.
LIFT_MIN_ELEMENTS = 16


def _lift_constant_weights(graph: onnx.GraphProto) -> int:
    """Make each weight a ``Constant`` node holds an initializer of the same name; how many were made.

    Weights as initializers are what the rest of the export reads: parameter counts, the one weights
    file the full graph and the blocks share, the server's shared weights."""
    outputs = {value.name for value in graph.output}
    lifted, kept = [], []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None
                and len(node.output) == 1 and node.output[0] not in outputs and value.data_type in WEIGHT_TYPES
                and int(np.prod(value.dims)) >= LIFT_MIN_ELEMENTS):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            lifted.append(tensor)
        else:
            kept.append(node)
    if lifted:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(lifted)
    return len(lifted)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def shape_inferred(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation; the graph unchanged when inference itself fails."""
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - inference errors on graphs ONNX Runtime still runs
        return proto


def _typed(info: onnx.ValueInfoProto) -> bool:
    """Whether ``info`` gives the element type and every dimension: the first may be symbolic (the batch),
    the others must be numbers. ONNX's inference names what it cannot work out (``unk__0`` for the
    width of ``x.view(images.size(0), -1)``), which would leave a cut's bytes per sample unknown."""
    tensor = info.type.tensor_type
    dims = list(tensor.shape.dim)
    return (
        info.type.HasField("tensor_type")
        and tensor.elem_type != 0
        and tensor.HasField("shape")
        and all(d.HasField("dim_value") or d.HasField("dim_param") for d in dims[:1])
        and all(d.HasField("dim_value") for d in dims[1:])
    )


def untyped_tensors(proto: onnx.ModelProto) -> list[str]:
    """Node outputs with no complete type and shape after inference (graph outputs included; :func:`_typed`)."""
    known = {info.name for info in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input] if _typed(info)}
    return [name for node in proto.graph.node for name in node.output if name and name not in known]


def infer_types(proto: onnx.ModelProto, batch_sizes: tuple[int, ...]) -> onnx.ModelProto:
    """``proto`` with every node output typed: ONNX's inference first, ONNX Runtime runs for the rest.

    ``batch_sizes``: the batch sizes the graph accepts (two for a dynamic batch, one for
    a fixed one). A dimension that differs between the runs is the symbolic ``batch``.
    """
    proto = shape_inferred(proto)
    missing = untyped_tensors(proto)
    if not missing:
        return proto
    runs = _probes(proto, missing, batch_sizes)
    infos = {info.name: index for index, info in enumerate(proto.graph.value_info)}
    outputs = {info.name: info for info in proto.graph.output}
    for name in missing:
        arrays = [run[name] for run in runs]
        dims: list[int | str] = []
        for axis, size in enumerate(arrays[0].shape):
            # A size that follows the batch is the batch wherever it sits (a Transpose can move it past
            # the first axis): writing one probe's size there would fix the batch for ONNX Runtime's own
            # inference downstream, and a graph with a free batch would declare outputs of one row.
            varies = any(a.ndim != arrays[0].ndim or a.shape[axis] != size for a in arrays[1:])
            dims.append(BATCH_DIM if varies else size)
        elem = helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
        info = helper.make_tensor_value_info(name, elem, dims)
        if name in outputs:
            outputs[name].CopyFrom(info)
        elif name in infos:
            proto.graph.value_info[infos[name]].CopyFrom(info)
        else:
            proto.graph.value_info.append(info)
    return proto


# Integer inputs that hold pictures (an end-to-end export normalizes them inside the graph); INT32 and
# INT64 inputs hold indices (token ids, class ids), which no CNN here takes.
PIXEL_DATATYPES = ("UINT8", "INT8", "UINT16")


def probe_input(proto: onnx.ModelProto, batch: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """The graph input's name and seeded data with ``batch`` rows (other free dimensions 1): standard
    normal for a floating-point input, 8-bit pixel values for an integer one (proto.tensors.example_values)."""
    value = proto.graph.input[0]
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
    if not dims:
        raise SplitError(f"input {value.name!r} is a scalar; splitting needs a batched image input [N,C,H,W]")
    dims[0] = batch
    datatype = ONNX_ELEM_TYPES.get(tensor.elem_type, str(tensor.elem_type))
    dtype = numpy_dtype(datatype) if datatype in ONNX_ELEM_TYPES.values() else None
    if dtype is None or (dtype.kind != "f" and datatype not in PIXEL_DATATYPES):
        raise SplitError(
            f"input {value.name!r} is {datatype}; layerserve splits models whose one input is an image: "
            f"floating point, or {', '.join(PIXEL_DATATYPES)} pixels"
        )
    return value.name, example_values(datatype, dims, np.random.default_rng(seed))


def run_probe(
    proto: onnx.ModelProto, batch: int, outputs: list[str] | None = None, optimized: bool = True
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run ``proto`` on ONNX Runtime's CPU provider on :func:`probe_input` rows; returns (rows, outputs).

    ``outputs``: names to fetch (default: the graph outputs); ``optimized`` False skips graph
    optimizations (quicker to create, tensors computed as written). SplitError, one line, when ONNX
    Runtime cannot load or run the graph.
    """
    return run_probes(proto, (batch,), outputs, optimized)[0]


def run_probes(
    proto: onnx.ModelProto, batches: Sequence[int], outputs: list[str] | None = None, optimized: bool = True
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """:func:`run_probe` at each of ``batches``, with one session."""
    from .runtime import cpu_session, describe_runtime_error, probe_session

    try:
        serialized = proto.SerializeToString()
        session = cpu_session(serialized) if optimized else probe_session(serialized)
        runs = []
        for batch in batches:
            name, rows = probe_input(proto, batch)
            runs.append((rows, session.run(outputs, {name: rows})))
        return runs
    except SplitError:
        raise
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types
        custom = custom_operators(proto)
        if custom:
            raise GraphRefused(f"it uses {custom}, which need a custom-op library ONNX Runtime has not loaded "
                               "(com.microsoft.extensions is onnxruntime-extensions', added by its pre/post-processing "
                               "tools); split the model without them (before add_pre_post_processing_to_model)") from None
        raise GraphRefused(describe_runtime_error(error)) from None


# Domains ONNX Runtime's CPU build runs without a custom-op library.
BUILT_IN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                              "ai.onnx.preview.training", "com.ms.internal.nhwc"})


def custom_operators(proto: onnx.ModelProto) -> str:
    """``operators of domain 'D' (Op, ...)`` for the graph's nodes outside ONNX Runtime's built-in domains
    and the model's own functions, or ""."""
    functions = {(function.domain, function.name) for function in proto.functions}
    found: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.domain not in BUILT_IN_DOMAINS and (node.domain, node.op_type) not in functions:
            ops = found.setdefault(node.domain, [])
            if node.op_type not in ops:
                ops.append(node.op_type)
    return "; ".join(f"operators of domain {domain!r} ({', '.join(ops[:4])}{', ...' if len(ops) > 4 else ''})"
                     for domain, ops in found.items())


def _probes(proto: onnx.ModelProto, names: list[str], batches: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """The tensors ``names`` at each of ``batches`` (one session; graph outputs added untyped for them)."""
    probe = _copy(proto)
    present = {info.name for info in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.add().name = name  # untyped: ONNX Runtime types it
    return [dict(zip(names, values, strict=True)) for _, values in run_probes(probe, batches, names, optimized=False)]
