"""The per-tensor request parameters of Triton's extensions, read the same way for both transports.

``classification`` on an output asks for its top classes (served: server/classification.py).
``shared_memory_region`` (with ``shared_memory_byte_size`` and ``_offset``) on an input or output
puts the tensor in a region registered through Triton's shared memory extensions, which this
server does not have: such a request is refused by name. Before, an input in shared memory was
refused as holding no data, and an output in shared memory was answered inline while the client
went on to read its region.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from .classification import MOST_CLASSES, PARAMETER
from .errors import InvalidInput, quoted

SHARED_MEMORY = "shared_memory_region"


def plain(parameters: Mapping[str, Message]) -> dict[str, object]:
    """gRPC's ``map<string, InferParameter>`` as names and Python values (the oneof that is set)."""
    values = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind else None
    return values


def refuse_shared_memory(parameters: Mapping[str, object], tensor: str) -> None:
    """InvalidInput when ``tensor`` ("input 'x'", "output 'y'") is placed in a shared memory region."""
    if SHARED_MEMORY in parameters:
        region = quoted(str(parameters[SHARED_MEMORY]))
        raise InvalidInput(f"{tensor} is in shared memory region {region}, but this server has no shared memory "
                           "extension (system or CUDA): send the tensor in the request and read it from the answer")


def requested_classes(parameters: Mapping[str, object], output: str) -> int | None:
    """The class count ``output``'s parameters ask for (None without ``classification``); InvalidInput for
    anything but an integer from 1 to MOST_CLASSES."""
    if PARAMETER not in parameters:
        return None
    value = parameters[PARAMETER]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MOST_CLASSES:
        raise InvalidInput(f"output {quoted(output)} parameter {PARAMETER!r} expects a class count from 1 to "
                           f"{MOST_CLASSES:,}, got {repr(value)[:40]}")
    return value


def output_requests(outputs: Mapping[str, Mapping[str, object]]) -> dict[str, int]:
    """Each requested output's class count, for those that ask one, by output name; refuses outputs in
    shared memory. ``outputs``: the requested outputs' parameters by name."""
    counts = {}
    for name, values in outputs.items():
        refuse_shared_memory(values, f"output {quoted(name)}")
        count = requested_classes(values, name)
        if count is not None:
            counts[name] = count
    return counts
