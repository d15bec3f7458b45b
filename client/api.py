"""``LayerClient``: the Open Inference Protocol plus the layer extension, numpy in and out.

The API reads like the protocol (``is_server_live``, ``model_metadata``, ``infer``)
and adds the layer-level calls (``blocks``, ``chain``, ``final_only``). Every failed
RPC raises :class:`~layerserve.client.errors.ServerError` with the server's status
code and message, unchanged. Tensors are encoded by ``layerserve.proto.tensors``
(raw contents). Inputs are split along axis 0 into requests the model and the
wire can take, and the answers concatenated, so callers may pass a whole data
set: at most ``batch_size`` rows and at most the server's ``max_batch_size`` for that
name (ModelConfig), exactly the model's batch when it is fixed, and never more than
fits the smaller of the client's and the server's message limit (client/sizing.py).
An input with no batch axis (a fixed shape, as a graph that takes one picture and
adds its own batch has) fed an array with one axis more gets one request per entry;
the answers join along that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import grpc
import numpy as np

from layerserve.proto import encodings, names, tensors
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc
from layerserve.proto.repository_pb2 import Block, ModelManifest
from layerserve.proto.tensors import TensorSpec

from .connection import DEFAULT_ADDRESS, ConnectionSettings, call_metadata, open_channel
from .errors import ServerError
from .fit import fit as fit_to
from .fit import per_sample
from .placement import Placement
from .sizing import MESSAGE_OVERHEAD_BYTES, rows_per_request, total_row_bytes

if TYPE_CHECKING:
    from .planner import Plan

Where = Literal["client", "server"]
Response = TypeVar("Response")
Arrays = dict[str, np.ndarray]
# The server's own limit for the built-in models (ServingConfig.max_batch_size).
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata says about one served model."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelBlocks:
    """ListBlocks' answer: the manifest, the providers in use and the served model names."""

    manifest: ModelManifest
    providers: tuple[str, ...]
    full_model_name: str
    block_model_names: tuple[str, ...]
    chain_model_name: str
    # The server's message limit in bytes (0: not advertised).
    max_message_bytes: int = 0

    @property
    def blocks(self) -> Sequence[Block]:
        return self.manifest.blocks

    def __len__(self) -> int:
        return len(self.manifest.blocks)

    def index(self, block: int | str) -> int:
        """Index of a block given by index or name (``"03_stage3"`` or ``"stage3"``); KeyError otherwise."""
        if isinstance(block, int) or str(block).lstrip("-").isdigit():
            index = int(block)
            if index < 0:
                index += len(self)
            if 0 <= index < len(self):
                return index
        else:
            for candidate in self.blocks:
                if block in (candidate.name, candidate.name.split("_", 1)[-1]):
                    return candidate.index
        raise KeyError(f"{self.manifest.name} has no block {block!r} (blocks: {[b.name for b in self.blocks]})")

    def final_conv_index(self) -> int:
        """The last block that runs a convolution: where "feed the image to the last layer" starts."""
        convs = [b.index for b in self.blocks if any(op.startswith("Conv") for op in b.op_types)]
        return convs[-1] if convs else max(len(self) - 2, 0)

    def input_spec(self, index: int) -> TensorSpec:
        spec = self.blocks[index].inputs[0]
        return TensorSpec.from_proto(spec)

    def output_specs(self, index: int) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec.from_proto(s) for s in self.blocks[index].outputs)


def fixed_batch(specs: Sequence[TensorSpec]) -> int | None:
    """The batch size a model's inputs fix (their first dimension), None when it is free (-1)."""
    sizes = {spec.shape[0] for spec in specs if spec.shape}
    return sizes.pop() if len(sizes) == 1 and next(iter(sizes)) > 0 else None


def _row_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return sum(a.nbytes // len(a) for a in arrays.values() if a.ndim and len(a))


def _refuse_oversized_row(model: str, arrays: Mapping[str, np.ndarray], limit: int,
                          specs: Sequence[TensorSpec]) -> None:
    """ValueError when one row of ``arrays`` cannot fit a message of ``limit`` bytes: sent anyway, gRPC refused it
    on this side ("CLIENT: Sent message larger than max"), read as the server's error and saying nothing of the
    shape (a 5-D array for a 4-D input, say)."""
    row = _row_bytes(arrays)
    if not limit or row + MESSAGE_OVERHEAD_BYTES <= limit:
        return
    name, array = max(arrays.items(), key=lambda item: item[1].nbytes)
    expected = next((f"; {model} expects {spec.datatype} {list(spec.shape)}" for spec in specs if spec.name == name), "")
    raise ValueError(f"one row of input {name[:80]!r} {list(array.shape)} is {row:,} bytes, over the message limit of "
                     f"{limit:,} bytes{expected}")


@dataclass
class ChainResult:
    """Output of blocks ``[start, stop)`` plus the kept activations.

    ``outputs`` holds the last block's outputs by tensor name; ``kept`` the
    activations asked for, by block name then tensor name, in block order (tensor
    names are kept as the graph has them, ``/`` and all); ``addresses`` which server
    ran each block (block name -> address).
    """

    outputs: dict[str, np.ndarray]
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    blocks_run: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray:
        """The only output of the last block (ValueError if it has several)."""
        return _only(self.outputs, "the last block")

    @property
    def scores(self) -> np.ndarray:
        """The last block's first output (:func:`first_output`): what the experiment scores."""
        return first_output(self.outputs)

    def kept_output(self, block: str) -> np.ndarray:
        """The only kept output of ``block`` (KeyError if it was not kept, ValueError if it has several)."""
        if block not in self.kept:
            raise KeyError(f"block {block!r} was not kept (kept: {list(self.kept)})")
        return _only(self.kept[block], f"block {block!r}")


def first_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The first of a model's outputs, in the graph's order: a classifier's scores also when the model
    returns more beside them (an embedding, auxiliary logits, probabilities), as exporters put the
    first value a ``forward`` returns first."""
    if not outputs:
        raise ValueError("the answer holds no outputs")
    return next(iter(outputs.values()))


def _as_declared(x: np.ndarray, datatype: str) -> np.ndarray:
    """A bare array as the input's declared ``datatype`` where nothing is lost: numpy's casts within a kind
    (float64 defaults become FP32, UINT8 pixels FP32) and integers whose values the declared type holds
    (numpy's int64 pixels as UINT8). Anything else, a float array for an integer input above all, goes as
    it is, for the server to refuse naming what it expects, instead of being truncated into garbage here."""
    array, declared = np.asarray(x), tensors.numpy_dtype(datatype)
    if np.can_cast(array.dtype, declared, casting="same_kind") or (
            array.dtype.kind in "iu" and declared.kind in "iu" and (not array.size or (
                np.iinfo(declared).min <= array.min() and array.max() <= np.iinfo(declared).max))):
        return array.astype(declared, copy=False)
    return array


def _sent_as(array: np.ndarray, encoding: str) -> str:
    """The wire encoding ``array`` travels in: ``encoding`` for FP32, none for other types (a quantized
    model's INT8 activations, UINT8 pixels), which the encodings do not apply to."""
    return encoding if encodings.applies_to(tensors.datatype_of(array.dtype)) else "fp32"


def _only(outputs: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    if len(outputs) != 1:
        raise ValueError(f"{what} has {len(outputs)} outputs: {list(outputs)}")
    return next(iter(outputs.values()))


def _batches(arrays: Mapping[str, np.ndarray], size: int) -> Iterable[Arrays]:
    total = _rows(arrays)
    if size <= 0 or total <= size:
        yield dict(arrays)
        return
    for begin in range(0, total, size):
        yield {name: a[begin : begin + size] for name, a in arrays.items()}


def _rows(arrays: Mapping[str, np.ndarray]) -> int:
    rows = {len(a) for a in arrays.values()} if arrays else {0}
    if len(rows) != 1:
        raise ValueError(f"inputs disagree on the batch dimension: {sorted(rows)}")
    return rows.pop()


def _concat(parts: list[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _one_per_request(arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> bool:
    """Whether ``arrays`` stack several requests' inputs on a new first axis: every input's shape is fixed,
    so it has no batch axis to split along (a graph that takes one picture and adds its own batch), and its
    array has one axis more."""
    shapes = {spec.name: spec.shape for spec in specs}
    return bool(arrays) and all(
        name in shapes and min(shapes[name], default=0) > 0 and np.ndim(array) == len(shapes[name]) + 1
        for name, array in arrays.items()) and _rows(arrays) > 0  # no entries: one request, for the server to refuse


def _entries(arrays: Mapping[str, np.ndarray]) -> Iterable[Arrays]:
    for index in range(_rows(arrays)):
        yield {name: a[index] for name, a in arrays.items()}


def _stacked(parts: list[Arrays]) -> Arrays:
    """Answers of requests that carried one sample each, as one batch: concatenated along their first axis
    where each starts with a batch of 1 (``[1, 10]``, also the batch a graph without one adds itself), stacked
    on a new axis where they have none (a graph that squeezes its batch of 1 away answers ``[5]``)."""
    joined = {}
    for name in parts[0]:
        answers = [p[name] for p in parts]
        own_batch = all(a.ndim and a.shape[0] == 1 for a in answers)
        joined[name] = np.concatenate(answers) if own_batch else np.stack(answers)
    return joined


def _requests(arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], rows: int
              ) -> tuple[Iterable[tuple[Arrays, int]], Callable[[list[Arrays]], Arrays]]:
    """The requests ``arrays`` go in, each with the rows of ``arrays`` it carries, and how their answers join:
    one per entry of a new first axis for inputs with no batch axis (:func:`_one_per_request`), else
    ``rows`` rows at a time along the batch, the answers of several one-row requests joined as samples."""
    if _one_per_request(arrays, specs):
        return ((entry, 1) for entry in _entries(arrays)), _stacked
    several_single_rows = rows == 1 and _rows(arrays) > 1
    return ((batch, _rows(batch)) for batch in _batches(arrays, rows)), _stacked if several_single_rows else _concat


class _Endpoint:
    """One channel and the two stubs over it."""

    def __init__(self, address: str, settings: ConnectionSettings) -> None:
        self.address = address
        self.channel = open_channel(address, settings)
        self.inference = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.layers = lpb_grpc.LayerServiceStub(self.channel)


class LayerClient:
    """A client of one layerserve server, or of several through a :class:`Placement`.

    ``address`` serves everything a placement does not route elsewhere; the
    placement only affects which server runs each block in :meth:`chain`. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        settings: ConnectionSettings | None = None,
        placement: Placement | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.address = address
        self.settings = settings or ConnectionSettings()
        self.placement = placement or Placement()
        self.batch_size = batch_size
        self._metadata = call_metadata(self.settings)
        self._endpoints: dict[str, _Endpoint] = {}
        self._model_metadata: dict[tuple[str, str, str], ModelMetadata] = {}
        # (served name, version, address) -> ModelConfig's max_batch_size (0: no limit, or no ModelConfig)
        self._max_batch_sizes: dict[tuple[str, str, str], int] = {}
        self._blocks: dict[tuple[str, str], ModelBlocks] = {}
        # address -> the server's advertised message limit (0: none advertised)
        self._server_limits: dict[str, int] = {}
        # Called after each inference request with (served name, rows done, rows in the call): progress bars.
        self.on_request: Callable[[str, int, int], None] | None = None

    def _report(self, served: str, done: int, total: int) -> None:
        if self.on_request is not None:
            self.on_request(served, done, total)

    # -- plumbing ---------------------------------------------------------------------

    def _endpoint(self, address: str | None = None) -> _Endpoint:
        address = address or self.address
        if address not in self._endpoints:
            self._endpoints[address] = _Endpoint(address, self.settings)
        return self._endpoints[address]

    def _call(self, method: Callable[..., Response], request: object, name: str) -> Response:
        try:
            return method(request, timeout=self.settings.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise ServerError.from_rpc_error(error, name) from None

    def close(self) -> None:
        """Close every channel this client opened."""
        for endpoint in self._endpoints.values():
            endpoint.channel.close()
        self._endpoints.clear()

    def __enter__(self) -> LayerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- health and metadata ----------------------------------------------------------

    def is_server_live(self, address: str | None = None) -> bool:
        """ServerLive; ServerError (UNAVAILABLE) when nothing answers."""
        endpoint = self._endpoint(address)
        return self._call(endpoint.inference.ServerLive, pb.ServerLiveRequest(), "ServerLive").live

    def is_server_ready(self, address: str | None = None) -> bool:
        """ServerReady: every model the server was asked to load is ready."""
        endpoint = self._endpoint(address)
        return self._call(endpoint.inference.ServerReady, pb.ServerReadyRequest(), "ServerReady").ready

    def is_model_ready(self, model: str, version: str = "") -> bool:
        """ModelReady for ``model`` (a full model, a block model or a chain)."""
        request = pb.ModelReadyRequest(name=model, version=version)
        return self._call(self._endpoint().inference.ModelReady, request, "ModelReady").ready

    def server_metadata(self) -> pb.ServerMetadataResponse:
        """ServerMetadata: name, version, protocol extensions."""
        endpoint = self._endpoint()
        return self._call(endpoint.inference.ServerMetadata, pb.ServerMetadataRequest(), "ServerMetadata")

    def list_models(self, ready_only: bool = True) -> list[pb.RepositoryIndexResponse.ModelIndex]:
        """RepositoryIndex: every served name (full models, blocks, chains) with its state."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return list(self._call(self._endpoint().inference.RepositoryIndex, request, "RepositoryIndex").models)

    def model_metadata(self, model: str, version: str = "", address: str | None = None) -> ModelMetadata:
        """ModelMetadata for ``model``, cached per (model, version, server)."""
        key = (model, version, address or self.address)
        if key not in self._model_metadata:
            request = pb.ModelMetadataRequest(name=model, version=version)
            answer = self._call(self._endpoint(address).inference.ModelMetadata, request, "ModelMetadata")
            self._model_metadata[key] = ModelMetadata(
                name=answer.name,
                versions=tuple(answer.versions),
                platform=answer.platform,
                inputs=tuple(TensorSpec.from_proto(t) for t in answer.inputs),
                outputs=tuple(TensorSpec.from_proto(t) for t in answer.outputs),
            )
        return self._model_metadata[key]

    def max_batch_size(self, model: str, version: str = "", address: str | None = None) -> int:
        """The most rows the server at ``address`` takes in one request for ``model`` (ModelConfig's
        ``max_batch_size``, which ``serve --max-batch-size`` and a Triton config set), cached; 0 when it sets no
        limit or does not serve ModelConfig (a server without Triton's model configuration extension)."""
        key = (model, version, address or self.address)
        if key not in self._max_batch_sizes:
            request = pb.ModelConfigRequest(name=model, version=version)
            try:
                config = self._call(self._endpoint(address).inference.ModelConfig, request, "ModelConfig").config
                self._max_batch_sizes[key] = max(0, int(config.max_batch_size))
            except ServerError as error:
                if error.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._max_batch_sizes[key] = 0
        return self._max_batch_sizes[key]

    def _rows_cap(self, model: str, version: str, address: str | None) -> int:
        """Rows per request before the message limit: the smaller of ``batch_size`` and the server's limit."""
        server = self.max_batch_size(model, version, address)
        own = self.batch_size
        return min(own, server) if own > 0 and server > 0 else max(own, server)

    def model_statistics(self, model: str = "", version: str = "", address: str | None = None) -> list[pb.ModelStatistics]:
        """ModelStatistics (Triton extension) of ``model`` or, with "", of every model."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        endpoint = self._endpoint(address)
        return list(self._call(endpoint.inference.ModelStatistics, request, "ModelStatistics").model_stats)

    def blocks(self, model: str, version: str = "") -> ModelBlocks:
        """ListBlocks: the model's manifest (blocks in order), providers and served names; cached."""
        key = (model, version)
        if key not in self._blocks:
            request = lpb.ListBlocksRequest(model_name=model, model_version=version)
            answer = self._call(self._endpoint().layers.ListBlocks, request, "ListBlocks")
            self._server_limits.setdefault(self.address, answer.max_message_bytes)
            self._blocks[key] = ModelBlocks(
                manifest=answer.manifest,
                providers=tuple(answer.providers),
                full_model_name=answer.full_model_name or model,
                block_model_names=tuple(answer.block_model_names)
                or tuple(names.block_name(model, b.name) for b in answer.manifest.blocks),
                chain_model_name=answer.chain_model_name or names.chain_name(model),
                max_message_bytes=answer.max_message_bytes,
            )
        return self._blocks[key]

    def message_limit(self, model: str, address: str | None = None) -> int:
        """The largest message both this client and the server at ``address`` take, in bytes.

        The server's limit comes from ListBlocks (asked once per server); a server
        without the layerserve extension advertises none, and the client's own applies.
        """
        address = address or self.address
        if address not in self._server_limits:
            try:
                request = lpb.ListBlocksRequest(model_name=model)
                answer = self._call(self._endpoint(address).layers.ListBlocks, request, "ListBlocks")
                self._server_limits[address] = answer.max_message_bytes
            except ServerError as error:
                if error.code != grpc.StatusCode.UNIMPLEMENTED:
                    return self.settings.max_message_bytes  # ask again next time
                self._server_limits[address] = 0
        server = self._server_limits[address]
        own = self.settings.max_message_bytes
        return min(own, server) if server else own

    # -- inference --------------------------------------------------------------------

    def _named_inputs(
        self, model: str, x: np.ndarray | Mapping[str, np.ndarray], version: str, address: str | None
    ) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            return {name: np.asarray(a) for name, a in x.items()}
        specs = self.model_metadata(model, version, address).inputs
        if len(specs) != 1:
            raise ValueError(f"{model} has {len(specs)} inputs {[s.name for s in specs]}; pass a dict")
        return {specs[0].name: _as_declared(x, specs[0].datatype)}

    def infer(
        self,
        model: str,
        x: np.ndarray | Mapping[str, np.ndarray],
        outputs: Sequence[str] = (),
        version: str = "",
        address: str | None = None,
        encoding: str = "fp32",
    ) -> dict[str, np.ndarray]:
        """ModelInfer: ``x`` (one array for a one-input model, or a dict by input name) -> outputs by name.

        The rows go in as many requests as the model's batch and the message limits
        need (module docstring); their outputs are concatenated. ``address`` overrides
        the server (placement uses it). ``encoding`` ``fp16``/``int8`` sends FP32 inputs
        compressed (proto/encodings.py); inputs of other types (a quantized model's INT8
        activations, UINT8 pixels) go as they are. Raises ServerError with the server's message
        (e.g. INVALID_ARGUMENT on a shape mismatch).
        """
        named = self._named_inputs(model, x, version, address)
        endpoint = self._endpoint(address)
        metadata = self.model_metadata(model, version, address)
        answer = [spec for spec in metadata.outputs if not outputs or spec.name in outputs]
        limit = self.message_limit(model, address)
        _refuse_oversized_row(model, named, limit, metadata.inputs)
        rows = rows_per_request(
            self._rows_cap(model, version, address),
            limit,
            _row_bytes(named),
            total_row_bytes(spec.row_bytes() for spec in answer),
            fixed_batch(metadata.inputs),
        )
        requests, join = _requests(named, metadata.inputs, rows)
        parts, done, total = [], 0, _rows(named)
        for batch, carried in requests:
            request = pb.ModelInferRequest(model_name=model, model_version=version)
            for name, array in batch.items():
                tensors.add_raw_input(request, name, array, _sent_as(array, encoding))
            for name in outputs:
                request.outputs.add(name=name)
            parts.append(tensors.outputs_by_name(self._call(endpoint.inference.ModelInfer, request, "ModelInfer")))
            done += carried
            self._report(model, done, total)
        return join(parts)

    def infer_array(self, model: str, x: np.ndarray, version: str = "", address: str | None = None) -> np.ndarray:
        """:meth:`infer` for a one-output model: the output array itself."""
        answer = self.infer(model, x, version=version, address=address)
        if len(answer) != 1:
            raise ValueError(f"{model} returned {len(answer)} outputs {list(answer)}; use infer()")
        return next(iter(answer.values()))

    # -- layer-level ------------------------------------------------------------------

    def _range(self, blocks: ModelBlocks, start: int, stop: int | None, keep: Iterable[int]) -> tuple[int, int, set[int]]:
        stop = len(blocks) if stop is None else stop
        if not 0 <= start < stop <= len(blocks):
            raise ValueError(f"block range [{start}, {stop}) is not within [0, {len(blocks)}) or is empty")
        kept = set(keep)
        outside = sorted(k for k in kept if not start <= k < stop)
        if outside:
            raise ValueError(f"keep {outside}: only blocks in [{start}, {stop}) run")
        return start, stop, kept

    def chain(
        self,
        model: str,
        x: np.ndarray,
        start: int = 0,
        stop: int | None = None,
        where: Where | None = None,
        keep: Iterable[int] = (),
        version: str = "",
        placement: Placement | Plan | None = None,
    ) -> ChainResult:
        """Run blocks ``[start, stop)`` of ``model`` on ``x`` (the input of block ``start``).

        ``where="client"``: one ModelInfer per block ("<model>.<block>"), the client
        passing each output on; ``where="server"``: the LayerService.Chain RPC, the
        activations staying on the server. With a placement (``placement``, else the
        client's), each block (client) or each run of consecutive blocks (server) goes
        to the address its range names, tensors sent in the range's encoding. A
        :class:`~layerserve.client.planner.Plan` runs its chosen cut, ``where`` then
        defaulting to "server" (one Chain RPC per side, as the plan predicted); otherwise
        ``where`` defaults to "client". ``keep``: block indices whose outputs are returned
        too. Raises ValueError for a bad range, ServerError with the server's message otherwise.
        """
        blocks = self.blocks(model, version)
        start, stop, kept = self._range(blocks, start, stop, keep)
        if placement is not None and not isinstance(placement, Placement):
            where = where or "server"
            placement = placement.placement()
        placement = placement or self.placement
        where = where or "client"
        if where == "client":
            return self._chain_client(blocks, x, start, stop, kept, version, placement)
        if where == "server":
            return self._chain_server(blocks, x, start, stop, kept, version, placement)
        raise ValueError(f"where must be 'client' or 'server', got {where!r}")

    def _chain_client(
        self, blocks: ModelBlocks, x: np.ndarray, start: int, stop: int, kept: set[int], version: str,
        placement: Placement,
    ) -> ChainResult:
        result = ChainResult(outputs={})
        current: dict[str, np.ndarray] = {}
        for index in range(start, stop):
            block = blocks.blocks[index]
            address = placement.address_for(index, self.address)
            if index == start:
                feed: np.ndarray | dict[str, np.ndarray] = np.asarray(x)
            elif len(block.inputs) == 1 and len(current) == 1:
                feed = {block.inputs[0].name: next(iter(current.values()))}
            else:  # several tensors cross the cut: match them by name
                feed = {spec.name: current[spec.name] for spec in block.inputs}
            current = self.infer(blocks.block_model_names[index], feed, version=version, address=address,
                                 encoding=placement.encoding_for(index))
            result.blocks_run.append(block.name)
            result.addresses[block.name] = address
            if index in kept:
                result.kept[block.name] = current
        result.outputs = current
        return result

    def _chain_server(
        self, blocks: ModelBlocks, x: np.ndarray, start: int, stop: int, kept: set[int], version: str,
        placement: Placement,
    ) -> ChainResult:
        model = blocks.manifest.name
        result = ChainResult(outputs={})
        current = np.asarray(x)
        for segment in placement.segments(start, stop, self.address):
            endpoint = self._endpoint(segment.address)
            spec = blocks.blocks[segment.start].inputs[0]
            feed = _as_declared(current, spec.datatype)
            segment_keep = sorted(k for k in kept if segment.start <= k < segment.stop)
            answered = [segment.stop - 1, *(k for k in segment_keep if k != segment.stop - 1)]
            first_block, limit = blocks.block_model_names[segment.start], self.message_limit(model, segment.address)
            _refuse_oversized_row(first_block, {spec.name: feed}, limit, [spec])
            input_spec = blocks.input_spec(segment.start)
            rows = rows_per_request(
                self._rows_cap(first_block, version, segment.address),
                limit,
                _row_bytes({spec.name: feed}),
                total_row_bytes(s.row_bytes() for index in answered for s in blocks.output_specs(index)),
                fixed_batch([input_spec]),
            )
            requests, join = _requests({spec.name: feed}, [input_spec], rows)
            parts, kept_parts, run, done = [], [], [], 0
            for batch, carried in requests:
                request = lpb.ChainRequest(
                    model_name=model, model_version=version, start=segment.start, stop=segment.stop, keep=segment_keep
                )
                request.request.model_name = blocks.chain_model_name
                tensors.add_raw_input(request.request, spec.name, batch[spec.name],
                                      _sent_as(batch[spec.name], segment.encoding))
                answer = self._call(endpoint.layers.Chain, request, "Chain")
                parts.append(tensors.outputs_by_name(answer.response))
                kept_parts.append({k.block_name: tensors.outputs_by_name(k.outputs) for k in answer.kept})
                run = list(answer.blocks_run)
                done += carried
                self._report(blocks.chain_model_name, done, len(feed))
            outputs = join(parts)
            for name in kept_parts[0] if kept_parts else ():
                result.kept[name] = join([part[name] for part in kept_parts])
            result.blocks_run.extend(run)
            result.addresses.update({name: segment.address for name in run})
            if len(outputs) != 1 and segment.stop < stop:
                raise ValueError(f"block {segment.stop - 1} has {len(outputs)} outputs; cannot hand them on")
            current = next(iter(outputs.values()))
            result.outputs = outputs
        return result

    def final_only(
        self,
        model: str,
        x: np.ndarray,
        fit: str | None = None,
        start: int | None = None,
        where: Where = "client",
        seed: int = 0,
        version: str = "",
    ) -> ChainResult:
        """The question's path: ``x`` straight into block ``start`` (default: the last conv block), then on through the head.

        ``fit=None`` sends ``x`` as it is: for a raw image the server refuses with
        INVALID_ARGUMENT (raised as ServerError, its message naming expected and
        given shapes). ``fit`` in ``resize | pad | project`` first forces ``x`` into
        the block's input shape (see :mod:`layerserve.client.fit`).
        """
        blocks = self.blocks(model, version)
        start = blocks.final_conv_index() if start is None else start
        if fit is not None:
            spec = blocks.input_spec(start)
            x = fit_to(x, per_sample(spec.shape), fit, seed, tensors.numpy_dtype(spec.datatype))
        return self.chain(model, x, start=start, where=where, version=version)
