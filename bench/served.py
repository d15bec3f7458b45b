"""Served measurements: one endpoint through bench.loadgen, and the client-side chain.

A client chain calls every block in turn, decoding each response and sending its
outputs as the next block's inputs (activations cross the wire twice per boundary);
it is one user action, timed end to end, with the bytes it moved counted.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass

import grpc
import numpy as np

from bench.loadgen import MODEL_INFER, LoadResult, run_load
from bench.machine import cpu_ticks, process_cpu_s, stolen_share
from bench.payloads import infer_request
from bench.rest_loadgen import rest_body, run_rest_load
from layerserve.proto import grpc_service_pb2 as pb

_OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


@dataclass
class Cell:
    """One served measurement: the load result and the request/response bytes one action moved."""

    result: LoadResult
    bytes_moved: int
    server_cpu_s: float = float("nan")
    warmup_s: float = 0.0
    stolen: float = float("nan")  # share of the machine's CPU time the hypervisor took meanwhile (bench.machine)

    def record(self) -> dict[str, float | int]:
        """The JSON-ready numbers: the load result plus bytes moved, server CPU, generator CPU per request."""
        result = self.result
        return {
            **result.as_dict(),
            "bytes_moved": self.bytes_moved,
            "server_cpu_s": self.server_cpu_s,
            "client_cpu_us_per_request": 1e6 * result.client_cpu_s / max(result.requests, 1),
            "client_core_share": result.client_cpu_s / result.seconds if result.seconds else 0.0,
            # Server CPU was read around warm-up and timed part alike, both at about the same rate.
            "server_cpu_us_per_request": 1e6 * self.server_cpu_s
            / max(result.throughput * (result.seconds + self.warmup_s), 1e-9),
            "stolen": self.stolen,
        }


def served(address: str, name: str, inputs: dict[str, np.ndarray], concurrency: int, duration: float,
           warmup: float, server_pid: int | None = None) -> Cell:
    """Closed-loop load on the served ``name`` with ``concurrency`` requests in flight (bench.loadgen).

    With ``server_pid``, ``server_cpu_s`` is the CPU the server process used over the whole
    call (connect, warm-up and timed part; per request, divide by all requests sent).
    """
    payload = infer_request(name, inputs).SerializeToString()
    before, ticks = process_cpu_s(server_pid) if server_pid else float("nan"), cpu_ticks()
    result = run_load(address, payload, concurrency, duration=duration, warmup=warmup)
    after = process_cpu_s(server_pid) if server_pid else float("nan")
    return Cell(result, len(payload) + result.response_bytes, after - before, warmup, stolen_share(ticks, cpu_ticks()))


def served_rest(base_url: str, name: str, inputs: dict[str, np.ndarray], concurrency: int, duration: float,
                warmup: float, server_pid: int | None = None, binary: bool = True) -> Cell:
    """Closed-loop load on ``POST {base_url}/v2/models/{name}/infer`` (bench.rest_loadgen): binary tensors as
    tritonclient.http sends them, or JSON ``data`` arrays; server CPU as :func:`served` reads it."""
    body, headers = rest_body(inputs, binary)
    before, ticks = process_cpu_s(server_pid) if server_pid else float("nan"), cpu_ticks()
    result = run_rest_load(base_url, name, body, headers, concurrency, duration=duration, warmup=warmup)
    after = process_cpu_s(server_pid) if server_pid else float("nan")
    return Cell(result, len(body) + result.response_bytes, after - before, warmup, stolen_share(ticks, cpu_ticks()))


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def _client_chain(address: str, blocks: list[tuple[str, list[str]]], inputs: dict[str, np.ndarray],
                        duration: float, warmup: float) -> Cell:
    first = infer_request(blocks[0][0], inputs).SerializeToString()
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)

        async def action() -> tuple[int, int]:
            payload, moved, reply = first, 0, b""
            for index in range(len(blocks)):
                reply = await call(payload, timeout=60)
                moved += len(payload) + len(reply)
                if index + 1 < len(blocks):
                    response = pb.ModelInferResponse.FromString(reply)
                    following, names = blocks[index + 1]
                    request = pb.ModelInferRequest(model_name=following)
                    for output, input_name in zip(response.outputs, names, strict=True):
                        request.inputs.add(name=input_name, datatype=output.datatype, shape=output.shape)
                    request.raw_input_contents.extend(response.raw_output_contents)
                    payload = request.SerializeToString()
            return moved, len(reply)

        moved, last = await action()
        warm_until = time.perf_counter() + warmup
        while time.perf_counter() < warm_until:
            await action()
        latencies, errors = [], 0
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        while time.perf_counter() - started < duration or not latencies:
            begin = time.perf_counter()
            try:
                moved, last = await action()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - begin)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    ordered = sorted(latencies)
    result = LoadResult(
        concurrency=1, requests=len(latencies), errors=errors, seconds=seconds,
        throughput=len(latencies) / seconds,
        p50_ms=_percentile(ordered, 0.50) * 1e3, p95_ms=_percentile(ordered, 0.95) * 1e3,
        p99_ms=_percentile(ordered, 0.99) * 1e3,
        client_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        response_bytes=last,
    )
    return Cell(result, moved)


def client_chain(address: str, blocks: list[tuple[str, list[str]]], inputs: dict[str, np.ndarray],
                 duration: float, warmup: float) -> Cell:
    """One client calling every block in turn (c=1); ``blocks`` are (served name, input names) in chain order.

    Each block's outputs feed the next block's inputs by position, bytes untouched.
    ``bytes_moved`` sums every request and response of one action.
    """
    return asyncio.run(_client_chain(address, blocks, inputs, duration, warmup))
