"""One copy of each weight across the optimized graphs: identical external tensors point at one place.

ONNX Runtime optimizes the full graph and each block separately (server/optimized.py), and
writes each copy's weights to a file of its own. A block holds the same convolutions as the
full graph, transformed the same way, so the same bytes sit in two files, and every worker
maps both: a ResNet-50's weights counted twice. After the copies are made, every external
initializer whose bytes already exist in an earlier copy is pointed at those bytes instead
(its ``location``/``offset``/``length``), so the sessions map one file region.

The serving install has no ``onnx`` package, so the graph is read through a descriptor of the
few ``ModelProto`` fields this needs (ONNX's own field numbers). Protocol buffers keep every
other field as unknown fields and write them back unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_PACKAGE = "layerserve_onnx_weights"
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _model_class() -> type[message.Message]:
    """``ModelProto`` reduced to graph.initializer[].{name, external_data, data_location} (onnx.proto numbers)."""
    Field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2")

    def add(name: str, fields: Iterable[tuple[str, int, int, int, str]]) -> None:
        kind = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            kind.field.add(name=field_name, number=number, type=field_type, label=label,
                           type_name=f".{_PACKAGE}.{type_name}" if type_name else None)

    optional, repeated = Field.LABEL_OPTIONAL, Field.LABEL_REPEATED
    add("StringStringEntryProto", [("key", 1, Field.TYPE_STRING, optional, ""),
                                   ("value", 2, Field.TYPE_STRING, optional, "")])
    add("TensorProto", [("name", 8, Field.TYPE_STRING, optional, ""),
                        ("external_data", 13, Field.TYPE_MESSAGE, repeated, "StringStringEntryProto"),
                        ("data_location", 14, Field.TYPE_INT32, optional, "")])
    add("GraphProto", [("initializer", 5, Field.TYPE_MESSAGE, repeated, "TensorProto")])
    add("ModelProto", [("graph", 7, Field.TYPE_MESSAGE, optional, "GraphProto")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


_Model = _model_class()


def share_identical(graphs: list[Path]) -> int:
    """Point each external initializer of ``graphs`` (ONNX files in one folder, earlier ones first) whose
    bytes an earlier initializer already holds at that earlier region; returns the bytes no longer mapped
    twice. A graph is rewritten through a temporary file and an atomic rename."""
    first_place: dict[tuple[int, bytes], tuple[str, int]] = {}
    shared = 0
    for graph in graphs:
        model = _Model.FromString(graph.read_bytes())
        changed = False
        for tensor in model.graph.initializer:
            entries = {entry.key: entry for entry in tensor.external_data}
            if tensor.data_location != _EXTERNAL or not {"location", "length"} <= entries.keys():
                continue
            location = entries["location"].value
            offset = int(entries["offset"].value) if "offset" in entries else 0
            length = int(entries["length"].value)
            with open(graph.parent / location, "rb") as data:
                data.seek(offset)
                key = (length, hashlib.sha256(data.read(length)).digest())
            place = first_place.setdefault(key, (location, offset))
            if place == (location, offset):
                continue
            entries["location"].value = place[0]
            if "offset" in entries:
                entries["offset"].value = str(place[1])
            else:
                tensor.external_data.add(key="offset", value=str(place[1]))
            changed = True
            shared += length
        if changed:
            partial = graph.with_name(f"{graph.name}.{os.getpid()}.partial")
            partial.write_bytes(model.SerializeToString())
            os.replace(partial, graph)
    return shared
