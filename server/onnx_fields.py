"""The few fields of ONNX's ``ModelProto`` the server rewrites or reads, without the ``onnx`` package.

The serving install has no ``onnx`` package, and the server edits ONNX Runtime's optimized
copies of its graphs in three ways: pointing identical weights at one place
(server/shared_weights.py), removing layout conversions at the seams between blocks
(server/seams.py) and composing a chain's blocks into one graph (server/composed.py), whose
weights' sizes it also reads (the memory a composed session would pack). This
module builds a message class from a descriptor of just the fields those need, numbered as in
onnx.proto, and writes the results (``save``). Protocol buffers keep every other field as unknown fields and write them back
unchanged, so a graph read and written here loses nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_PACKAGE = "layerserve_onnx_fields"
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_Field = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _Field.LABEL_OPTIONAL, _Field.LABEL_REPEATED
_STRING, _INT32, _INT64, _MESSAGE = _Field.TYPE_STRING, _Field.TYPE_INT32, _Field.TYPE_INT64, _Field.TYPE_MESSAGE

# message name -> (field name, number, type, label, message type name or "")
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "StringStringEntryProto": [("key", 1, _STRING, _OPTIONAL, ""), ("value", 2, _STRING, _OPTIONAL, "")],
    "TensorProto": [("dims", 1, _INT64, _REPEATED, ""), ("data_type", 2, _INT32, _OPTIONAL, ""),
                    ("name", 8, _STRING, _OPTIONAL, ""),
                    ("external_data", 13, _MESSAGE, _REPEATED, "StringStringEntryProto"),
                    ("data_location", 14, _INT32, _OPTIONAL, "")],
    "AttributeProto": [("name", 1, _STRING, _OPTIONAL, ""), ("i", 3, _INT64, _OPTIONAL, ""),
                       ("type", 20, _INT32, _OPTIONAL, "")],
    "NodeProto": [("input", 1, _STRING, _REPEATED, ""), ("output", 2, _STRING, _REPEATED, ""),
                  ("name", 3, _STRING, _OPTIONAL, ""), ("op_type", 4, _STRING, _OPTIONAL, ""),
                  ("attribute", 5, _MESSAGE, _REPEATED, "AttributeProto"),
                  ("domain", 7, _STRING, _OPTIONAL, "")],
    "Dimension": [("dim_value", 1, _INT64, _OPTIONAL, ""), ("dim_param", 2, _STRING, _OPTIONAL, "")],
    "TensorShapeProto": [("dim", 1, _MESSAGE, _REPEATED, "Dimension")],
    "TypeTensor": [("elem_type", 1, _INT32, _OPTIONAL, ""), ("shape", 2, _MESSAGE, _OPTIONAL, "TensorShapeProto")],
    "TypeProto": [("tensor_type", 1, _MESSAGE, _OPTIONAL, "TypeTensor")],
    "ValueInfoProto": [("name", 1, _STRING, _OPTIONAL, ""), ("type", 2, _MESSAGE, _OPTIONAL, "TypeProto")],
    "GraphProto": [("node", 1, _MESSAGE, _REPEATED, "NodeProto"),
                   ("initializer", 5, _MESSAGE, _REPEATED, "TensorProto"),
                   ("input", 11, _MESSAGE, _REPEATED, "ValueInfoProto"),
                   ("output", 12, _MESSAGE, _REPEATED, "ValueInfoProto"),
                   ("value_info", 13, _MESSAGE, _REPEATED, "ValueInfoProto")],
    "OperatorSetIdProto": [("domain", 1, _STRING, _OPTIONAL, ""), ("version", 2, _INT64, _OPTIONAL, "")],
    "ModelProto": [("ir_version", 1, _INT64, _OPTIONAL, ""), ("graph", 7, _MESSAGE, _OPTIONAL, "GraphProto"),
                   ("opset_import", 8, _MESSAGE, _REPEATED, "OperatorSetIdProto")],
}


def _model_class() -> type[message.Message]:
    proto = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2")

    def add(name: str, fields: Iterable[tuple[str, int, int, int, str]]) -> None:
        kind = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            kind.field.add(name=field_name, number=number, type=field_type, label=label,
                           type_name=f".{_PACKAGE}.{type_name}" if type_name else None)

    for name, fields in _MESSAGES.items():
        add(name, fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


Model = _model_class()


def save(model: message.Message, target: Path) -> None:
    """Write ``model`` to ``target`` through a file named with this process's pid, then a rename: the
    workers share these files, and another worker never reads half of one."""
    own = target.with_name(f"{target.name}.{os.getpid()}.partial")
    own.write_bytes(model.SerializeToString())
    os.replace(own, target)
