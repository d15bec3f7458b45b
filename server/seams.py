"""Seams between blocks in ONNX Runtime's own layout: chains without a layout change at every seam.

On the CPU, ONNX Runtime runs convolutions and pooling in a channel-blocked layout (NCHWc)
and converts at the edges of a graph: an optimized copy (server/optimized.py) of a block
starts with ``ReorderInput`` (NCHW to NCHWc) and ends with ``ReorderOutput`` (back). The full
graph converts once at each end; a chain of N blocks converts 2(N-1) times more, and at
batch 64 those conversions were most of what a digits chain cost over the full graph
(docs/BENCHMARKS.md, "Native seams").

Where block k ends in ``ReorderOutput`` and block k+1 begins with ``ReorderInput`` of the
same tensor, the seam is *native*: a variant of each optimized copy without that node hands
the blocked tensor straight on, under the seam tensor's own name, as the full graph does
inside. The variants are written next to the copies and read the same weights file, so
they add sessions, not weights. The block endpoints and a chain's own ends and kept
outputs still use the plain copy (NCHW in and out); server/chains.py picks per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import message

from .onnx_fields import Model, save

_NCHWC = "com.microsoft.nchwc"


@dataclass(frozen=True)
class Sides:
    """The tensor names at which a graph converts layout: ``input`` is consumed only by a
    ReorderInput, ``output`` is produced by a ReorderOutput; None where the graph does not."""

    input: str | None
    output: str | None


def _attribute(node: message.Message, name: str, default: int = 0) -> int:
    return next((int(attribute.i) for attribute in node.attribute if attribute.name == name), default)


def _is_reorder(node: message.Message, op_type: str) -> bool:
    """A layout change between plain NCHW and NCHWc (not the channels-last form, which differs in shape)."""
    return node.op_type == op_type and node.domain == _NCHWC and _attribute(node, "channels_last") == 0


def _sides(model: message.Message) -> Sides:
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in initializers]
    outputs = [value.name for value in graph.output]
    native_in = native_out = None
    if len(inputs) == 1 and inputs[0] not in outputs:
        consumers = [node for node in graph.node if inputs[0] in node.input]
        if len(consumers) == 1 and _is_reorder(consumers[0], "ReorderInput"):
            native_in = inputs[0]
    if len(outputs) == 1 and outputs[0] not in inputs:
        producers = [node for node in graph.node if outputs[0] in node.output]
        consumed = any(outputs[0] in node.input for node in graph.node)
        if len(producers) == 1 and not consumed and _is_reorder(producers[0], "ReorderOutput"):
            native_out = outputs[0]
    return Sides(native_in, native_out)


def sides(copy: Path) -> Sides:
    """Where the optimized graph ``copy`` converts layout at its single input and output."""
    return _sides(Model.FromString(Path(copy).read_bytes()))


def _rename(graph: message.Message, old: str, new: str) -> None:
    for node in graph.node:
        for names in (node.input, node.output):
            for position, name in enumerate(names):
                if name == old:
                    names[position] = new


def _drop(graph: message.Message, node: message.Message, inner: str, outer: str, channels: int | None) -> None:
    """Remove the reorder ``node`` and let the blocked tensor ``inner`` take the seam's name ``outer``.

    ``channels``: the blocked tensor's channel count (padded to the vector width), which the seam is
    then declared with, its other dimensions kept. ONNX Runtime plans a graph's shapes from its
    declared input: a ResNet-50 stage whose input had no shape ran 20 % slower. None leaves the
    seam without a shape.
    """
    graph.node.remove(node)
    _rename(graph, inner, outer)
    for value in [value for value in graph.value_info if value.name == inner]:
        graph.value_info.remove(value)
    for value in [*graph.input, *graph.output]:
        if value.name != outer:
            continue
        dims = value.type.tensor_type.shape.dim
        if channels is not None and len(dims) >= 2:
            dims[1].Clear()
            dims[1].dim_value = channels
        else:
            value.type.tensor_type.ClearField("shape")


def variant_path(copy: Path, native_in: bool, native_out: bool, shaped: bool = True) -> Path:
    """Where the variant of ``copy`` with the given native sides lives (beside it: same weights file)."""
    suffix = {(True, False): "in", (False, True): "out", (True, True): "inout"}[(native_in, native_out)]
    return Path(copy).with_name(f"{Path(copy).stem}.native-{suffix}{'' if shaped else '.unshaped'}.onnx")


def variant(copy: Path, native_in: bool, native_out: bool, channels: Mapping[str, int] | None = None) -> Path:
    """The variant of the optimized graph ``copy`` that takes its input (``native_in``) and/or gives
    its output (``native_out``) in NCHWc, made now if no process has made it yet.

    ``channels`` maps a seam tensor to its blocked channel count (server/chains.py learns them by
    running the variants made without it, which declare no shape at the seams). Raises ValueError
    when the copy has no such layout change on a requested side. Written under a name with this
    process's pid, then renamed: another worker never reads half a file.
    """
    target = variant_path(copy, native_in, native_out, shaped=channels is not None)
    if target.exists():
        return target
    channels = channels or {}
    model = Model.FromString(Path(copy).read_bytes())
    found = _sides(model)
    graph = model.graph
    if native_in:
        if found.input is None:
            raise ValueError(f"{Path(copy).name} does not begin with a ReorderInput of its input")
        node = next(node for node in graph.node if found.input in node.input)
        _drop(graph, node, node.output[0], found.input, channels.get(found.input))
    if native_out:
        if found.output is None:
            raise ValueError(f"{Path(copy).name} does not end with a ReorderOutput of its output")
        node = next(node for node in graph.node if found.output in node.output)
        _drop(graph, node, node.input[0], found.output, channels.get(found.output))
    save(model, target)
    return target
