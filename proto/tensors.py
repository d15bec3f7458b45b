"""Tensors on the wire: the one datatype table and the numpy <-> protocol codec.

Every other module asks this one what ``FP32`` means; nothing else spells a
datatype string. Decoding validates sizes with Python integers *before* touching
the payload, so a request that declares a huge shape is refused without
allocating anything of that size; raw contents are wrapped with
``np.frombuffer`` (zero-copy, read-only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import encodings
from . import grpc_service_pb2 as pb

# Open Inference Protocol datatype -> numpy dtype (little-endian, as the wire is).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_NUMPY: dict[np.dtype, str] = {dtype: name for name, dtype in DATATYPES.items()}

# Which InferTensorContents field carries each datatype when typed contents are used.
# FP16 has none: the protocol sends it raw only.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# ONNX Runtime's type strings ("tensor(float)") -> protocol datatypes.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}

# ONNX TensorProto element types (onnx.TensorProto.FLOAT == 1, ...) -> protocol datatypes.
# Literal numbers: serving never imports onnx.
ONNX_ELEM_TYPES: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
}


class TensorCodecError(ValueError):
    """A tensor's declaration and its payload disagree (a client mistake)."""


# numpy's limit on dimensions; a deeper declared shape is a client mistake, not a crash.
MAX_RANK = 64


def datatype_name(dtype: np.dtype | type) -> str:
    """The protocol datatype of ``dtype``, or numpy's own name when it has none (for messages)."""
    try:
        return datatype_of(dtype)
    except TensorCodecError:
        return str(np.dtype(dtype))


def describe(array: np.ndarray) -> str:
    """``FP32 [1,1,32,32]`` for an array: what came, in the form every message uses."""
    return format_spec(datatype_name(array.dtype), array.shape)


# Strings (Triton's classification answers, server/classification.py): numpy object arrays of bytes, sent
# as each element's length (4 bytes, little-endian) then its bytes, raw or in binary REST; JSON lists them.
BYTES = "BYTES"


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw contents: each element (bytes or str) as its 4-byte little-endian length, then it."""
    parts = []
    for item in array.ravel():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.extend((len(data).to_bytes(4, "little"), data))
    return b"".join(parts)


def datatype_of(dtype: np.dtype | type) -> str:
    """The protocol datatype string for a numpy dtype (object arrays are BYTES); TensorCodecError if it has none."""
    if np.dtype(dtype) == np.dtype(object):
        return BYTES
    key = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _BY_NUMPY[key]
    except KeyError:
        raise TensorCodecError(f"numpy dtype {np.dtype(dtype)} has no Open Inference Protocol datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a protocol datatype string; TensorCodecError for unknown ones."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        known = ", ".join(DATATYPES)
        raise TensorCodecError(f"unsupported datatype {datatype!r} (supported: {known})") from None


def pixel_offset(datatype: str) -> float | None:
    """What a picture's 0-255 values are shifted by for an integer image input of ``datatype`` (a graph that
    normalises pixels itself): 0, or -128 for INT8 (a full-integer TFLite model's input quantization, scale
    1/255 and zero point -128). None for floating point, which takes the model's mean and std instead."""
    dtype = numpy_dtype(datatype)
    if dtype.kind not in "iu":
        return None
    return -128.0 if dtype.kind == "i" and dtype.itemsize == 1 else 0.0


def example_values(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Seeded values a tensor of ``datatype`` plausibly holds, for probes and profiles: standard normal
    for floating point, 8-bit pixel values for integers (0-255; -128-127 for INT8). TensorCodecError
    for other types (BOOL, BYTES), which no image holds."""
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.standard_normal(tuple(shape)).astype(dtype)
    if dtype.kind not in "iu":
        raise TensorCodecError(f"no example values for datatype {datatype}: an image is numbers")
    low, high = (-128, 128) if dtype == np.int8 else (0, 256)
    return rng.integers(low, high, tuple(shape)).astype(dtype)


def format_spec(datatype: str, shape: Sequence[int]) -> str:
    """``FP32 [-1,128,2,2]``: how tensors are named in every message we write."""
    return f"{datatype} [{','.join(str(int(d)) for d in shape)}]"


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or gives: name, protocol datatype, shape (-1 for the batch or any free dimension).

    The value type the server validates against and the client reads metadata into;
    ``str()`` is the form every message uses (``FP32 [-1,128,2,2]``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return format_spec(self.datatype, self.shape)

    @classmethod
    def from_proto(cls, message: object) -> TensorSpec:
        """From any message with ``name``, ``datatype`` and ``shape`` (the manifest's TensorSpec,
        ModelMetadataResponse.TensorMetadata)."""
        return cls(message.name, message.datatype, tuple(int(d) for d in message.shape))

    def row_bytes(self) -> int | None:
        """Bytes of one row (every dimension after the first); None when one of them is free (-1)."""
        if any(d < 0 for d in self.shape[1:]):
            return None
        return math.prod(self.shape[1:]) * numpy_dtype(self.datatype).itemsize

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether a concrete ``shape`` fits this spec (same rank, fixed dimensions equal)."""
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape, strict=True)
        )


def element_count(shape: Sequence[int], what: str = "tensor") -> int:
    """Number of elements of a concrete shape, refusing negative dimensions and ranks over MAX_RANK."""
    if len(shape) > MAX_RANK:
        raise TensorCodecError(f"{what} has rank {len(shape)}; at most {MAX_RANK} dimensions are supported")
    for dim in shape:
        if dim < 0:
            raise TensorCodecError(f"{what} has a negative dimension in shape {list(shape)}")
    return math.prod(int(d) for d in shape)


def decode_raw(datatype: str, shape: Sequence[int], raw: bytes, what: str = "tensor") -> np.ndarray:
    """View raw little-endian bytes as an array of ``shape`` (zero-copy, read-only).

    Raises TensorCodecError when the byte length disagrees with shape x itemsize;
    the check uses Python integers, so a huge declared shape allocates nothing.
    """
    dtype = numpy_dtype(datatype)
    count = element_count(shape, what)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorCodecError(
            f"{what} declares {format_spec(datatype, shape)} = {expected} bytes, "
            f"but its raw contents hold {len(raw)} bytes"
        )
    return _reshape(np.frombuffer(raw, dtype=dtype), shape, datatype, what)


def _reshape(array: np.ndarray, shape: Sequence[int], datatype: str, what: str) -> np.ndarray:
    # Zero elements can still declare dimensions numpy refuses (a product past its index range).
    try:
        return array.reshape(tuple(int(d) for d in shape))
    except ValueError as error:
        raise TensorCodecError(f"{what} declares {format_spec(datatype, shape)}, which numpy cannot hold: {error}") from None


def decode_contents(
    datatype: str, shape: Sequence[int], contents: pb.InferTensorContents, what: str = "tensor"
) -> np.ndarray:
    """Build an array from typed contents, checking the element count first."""
    dtype = numpy_dtype(datatype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorCodecError(f"{what}: datatype {datatype} can only be sent as raw contents")
    count = element_count(shape, what)
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorCodecError(
            f"{what} declares {format_spec(datatype, shape)} = {count} elements, "
            f"but {field} holds {len(values)}"
        )
    for other in CONTENTS_FIELD.values():
        if other != field and len(getattr(contents, other)) > 0:
            raise TensorCodecError(f"{what} is {datatype} but carries {other}; expected {field}")
    try:
        array = np.asarray(values, dtype=dtype)
    except OverflowError:
        info = np.iinfo(dtype)
        raise TensorCodecError(
            f"{what} is {datatype} but {field} holds values outside [{info.min}, {info.max}]"
        ) from None
    return _reshape(array, shape, datatype, what)


def decode_input(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, what: str | None = None
) -> np.ndarray:
    """Decode one request input, from its raw contents when given, else its typed contents."""
    label = what or f"input {tensor.name!r}"
    if raw is not None:
        if tensor.HasField("contents") and tensor.contents.ByteSize() > 0:
            raise TensorCodecError(f"{label} carries both raw and typed contents; send one")
        array = decode_raw(tensor.datatype, tensor.shape, raw, label)
    else:
        array = decode_contents(tensor.datatype, tensor.shape, tensor.contents, label)
    if encodings.ENCODING_PARAMETER in tensor.parameters:
        return _decode_encoded(tensor, array, label)
    return array


def _parameter(tensor: pb.ModelInferRequest.InferInputTensor, key: str, kind: str, label: str) -> object:
    parameter = tensor.parameters[key]
    if parameter.WhichOneof("parameter_choice") != kind:
        got = parameter.WhichOneof("parameter_choice") or "nothing"
        raise TensorCodecError(f"{label}: parameter {key} expects a {kind}, got {got}")
    return getattr(parameter, kind)


def _decode_encoded(tensor: pb.ModelInferRequest.InferInputTensor, array: np.ndarray, label: str) -> np.ndarray:
    """The FP32 tensor an encoded gRPC input stands for (proto/encodings.py)."""
    name = str(_parameter(tensor, encodings.ENCODING_PARAMETER, "string_param", label))
    scale = None
    if encodings.SCALE_PARAMETER in tensor.parameters:
        scale = float(_parameter(tensor, encodings.SCALE_PARAMETER, "double_param", label))
    return decode_encoded(array, name, scale, label)


def decode_encoded(array: np.ndarray, encoding: str, scale: float | None, label: str) -> np.ndarray:
    """The FP32 tensor an encoded input stands for, whichever transport carried its parameters: the one
    place the server decodes one (TensorCodecError when the payload does not fit its encoding)."""
    try:
        return encodings.decode(array, encoding, scale)
    except encodings.EncodingError as error:
        raise TensorCodecError(f"{label}: {error}") from None


def decode_output(response: pb.ModelInferResponse, index: int) -> np.ndarray:
    """Decode output ``index`` of a response, raw or typed."""
    tensor = response.outputs[index]
    what = f"output {tensor.name!r}"
    if len(response.raw_output_contents) > index:
        return decode_raw(tensor.datatype, tensor.shape, response.raw_output_contents[index], what)
    return decode_contents(tensor.datatype, tensor.shape, tensor.contents, what)


def outputs_by_name(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response, decoded, keyed by tensor name (in response order)."""
    return {tensor.name: decode_output(response, i) for i, tensor in enumerate(response.outputs)}


def add_raw_input(request: pb.ModelInferRequest, name: str, array: np.ndarray, encoding: str = "fp32") -> None:
    """Append ``array`` to a request as a raw input (the fast path).

    ``encoding`` ``fp16`` or ``int8`` sends an FP32 ``array`` in fewer bytes, marked with the
    layerserve parameters the server decodes (proto/encodings.py); EncodingError when it cannot.
    """
    scale = None
    if encoding != "fp32":
        array, scale = encodings.encode(array, encoding)
    array = np.ascontiguousarray(array)
    tensor = request.inputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
    if encoding != "fp32":
        tensor.parameters[encodings.ENCODING_PARAMETER].string_param = encoding
    if scale is not None:
        tensor.parameters[encodings.SCALE_PARAMETER].double_param = scale
    request.raw_input_contents.append(array.tobytes())


def add_typed_input(request: pb.ModelInferRequest, name: str, array: np.ndarray) -> None:
    """Append ``array`` as typed contents (slower; for clients that cannot send raw bytes)."""
    datatype = datatype_of(array.dtype)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise TensorCodecError(f"datatype {datatype} can only be sent as raw contents")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    getattr(tensor.contents, field).extend(array.ravel().tolist())


def add_raw_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Append ``array`` to a response as a raw output."""
    array = np.ascontiguousarray(array)
    datatype = datatype_of(array.dtype)
    response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    response.raw_output_contents.append(serialize_bytes(array) if datatype == BYTES else array.tobytes())


def decode_inputs(request: pb.ModelInferRequest, quote: Callable[[str], str] = repr) -> dict[str, np.ndarray]:
    """A request's inputs by name, raw contents wrapped without copying, typed contents converted.

    Raises TensorCodecError when the raw contents do not match the inputs one to one, an input is
    given twice, or a payload disagrees with its declaration; ``quote`` renders client-chosen names
    in messages (a server bounds their length).
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorCodecError(
            f"request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents; "
            "send one raw content per input, or none"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise TensorCodecError(f"input {quote(tensor.name)} is given twice")
        inputs[tensor.name] = decode_input(tensor, raw[index] if raw else None, f"input {quote(tensor.name)}")
    return inputs


def encode_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray]) -> None:
    """Append every output as raw contents (one copy: the bytes the message holds)."""
    for name, array in outputs.items():
        add_raw_output(response, name, array)
