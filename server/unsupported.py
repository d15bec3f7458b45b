"""Triton's extensions this server does not have, each refused with the one message both transports give.

gRPC answered them with its generic ``Method not found!`` and REST with a 404 that pointed
under /v2 at a path already there. Now each is UNIMPLEMENTED (HTTP 501) saying what is
missing and what to do instead. The model repository extension's index is served; loading
and unloading are not, because every worker process loads the repository once at start-up
(SO_REUSEPORT workers share the port: a load would reach one of them only).
"""

from __future__ import annotations

import grpc

from .errors import NotSupported

REPOSITORY_CONTROL = ("the model repository is fixed at start-up: each worker process loads it once, so a load or "
                      "unload would reach one worker only; restart `layerserve serve` to change the models served")
SHARED_MEMORY = ("this server has no shared memory extension (system or CUDA): send tensors in the request and "
                 "read them from the answer")
TRACE = ("this server has no trace extension: per-request timings are in ModelStatistics and on the metrics port "
         "(/metrics)")
LOGGING = "this server has no logging extension: set the log level at start-up (layerserve serve --log-level)"

# Triton's gRPC methods this server refuses, by name (the ``inference.GRPCInferenceService`` service).
GRPC_METHODS: dict[str, str] = {
    "RepositoryModelLoad": REPOSITORY_CONTROL,
    "RepositoryModelUnload": REPOSITORY_CONTROL,
    "SystemSharedMemoryStatus": SHARED_MEMORY,
    "SystemSharedMemoryRegister": SHARED_MEMORY,
    "SystemSharedMemoryUnregister": SHARED_MEMORY,
    "CudaSharedMemoryStatus": SHARED_MEMORY,
    "CudaSharedMemoryRegister": SHARED_MEMORY,
    "CudaSharedMemoryUnregister": SHARED_MEMORY,
    "TraceSetting": TRACE,
    "LogSettings": LOGGING,
}

# The same extensions' REST paths: the path itself or any path below it gets that message.
REST_PREFIXES: dict[str, str] = {
    "/v2/repository/models": REPOSITORY_CONTROL,
    "/v2/systemsharedmemory": SHARED_MEMORY,
    "/v2/cudasharedmemory": SHARED_MEMORY,
    "/v2/trace": TRACE,
    "/v2/logging": LOGGING,
}
# A model's own trace settings: /v2/models/<name>[/versions/<version>]/trace/setting.
MODEL_TRACE_SUFFIX = "/trace/setting"


def rest_refusal(path: str) -> NotSupported | None:
    """The refusal for a REST path of an extension this server does not have; None for any other path."""
    if path.startswith("/v2/models/") and path.endswith(MODEL_TRACE_SUFFIX):
        return NotSupported(TRACE)
    message = next((text for prefix, text in REST_PREFIXES.items()
                    if path == prefix or path.startswith(prefix + "/")), None)
    return None if message is None else NotSupported(message)


SERVICE = "/inference.GRPCInferenceService"


class GrpcRefusals(grpc.GenericRpcHandler):
    """Answers Triton's gRPC methods listed in GRPC_METHODS (looked up after the served ones)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.rpartition("/")
        return grpc_handler(method) if service == SERVICE else None


def grpc_handler(method: str) -> grpc.RpcMethodHandler | None:
    """A handler refusing Triton's gRPC ``method`` with its message; None for methods not listed."""
    message = GRPC_METHODS.get(method)
    if message is None:
        return None

    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        return b""

    return grpc.unary_unary_rpc_method_handler(refuse)
