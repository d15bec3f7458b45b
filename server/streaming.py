"""Triton's streaming inference (``ModelStreamInfer``): many requests and their answers on one gRPC stream.

tritonclient's ``start_stream`` / ``async_stream_infer`` (and ``stream_infer`` of its aio client)
send inference requests on one bidirectional stream and take the answers through a callback.
Each request is answered when its run ends, in the order runs end, each answer carrying its
request's ``id``; at most IN_FLIGHT of one stream's requests run, wait or wait to be sent at a time, so
a stream whose answers go unread holds at most that many answers. An error answers its own request with ``error_message`` (the message
a unary ModelInfer aborts with) and the stream goes on, as Triton does. Every request passes the
drain gate and is counted by the observer as a ``ModelStreamInfer`` RPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from layerserve.proto import grpc_service_pb2 as pb

from .dataplane import DataPlane
from .errors import InvalidInput, quoted, status_of
from .rpc import Undecodable

log = logging.getLogger(__name__)

RPC = "ModelStreamInfer"
# Requests of one stream running or waiting at once; the stream reads no further until one ends.
IN_FLIGHT = 64

Infer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]


async def answers(requests: AsyncIterator[pb.ModelInferRequest | Undecodable], infer: Infer,
                  dataplane: DataPlane) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Answer each of ``requests`` with ``infer`` (what ModelInfer does), yielding answers as runs end."""
    ready: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    room = asyncio.Semaphore(IN_FLIGHT)
    running: set[asyncio.Task] = set()

    async def answer(request: pb.ModelInferRequest | Undecodable) -> None:
        start = time.perf_counter()
        model = getattr(request, "model_name", "")
        admitted = False
        try:
            dataplane.gate.enter()
            admitted = True
            if isinstance(request, Undecodable):
                raise InvalidInput(f"{RPC} request is not a valid {request.message_type}: {request.error}")
            response = pb.ModelStreamInferResponse(infer_response=await infer(request))
            code = grpc.StatusCode.OK
        except asyncio.CancelledError:  # the stream ended (the client went away) with this request unanswered
            dataplane.observer.rpc(RPC, model, grpc.StatusCode.CANCELLED.name, time.perf_counter() - start)
            raise
        except Exception as error:  # noqa: BLE001 - mapped in one place, answered on the stream
            code, message = status_of(error, model)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", RPC, extra={"fields": {"rpc": RPC, "model": quoted(model)}})
            response = pb.ModelStreamInferResponse(error_message=message)
            response.infer_response.id = getattr(request, "id", "")
        finally:
            if admitted:
                dataplane.gate.leave()
        dataplane.observer.rpc(RPC, model, code.name, time.perf_counter() - start)
        ready.put_nowait(response)

    async def read() -> None:
        try:
            async for request in requests:
                await room.acquire()
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
        finally:
            ready.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await ready.get()) is not None:
            yield response
            room.release()  # an answer's room frees once it is sent: unread answers count against IN_FLIGHT
        await reader  # the client's stream may have ended in an error: it ends this one too
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
