from . import grpc_service_pb2 as _grpc_service_pb2
from . import repository_pb2 as _repository_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListBlocksRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListBlocksResponse(_message.Message):
    __slots__ = ("manifest", "providers", "full_model_name", "block_model_names", "chain_model_name", "max_message_bytes")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    FULL_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BLOCK_MODEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    manifest: _repository_pb2.ModelManifest
    providers: _containers.RepeatedScalarFieldContainer[str]
    full_model_name: str
    block_model_names: _containers.RepeatedScalarFieldContainer[str]
    chain_model_name: str
    max_message_bytes: int
    def __init__(self, manifest: _Optional[_Union[_repository_pb2.ModelManifest, _Mapping]] = ..., providers: _Optional[_Iterable[str]] = ..., full_model_name: _Optional[str] = ..., block_model_names: _Optional[_Iterable[str]] = ..., chain_model_name: _Optional[str] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class ChainRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "start", "stop", "keep", "request")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    start: int
    stop: int
    keep: _containers.RepeatedScalarFieldContainer[int]
    request: _grpc_service_pb2.ModelInferRequest
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ..., keep: _Optional[_Iterable[int]] = ..., request: _Optional[_Union[_grpc_service_pb2.ModelInferRequest, _Mapping]] = ...) -> None: ...

class ChainResponse(_message.Message):
    __slots__ = ("response", "blocks_run", "kept")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_RUN_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    response: _grpc_service_pb2.ModelInferResponse
    blocks_run: _containers.RepeatedScalarFieldContainer[str]
    kept: _containers.RepeatedCompositeFieldContainer[BlockOutputs]
    def __init__(self, response: _Optional[_Union[_grpc_service_pb2.ModelInferResponse, _Mapping]] = ..., blocks_run: _Optional[_Iterable[str]] = ..., kept: _Optional[_Iterable[_Union[BlockOutputs, _Mapping]]] = ...) -> None: ...

class BlockOutputs(_message.Message):
    __slots__ = ("block_index", "block_name", "outputs")
    BLOCK_INDEX_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    block_index: int
    block_name: str
    outputs: _grpc_service_pb2.ModelInferResponse
    def __init__(self, block_index: _Optional[int] = ..., block_name: _Optional[str] = ..., outputs: _Optional[_Union[_grpc_service_pb2.ModelInferResponse, _Mapping]] = ...) -> None: ...
