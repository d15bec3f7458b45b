"""Tensors in HTTP/REST bodies: the Open Inference Protocol's JSON form and the binary tensor extension.

A request body is one JSON object, optionally followed by binary tensor data: the
``Inference-Header-Content-Length`` header says how many leading bytes are JSON,
and each input sent in binary says its byte count in ``parameters.binary_data_size``
(the chunks follow in input order). That is what ``tritonclient.http`` sends by
default; ``curl`` users send ``data`` arrays. Outputs go back in binary when the
request asks (``parameters.binary_data`` per output, ``binary_data_output`` for
all), as JSON ``data`` otherwise.

Decoding leans on the one codec (``proto/tensors.py``): binary chunks are wrapped
zero-copy by ``decode_raw``, which checks sizes with Python integers first; JSON
arrays are checked against the declared shape before they are cast; an input marked with a
split-computing wire encoding (``parameters.layerserve_encoding``, proto/encodings.py) is decoded
back to FP32 by the codec's ``decode_encoded``, as over gRPC. Every refusal is an InvalidInput or
TensorCodecError naming what was declared and what came.

JSON is read and written with orjson: a batch of 64 digits as JSON ``data`` (1.3 MB)
parses in ~2.6 ms where the standard library takes ~21 ms (docs/server.md). It is
strict JSON, so a request spelling NaN or Infinity is refused; an answer holding
them in JSON ``data`` is written by the standard library, which spells them as
Python's json (and tritonclient.http) reads them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from layerserve.proto import encodings
from layerserve.proto.tensors import (
    BYTES,
    TensorCodecError,
    datatype_of,
    decode_encoded,
    decode_raw,
    element_count,
    format_spec,
    numpy_dtype,
    serialize_bytes,
)

from . import parameters
from .errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"


@dataclass
class InferBody:
    """A decoded inference (or chain) request: inputs by name, the outputs asked for and how to send them."""

    id: str
    inputs: dict[str, np.ndarray]
    # Requested output names in request order; empty: every output.
    outputs: list[str]
    # Per requested output: binary or JSON; ``binary_default`` for outputs not named.
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    # The whole JSON object, for the extension's own fields (a chain's start, stop, keep).
    document: dict[str, Any] = field(default_factory=dict)
    # Outputs asked as their top classes (Triton's classification extension), by name.
    classes: dict[str, int] = field(default_factory=dict)

    def wants_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is default and default is not None:
        return value
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        got = "nothing" if value is None else type(value).__name__
        raise InvalidInput(f"{what} {key!r} expects {_JSON_NAMES.get(names, names)}, got {got}")
    return value


_JSON_NAMES = {"str": "a string", "list": "an array", "dict": "an object", "int": "an integer", "bool": "a boolean"}


def _parameters(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    return _get(obj, "parameters", dict, what, {})


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON object and the binary data after it (``header_length``: the header's value, or None)."""
    view = memoryview(body)
    if header_length is None:
        length = len(body)
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidInput(f"Inference-Header-Content-Length expects a byte count, got {header_length[:40]!r}") from None
        if not 0 <= length <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length expects at most the body's {len(body)} bytes, "
                               f"got {length}")
    try:
        document = orjson.loads(view[:length] if header_length is not None else body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"request body expects a JSON object, got {type(document).__name__}")
    return document, view[length:]


def decode_request(body: bytes, header_length: str | None, quote: Callable[[str], str] = repr) -> InferBody:
    """An inference request body (JSON, optionally followed by binary tensor data) as an InferBody.

    ``quote`` renders client-chosen names in messages (the server bounds their length).
    Raises InvalidInput for a malformed body, TensorCodecError where a tensor's data disagrees with
    its declaration.
    """
    document, binary = split_body(body, header_length)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput(f"request 'id' expects a string, got {type(request_id).__name__}")
    raw_inputs = _get(document, "inputs", list, "request")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"request input {index} expects an object, got {type(tensor).__name__}")
        name = _get(tensor, "name", str, f"input {index}")
        label = f"input {quote(name)}"
        if name in inputs:
            raise TensorCodecError(f"{label} is given twice")
        datatype = _get(tensor, "datatype", str, label)
        shape = _get(tensor, "shape", list, label)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidInput(f"{label} 'shape' expects integers, got {str(shape)[:80]}")
        tensor_parameters = _parameters(tensor, label)
        parameters.refuse_shared_memory(tensor_parameters, label)
        size = tensor_parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"{label} binary_data_size expects a byte count, got {str(size)[:40]}")
            if "data" in tensor:
                raise TensorCodecError(f"{label} carries both binary data and 'data'; send one")
            if offset + size > len(binary):
                raise TensorCodecError(f"{label} declares {size} bytes of binary data, but only "
                                       f"{len(binary) - offset} are left in the body")
            inputs[name] = decode_raw(datatype, shape, binary[offset : offset + size], label)
            offset += size
        else:
            inputs[name] = decode_json(datatype, shape, tensor.get("data"), label)
        if encodings.ENCODING_PARAMETER in tensor_parameters:
            inputs[name] = _decode_encoded(inputs[name], tensor_parameters, label)
    if offset != len(binary):
        raise TensorCodecError(f"request declares {offset} bytes of binary input data, but the body holds "
                               f"{len(binary)} after its JSON header")
    binary_default = bool(_parameters(document, "request").get("binary_data_output", False))
    outputs: list[str] = []
    wants: dict[str, bool] = {}
    asked: dict[str, dict[str, Any]] = {}
    for index, tensor in enumerate(_get(document, "outputs", list, "request", [])):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"request output {index} expects an object, got {type(tensor).__name__}")
        name = _get(tensor, "name", str, f"output {index}")
        outputs.append(name)
        asked[name] = _parameters(tensor, f"output {quote(name)}")
        wants[name] = bool(asked[name].get("binary_data", binary_default))
    return InferBody(request_id, inputs, outputs, wants, binary_default, document, parameters.output_requests(asked))


def _decode_encoded(array: np.ndarray, parameters: Mapping[str, Any], label: str) -> np.ndarray:
    """An input sent in a split-computing wire encoding (proto/encodings.py), back to the FP32 it stands for;
    the parameters are those of gRPC's InferInputTensor, as JSON."""
    encoding = parameters[encodings.ENCODING_PARAMETER]
    if not isinstance(encoding, str):
        raise TensorCodecError(f"{label}: parameter {encodings.ENCODING_PARAMETER} expects a string, "
                               f"got {type(encoding).__name__}")
    scale = parameters.get(encodings.SCALE_PARAMETER)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TensorCodecError(f"{label}: parameter {encodings.SCALE_PARAMETER} expects a number, "
                               f"got {type(scale).__name__}")
    return decode_encoded(array, encoding, None if scale is None else float(scale), label)


def decode_json(datatype: str, shape: list[int], data: Any, what: str) -> np.ndarray:
    """A JSON ``data`` array (flat row-major, or nested) as an array of ``shape``; sizes checked first."""
    dtype = numpy_dtype(datatype)
    count = element_count(shape, what)
    if not isinstance(data, list):
        raise TensorCodecError(f"{what} expects 'data' as an array of {format_spec(datatype, shape)} = {count} "
                               f"elements, or binary_data_size, got {'nothing' if data is None else type(data).__name__}")
    try:
        array = np.array(data)
    except (ValueError, TypeError) as error:
        raise TensorCodecError(f"{what} 'data' is not a regular array of numbers: {str(error)[:120]}") from None
    if array.size != count:
        raise TensorCodecError(f"{what} declares {format_spec(datatype, shape)} = {count} elements, "
                               f"but 'data' holds {array.size}")
    kinds = "b" if dtype.kind == "b" else ("biu" if dtype.kind in "iu" else "biuf")
    if array.size and array.dtype.kind not in kinds:
        expected = {"b": "booleans", "biu": "integers", "biuf": "numbers"}[kinds]
        raise TensorCodecError(f"{what} is {datatype}, so 'data' expects {expected}, got {array.dtype.kind!r} "
                               f"values such as {str(array.flat[0])[:40]!r}")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise TensorCodecError(f"{what} is {datatype} but 'data' holds values outside [{info.min}, {info.max}]")
    try:
        return array.astype(dtype, copy=False).reshape(shape)
    except (ValueError, OverflowError) as error:
        raise TensorCodecError(f"{what} declares {format_spec(datatype, shape)}, which numpy cannot hold: "
                               f"{error}") from None


def encode_tensors(outputs: Mapping[str, np.ndarray], binary: Callable[[str], bool],
                   chunks: list[bytes | memoryview]) -> list[dict[str, Any]]:
    """Each output as the protocol's JSON tensor; binary ones append their bytes to ``chunks`` in order."""
    described = []
    for name, array in outputs.items():
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary(name):
            data = memoryview(serialize_bytes(array)) if datatype == BYTES else np.ascontiguousarray(array).data.cast("B")
            entry["parameters"] = {"binary_data_size": data.nbytes}
            chunks.append(data)
        elif datatype == BYTES:
            entry["data"] = [item.decode("utf-8", "replace") for item in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    return described


def encode_body(document: Mapping[str, Any], chunks: Iterable[bytes | memoryview] = ()) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its content headers: JSON alone, or JSON then binary chunks with
    ``Inference-Header-Content-Length``."""
    try:
        header = orjson.dumps(document)
    except TypeError:
        header = json.dumps(document, separators=(",", ":")).encode()
    if b"null" in header and _has_non_finite(document):  # orjson writes NaN and Infinity as null
        header = json.dumps(document, separators=(",", ":")).encode()
    chunks = list(chunks)
    if not chunks:
        return header, [(b"content-type", JSON_TYPE)]
    return b"".join([header, *chunks]), [(b"content-type", BINARY_TYPE),
                                         (HEADER_LENGTH.encode(), str(len(header)).encode())]


def _has_non_finite(document: Any) -> bool:
    """Whether any float in ``document`` (nested lists and dicts) is NaN or infinite."""
    if isinstance(document, float):
        return document != document or document in (float("inf"), float("-inf"))
    if isinstance(document, dict):
        return any(_has_non_finite(value) for value in document.values())
    if isinstance(document, list):
        return any(_has_non_finite(value) for value in document)
    return False
