"""A lean closed-loop HTTP/REST load generator for ``POST /v2/models/<name>/infer``.

The REST twin of bench/loadgen.py, with the same design and the same LoadResult: the
request body is built once; ``concurrency`` coroutines each hold their own aiohttp
session with one keep-alive connection (independent clients, and what SO_REUSEPORT
workers spread); the generator's own CPU time is measured. Bodies use the binary
tensor extension by default (what tritonclient.http sends), or JSON ``data`` arrays.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time

import aiohttp
import numpy as np

from bench.loadgen import LoadResult, _percentile
from layerserve.proto.tensors import datatype_of


def rest_body(inputs: dict[str, np.ndarray], binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """An inference request body for ``inputs`` and its headers: binary tensors (outputs asked in binary
    too) or JSON ``data`` arrays (outputs in JSON)."""
    tensors, chunks = [], []
    for name, array in inputs.items():
        entry = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": binary}}).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(header))}


async def _run(url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float,
               warmup: float) -> LoadResult:
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=False),
                                      timeout=aiohttp.ClientTimeout(total=30)) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    response_bytes = 0
    recording = False
    stop_at = 0.0

    async def post(session: aiohttp.ClientSession) -> bytes:
        async with session.post(url, data=body, headers=headers) as reply:
            answer = await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {answer[:200]!r}")
            return answer

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, response_bytes
        while True:
            now = time.perf_counter()
            if recording and now >= stop_at:
                return
            try:
                answer = await post(session)
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                if recording:
                    errors += 1
                continue
            if recording:
                latencies.append(time.perf_counter() - now)
                response_bytes = len(answer)

    try:
        for session in sessions:  # connect every client before timing anything
            await post(session)
        tasks = [asyncio.create_task(worker(session)) for session in sessions]
        await asyncio.sleep(warmup)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        stop_at = started + duration
        recording = True
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for session in sessions:
            await session.close()
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


def run_rest_load(base_url: str, model: str, body: bytes, headers: dict[str, str], concurrency: int,
                  duration: float = 3.0, warmup: float = 0.5) -> LoadResult:
    """Drive ``POST {base_url}/v2/models/{model}/infer`` with ``concurrency`` clients for ``duration`` seconds.

    ``body`` and ``headers`` come from :func:`rest_body`. Non-200 answers count as errors, never
    in the latencies.
    """
    url = f"{base_url}/v2/models/{model}/infer"
    return asyncio.run(_run(url, body, headers, concurrency, duration, warmup))
