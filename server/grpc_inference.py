"""The Open Inference Protocol (KServe v2 / Triton) gRPC servicer: decode -> core -> encode.

Wire-compatible with ``tritonclient.grpc`` and KServe's client: outputs always
travel as ``raw_output_contents`` (what both read); inputs may be raw (the fast
path, wrapped zero-copy) or typed contents.
"""

from __future__ import annotations

import time
from importlib import metadata

import grpc

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import decode_inputs, encode_outputs

from .dataplane import DataPlane, Stats
from .endpoints import TensorSpec
from .errors import handled, quoted
from .repository import READY

PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "layerserve"
EXTENSIONS = ["model_repository", "statistics", "layerserve.v1.LayerService"]


def server_version() -> str:
    try:
        return metadata.version("layerserve")
    except metadata.PackageNotFoundError:
        return "0"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The RPC's deadline as a ``time.monotonic()`` instant, None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def _duration(target: pb.StatisticDuration, count: int, ns: int) -> None:
    target.count, target.ns = count, ns


def _statistics(name: str, version: str, stats: Stats) -> pb.ModelStatistics:
    message = pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
    )
    infer = message.inference_stats
    for field in ("success", "fail", "queue", "compute_infer"):
        duration = getattr(stats, field)
        _duration(getattr(infer, field), duration.count, duration.ns)
    for size in sorted(stats.batches):
        batch = message.batch_stats.add(batch_size=size)
        _duration(batch.compute_infer, stats.batches[size].count, stats.batches[size].ns)
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.repository = dataplane.repository

    @handled
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    @handled
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        # Ready once loaded, while not draining; an unavailable model does not make the server unready.
        return pb.ServerReadyResponse(ready=not self.dataplane.draining)

    @handled
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        ready = not self.dataplane.draining and self.repository.is_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    @handled
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS)

    @handled
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        endpoint = self.repository.endpoint(request.name, request.version)
        model = self.repository.models[endpoint.model]
        versions = [v for v in sorted(model, key=int) if model[v].ready and request.name in model[v].endpoints]
        return pb.ModelMetadataResponse(
            name=endpoint.name,
            versions=versions,
            platform=PLATFORM,
            inputs=_tensor_metadata(endpoint.inputs),
            outputs=_tensor_metadata(endpoint.outputs),
        )

    @handled
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        # The name first: an unknown one is NOT_FOUND whatever its tensors hold.
        self.repository.endpoint(request.model_name, request.model_version)
        inputs = decode_inputs(request, quoted)
        result = await self.dataplane.infer(
            request.model_name, request.model_version, inputs, [o.name for o in request.outputs],
            deadline_of(context),
        )
        response = pb.ModelInferResponse(
            model_name=result.endpoint.name, model_version=result.endpoint.version, id=request.id
        )
        encode_outputs(response, result.outputs)
        return response

    @handled
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext):
        if request.name:
            self.repository.endpoint(request.name, request.version)  # NOT_FOUND for unknown names
        response = pb.ModelStatisticsResponse()
        for model in self.repository.versions():
            if request.version and model.version != request.version:
                continue
            for name in model.endpoints:
                if request.name in ("", name):
                    stats = self.dataplane.stats.get((name, model.version)) or Stats()
                    response.model_stats.append(_statistics(name, model.version, stats))
        return response

    @handled
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext):
        response = pb.RepositoryIndexResponse()
        for model in self.repository.versions():
            if request.ready and not model.ready:
                continue
            names = list(model.endpoints) if model.ready else [model.name]
            for name in names:
                response.models.add(
                    name=name, version=model.version, state=model.state, reason="" if model.state == READY else model.reason
                )
        return response
