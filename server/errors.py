"""Domain errors, each carrying its gRPC status, and the one place that turns them into one.

The core raises these; ``handled`` (the decorator every servicer method wears)
aborts the RPC with the error's status and message, maps the codec's
TensorCodecError and undecodable request bytes (see ``lenient``) to
INVALID_ARGUMENT, and turns anything unexpected into INTERNAL with a logged
traceback, so the server keeps serving after every error.

Messages echo what the client sent, which has no size bound: ``quoted`` cuts one
client value to MAX_ECHO_CHARS, and ``status_of`` cuts every whole message to
MAX_MESSAGE_BYTES, each with a marker. gRPC clients refuse trailers over 16 KiB,
so an unbounded echo would turn NOT_FOUND into RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from layerserve.proto.tensors import TensorCodecError

log = logging.getLogger(__name__)

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


class DeviceUnavailable(RuntimeError):
    """The requested execution provider cannot be used; the server refuses to start."""


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    message_type: str
    error: str


def lenient(parse: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    """A request deserializer that returns Undecodable instead of raising.

    gRPC answers a deserializer's exception with UNKNOWN; handing the servicer an
    Undecodable lets ``handled`` answer INVALID_ARGUMENT, as for any client mistake.
    """

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return Undecodable(message_type, str(error))

    return deserialize


def lenient_handlers(handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, grpc.RpcMethodHandler]:
    """``handlers`` (as generated ``add_*_to_server`` functions build them) with lenient deserializers."""
    changed = {}
    for name, handler in handlers.items():
        parse = handler.request_deserializer
        message_type = getattr(parse, "__qualname__", name).removesuffix(".FromString")
        changed[name] = handler._replace(request_deserializer=lenient(parse, message_type))
    return changed


def status_of(error: BaseException, model: str = "") -> tuple[grpc.StatusCode, str]:
    """The status code and message (at most MAX_MESSAGE_BYTES) a client gets for ``error``."""
    if isinstance(error, ServerError):
        return error.code, bounded(str(error))
    if isinstance(error, TensorCodecError):
        return grpc.StatusCode.INVALID_ARGUMENT, bounded(f"{model} {error}" if model else str(error))
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(error).__name__}: {error}")


# Called once per RPC with (rpc name, model name, status code, seconds); metrics plug in here.
Observer = Callable[[str, str, grpc.StatusCode, float], None]
_observers: list[Observer] = []


def add_observer(observer: Observer) -> None:
    """Have ``observer`` see the outcome of every handled RPC."""
    if observer not in _observers:
        _observers.append(observer)


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


# Probes answer while the server drains (ServerReady then says false): they hold nothing.
_UNGATED = frozenset({"ServerLive", "ServerReady", "ModelReady"})


def handled(method: _Method) -> _Method:
    """Wrap an async servicer method: domain errors abort with their status, the rest INTERNAL.

    When the servicer's ``dataplane`` has a drain ``gate`` (server/drain.py), the RPC passes it:
    counted while it runs, refused with UNAVAILABLE once the server is shutting down.
    """
    rpc = method.__name__
    gated = rpc not in _UNGATED

    @functools.wraps(method)
    async def wrapper(self: object, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        model = getattr(request, "model_name", "") or getattr(request, "name", "")
        gate = getattr(getattr(self, "dataplane", None), "gate", None) if gated else None
        admitted = False
        try:
            if gate is not None:
                gate.enter()
                admitted = True
            if isinstance(request, Undecodable):
                raise InvalidInput(f"{rpc} request is not a valid {request.message_type}: {request.error}")
            response = await method(self, request, context)
        except asyncio.CancelledError:  # the client cancelled or its deadline passed; nobody to answer
            _observe(rpc, model, grpc.StatusCode.CANCELLED, time.perf_counter() - start)
            raise
        except Exception as error:  # noqa: BLE001 - the one place every error is mapped
            code, message = status_of(error, model)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", rpc, extra={"fields": {"rpc": rpc, "model": quoted(model)}})
            _observe(rpc, model, code, time.perf_counter() - start)
            await context.abort(code, message)
        finally:
            if admitted:
                gate.leave()
        _observe(rpc, model, grpc.StatusCode.OK, time.perf_counter() - start)
        return response

    return wrapper  # type: ignore[return-value]


def observe(rpc: str, model: str, code: grpc.StatusCode, seconds: float) -> None:
    """Report an RPC outcome decided outside ``handled`` (e.g. refused by the auth interceptor)."""
    _observe(rpc, model, code, seconds)


def _observe(rpc: str, model: str, code: grpc.StatusCode, seconds: float) -> None:
    for observer in _observers:
        observer(rpc, model, code, seconds)
