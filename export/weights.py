"""Every weight once on disk: one data file that the full graph and every block read.

A split repository holds the full graph and its blocks, whose weights are the same
tensors: written inline, each weight would be on disk twice (a ResNet-50's 102 MB
model becomes a 204 MB repository). :func:`share_weights` moves every initializer of
``min_bytes`` or more into one file, once (identical tensors are stored once, whoever
uses them), and points each graph's tensor at it as ONNX external data. Offsets are
aligned to 4096 bytes, so ONNX Runtime can map the file instead of copying it.

ONNX resolves external data relative to the graph's folder and refuses ``..``, so
the file lives beside the blocks (``blocks/weights.bin``) and ``model.onnx`` reads it
through that path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import onnx

ALIGNMENT = 4096
# Smaller tensors (biases of narrow layers, shape constants) stay inline: a data-file entry would cost more.
MIN_BYTES = 1024


def _key(tensor: onnx.TensorProto, raw: bytes) -> bytes:
    header = f"{tensor.data_type}:{','.join(map(str, tensor.dims))}:".encode()
    return hashlib.sha256(header + raw).digest()


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's little-endian bytes, whichever field holds them."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()


def share_weights(graphs: Iterable[tuple[onnx.ModelProto, Path]], data_file: Path, min_bytes: int = MIN_BYTES) -> int:
    """Write the weights of ``graphs`` (each with the path it will be saved at) once into ``data_file``.

    Each graph's initializers of ``min_bytes`` or more become external data pointing into
    ``data_file`` (relative to the graph's folder, which must contain it). Returns the bytes
    written. Graphs are changed in place; the order of ``graphs`` fixes the file's layout, so the
    same graphs give the same bytes.
    """
    data_file = Path(data_file)
    placed: dict[bytes, tuple[int, int]] = {}
    with open(data_file, "wb") as out:
        for proto, path in graphs:
            location = data_file.resolve().relative_to(Path(path).resolve().parent).as_posix()
            for tensor in proto.graph.initializer:
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    continue
                raw = _raw_bytes(tensor)
                if len(raw) < min_bytes:
                    continue
                key = _key(tensor, raw)
                if key not in placed:
                    offset = -out.tell() % ALIGNMENT + out.tell()
                    out.write(b"\0" * (offset - out.tell()))
                    out.write(raw)
                    placed[key] = (offset, len(raw))
                offset, length = placed[key]
                _point_at(tensor, location, offset, length)
        return out.tell()


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
