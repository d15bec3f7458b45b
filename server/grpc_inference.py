"""The Open Inference Protocol (KServe v2 / Triton) gRPC servicer: convert -> DataPlane -> convert.

Wire-compatible with ``tritonclient.grpc`` and KServe's client: outputs always
travel as ``raw_output_contents`` (what both read); inputs may be raw (the fast
path, wrapped zero-copy) or typed contents. Every method is a conversion around
one DataPlane call; the logic lives there.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from importlib import metadata

import grpc

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import TensorSpec, decode_inputs, encode_outputs

from . import parameters, streaming
from .dataplane import DataPlane, EndpointStatistics
from .errors import quoted
from .rpc import handled

SERVER_NAME = "layerserve"
# What ServerMetadata advertises: only what both transports really serve, in Triton's names. "model_repository"
# stands for RepositoryIndex (load and unload are refused: server/unsupported.py). gRPC's ModelStreamInfer is
# served too; Triton lists no extension for it.
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "binary_tensor_data", "classification",
              "layerserve.v1.LayerService"]


def server_version() -> str:
    try:
        return metadata.version("layerserve")
    except metadata.PackageNotFoundError:
        return "0"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline as a ``time.monotonic()`` instant, None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def statistics_message(entry: EndpointStatistics) -> pb.ModelStatistics:
    """One endpoint's statistics as Triton's ModelStatistics message (both transports answer with it)."""
    stats = entry.stats
    message = pb.ModelStatistics(
        name=entry.name,
        version=entry.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
    )
    infer = message.inference_stats
    for field in ("success", "fail", "queue", "compute_infer"):
        duration = getattr(stats, field)
        target = getattr(infer, field)
        target.count, target.ns = duration.count, duration.ns
    for size in sorted(stats.batches):
        batch = message.batch_stats.add(batch_size=size)
        batch.compute_infer.count, batch.compute_infer.ns = stats.batches[size].count, stats.batches[size].ns
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @handled
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    @handled
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self.dataplane.server_ready())

    @handled
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @handled
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    @handled
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        info = self.dataplane.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=info.name, versions=info.versions, platform=info.platform,
            inputs=_tensor_metadata(info.inputs), outputs=_tensor_metadata(info.outputs),
        )

    @handled
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        return await self._infer(request, context)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request on the stream answered as ModelInfer answers it (server/streaming.py)."""
        async for response in streaming.answers(requests, lambda request: self._infer(request, context),
                                                self.dataplane):
            yield response

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        endpoint = self.dataplane.endpoint(request.model_name, request.model_version)  # before any tensor
        # Only tensors that carry parameters are read for them: most requests carry none (the hot path).
        for tensor in request.inputs:
            if tensor.parameters:
                parameters.refuse_shared_memory(parameters.plain(tensor.parameters), f"input {quoted(tensor.name)}")
        classes = parameters.output_requests({o.name: parameters.plain(o.parameters)
                                              for o in request.outputs if o.parameters})
        result = await self.dataplane.infer(
            endpoint, request.model_version, decode_inputs(request, quoted), [o.name for o in request.outputs],
            deadline_of(context), classes,
        )
        response = pb.ModelInferResponse(model_name=endpoint.name, model_version=endpoint.version, id=request.id)
        encode_outputs(response, result.outputs)
        return response

    @handled
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        return pb.ModelConfigResponse(config=self.dataplane.config(request.name, request.version))

    @handled
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext):
        entries = self.dataplane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[statistics_message(entry) for entry in entries])

    @handled
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        entries = self.dataplane.index(request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in entries
        ])
