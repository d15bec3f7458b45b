"""A lean closed-loop gRPC load generator for ModelInfer (and any unary method).

The generator shares the machine's two cores with the server under test, so it
is built to cost as little as possible: requests are serialized once, sent as
raw bytes through a generic unary call (no protobuf work per request on either
side of the client), with ``concurrency`` coroutines, each on its own grpc.aio channel
(TCP connection) by default: independent clients hold a connection each, and a server
with SO_REUSEPORT workers only spreads connections, never one connection's requests. Its own CPU time is measured and reported, so a result can say
how much of the machine the caller took.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import grpc

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
    # Each channel its own TCP connection: gRPC otherwise shares subchannels between channels
    # of equal arguments, and a server with several SO_REUSEPORT workers sees one client.
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass
class LoadResult:
    """What one closed-loop run measured. Latencies in milliseconds."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # successful requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float  # user+system CPU the generator itself used
    response_bytes: int  # of one response

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def closed_loop(
    senders: list[Callable[[], Awaitable[bytes]]],
    concurrency: int,
    duration: float,
    warmup: float,
    failures: tuple[type[BaseException], ...],
) -> LoadResult:
    """``concurrency`` coroutines send back to back for ``warmup`` then ``duration`` seconds; coroutine
    ``i`` uses ``senders[i % len(senders)]`` (one per connection). A sender returns the answer's bytes
    and raises one of ``failures`` for a failed request, which is counted, never timed. Every sender is
    called once before anything is timed, so each connection is up."""
    latencies: list[float] = []
    errors = 0
    response_bytes = 0
    recording = False
    stop_at = 0.0

    async def worker(index: int) -> None:
        nonlocal errors, response_bytes
        send = senders[index % len(senders)]
        while True:
            now = time.perf_counter()
            if recording and now >= stop_at:
                return
            try:
                reply = await send()
            except failures:
                if recording:
                    errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - now)
                response_bytes = len(reply)

    for send in senders:
        await send()
    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    stop_at = started + duration
    recording = True
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    ordered = sorted(latencies)
    return LoadResult(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        throughput=len(latencies) / seconds if seconds > 0 else 0.0,
        p50_ms=_percentile(ordered, 0.50) * 1e3,
        p95_ms=_percentile(ordered, 0.95) * 1e3,
        p99_ms=_percentile(ordered, 0.99) * 1e3,
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        response_bytes=response_bytes,
    )


async def _run(
    address: str,
    payload: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    method: str,
    channels: int,
) -> LoadResult:
    opened = [grpc.aio.insecure_channel(address, options=_OPTIONS) for _ in range(max(1, channels))]
    calls = [c.unary_unary(method, request_serializer=None, response_deserializer=None) for c in opened]
    try:
        return await closed_loop([lambda call=call: call(payload, timeout=30) for call in calls], concurrency,
                                 duration, warmup, (grpc.aio.AioRpcError,))
    finally:
        for channel in opened:
            await channel.close()


def run_load(
    address: str,
    payload: bytes,
    concurrency: int,
    duration: float = 3.0,
    warmup: float = 0.5,
    method: str = MODEL_INFER,
    channels: int | None = None,
) -> LoadResult:
    """Drive ``method`` at ``address`` with ``concurrency`` requests in flight for ``duration`` seconds.

    ``payload`` is a serialized request (e.g. ``ModelInferRequest.SerializeToString()``).
    ``channels`` connections share the coroutines round-robin; the default (None) is one per
    coroutine, as ``concurrency`` independent clients would hold (the kernel spreads connections
    across SO_REUSEPORT workers, never the requests of one connection); 1 multiplexes them all.
    Requests that fail are counted in ``errors``, never in the latencies.
    """
    channels = concurrency if channels is None else channels
    return asyncio.run(_run(address, payload, concurrency, duration, warmup, method, channels))


async def _alternating(address: str, payloads: list[bytes], rounds: int, seconds: float,
                       method: str) -> list[list[float]]:
    channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    p50s: list[list[float]] = [[] for _ in payloads]
    try:
        for _ in range(rounds):
            for index, payload in enumerate(payloads):
                result = await closed_loop([lambda payload=payload: call(payload, timeout=30)], 1, seconds, min(0.2, seconds),
                                           (grpc.aio.AioRpcError,))
                p50s[index].append(result.p50_ms)
    finally:
        await channel.close()
    return p50s


def alternating_p50(address: str, payloads: list[bytes], rounds: int = 3, seconds: float = 1.0,
                    method: str = MODEL_INFER) -> list[list[float]]:
    """One client on one connection (so one worker of a SO_REUSEPORT group) sends each payload in turn for
    ``seconds``, ``rounds`` times: per payload, the p50 (ms) of each round. For ratios between two served
    names that must not differ by which worker or which moment of the machine's drift each one got."""
    return asyncio.run(_alternating(address, payloads, rounds, seconds, method))


def median_and_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements."""
    return statistics.median(values), min(values), max(values)
