"""The RPC plumbing every servicer method shares: error mapping, drain gate, observer, lenient parsing.

``handled`` (the decorator every servicer method wears) aborts the RPC with the
status :func:`errors.status_of` gives (domain errors their own, codec errors and
undecodable request bytes INVALID_ARGUMENT, anything unexpected INTERNAL with a
logged traceback), so the server keeps serving after every error; it passes each
RPC through the DataPlane's drain gate and reports its outcome to the DataPlane's
observer. ``add_service`` registers a generated servicer with request
deserializers that never raise: gRPC answers a deserializer's exception with
UNKNOWN, and undecodable bytes are a client mistake.
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

from .errors import InvalidInput, quoted, status_of

log = logging.getLogger(__name__)

_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])

# Probes answer while the server drains (ServerReady then says false): they hold nothing.
_UNGATED = frozenset({"ServerLive", "ServerReady", "ModelReady"})


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    message_type: str
    error: str


def handled(method: _Method) -> _Method:
    """Wrap an async servicer method whose servicer has a ``dataplane``: errors become statuses,
    the drain gate admits or refuses the RPC, and the observer sees its outcome."""
    rpc = method.__name__
    gated = rpc not in _UNGATED

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        model = getattr(request, "model_name", "") or getattr(request, "name", "")
        observer = self.dataplane.observer
        gate = self.dataplane.gate if gated else None
        admitted = False
        try:
            if gate is not None:
                gate.enter()
                admitted = True
            if isinstance(request, Undecodable):
                raise InvalidInput(f"{rpc} request is not a valid {request.message_type}: {request.error}")
            response = await method(self, request, context)
        except asyncio.CancelledError:  # the client cancelled or its deadline passed; nobody to answer
            observer.rpc(rpc, model, grpc.StatusCode.CANCELLED.name, time.perf_counter() - start)
            raise
        except Exception as error:  # noqa: BLE001 - the one place every error is mapped
            code, message = status_of(error, model)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", rpc, extra={"fields": {"rpc": rpc, "model": quoted(model)}})
            observer.rpc(rpc, model, code.name, time.perf_counter() - start)
            await context.abort(code, message)
        finally:
            if admitted:
                gate.leave()
        observer.rpc(rpc, model, grpc.StatusCode.OK.name, time.perf_counter() - start)
        return response

    return wrapper  # type: ignore[return-value]


def lenient(parse: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    """A request deserializer that returns Undecodable instead of raising."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return Undecodable(message_type, str(error))

    return deserialize


class _Captured:
    """Stands in for a server so a generated ``add_*_to_server`` hands over its method handlers."""

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_service(add_to_server: Callable[[object, object], None], servicer: object, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as the generated ``add_to_server`` would, but with lenient request deserializers."""
    captured = _Captured()
    add_to_server(servicer, captured)
    handlers = {}
    for name, handler in captured.handlers.items():
        parse = handler.request_deserializer
        message_type = getattr(parse, "__qualname__", name).removesuffix(".FromString")
        handlers[name] = handler._replace(request_deserializer=lenient(parse, message_type))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)
