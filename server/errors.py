"""Domain errors, each carrying its gRPC status, and the one place that maps any error to a status.

The core raises these; :func:`status_of` gives the status code and message a
client gets for any exception: a domain error its own, the codec's
TensorCodecError INVALID_ARGUMENT, anything unexpected INTERNAL. The RPC plumbing
that applies it to every servicer method is server/rpc.py. HTTP/REST derives its
status from the same code (:data:`HTTP_STATUS`, :func:`http_status_of`), so both
transports tell a client the same thing.

Messages echo what the client sent, which has no size bound: ``quoted`` cuts one
client value to MAX_ECHO_CHARS, and ``status_of`` cuts every whole message to
MAX_MESSAGE_BYTES, each with a marker. gRPC clients refuse trailers over 16 KiB,
so an unbounded echo would turn NOT_FOUND into RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import grpc

from layerserve.proto.tensors import TensorCodecError

# One client value inside a message (a model, input or output name), in characters.
MAX_ECHO_CHARS = 80
# A whole status message, in UTF-8 bytes (percent-encoded on the wire: at most 3x this).
MAX_MESSAGE_BYTES = 1024


def quoted(value: str) -> str:
    """``repr(value)`` for a message, cut to MAX_ECHO_CHARS characters with a marker of what was left out."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return f"{value[:MAX_ECHO_CHARS]!r}...(+{len(value) - MAX_ECHO_CHARS} chars)"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to ``limit`` UTF-8 bytes, with a marker when cut."""
    data = message.encode()
    if len(data) <= limit:
        return message
    marker = f"...(message cut, {len(data)} bytes)"
    return data[: limit - len(marker)].decode(errors="ignore") + marker


class ServerError(Exception):
    """Base of the errors a client is told about; ``code`` is the gRPC status sent."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ModelNotFound(ServerError):
    """No such model, or no such version of it."""

    code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(ServerError):
    """The model exists but failed to verify or load."""

    code = grpc.StatusCode.UNAVAILABLE


class InvalidInput(ServerError):
    """A request that does not match what the model expects (names, dtypes, shapes, sizes)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class AnswerTooLarge(ServerError):
    """The answer to a request would exceed the message limit; refused before anything runs."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(ServerError):
    """The model's batching queue is at its bound; the client should retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(ServerError):
    """The server is draining: it finishes what it accepted and refuses new RPCs (retryable)."""

    code = grpc.StatusCode.UNAVAILABLE


class RequestExpired(ServerError):
    """The request's deadline passed while it waited; it was dropped before running."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServerError):
    """No bearer token, or one the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class NotSupported(ServerError):
    """A Triton extension this server does not have (server/unsupported.py says which, and why)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class DeviceUnavailable(RuntimeError):
    """The requested execution provider cannot be used; the server refuses to start."""


def status_of(error: BaseException, model: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and message (at most MAX_MESSAGE_BYTES) a client gets for ``error``."""
    if isinstance(error, ServerError):
        return error.code, bounded(str(error))
    if isinstance(error, TensorCodecError):
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(f"{model} {error}" if model else str(error))
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(error).__name__}: {error}")


# The HTTP status a REST client gets for each gRPC code: one table, so REST never decides on its own.
# RESOURCE_EXHAUSTED is 413 (the request or its answer is over the message limit); a full batching
# queue is UNAVAILABLE (503), retryable like gRPC's.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
}


def http_status_of(error: BaseException, model: str = "") -> tuple[int, grpc.StatusCode, str]:
    """The HTTP status, the gRPC code it stands for, and the message a REST client gets for ``error``."""
    code, message = status_of(error, model)
    return HTTP_STATUS.get(code, 500), code, message
