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

import aiohttp
import numpy as np

from bench.loadgen import LoadResult, closed_loop
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

    async def post(session: aiohttp.ClientSession) -> bytes:
        async with session.post(url, data=body, headers=headers) as reply:
            answer = await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {answer[:200]!r}")
            return answer

    try:
        return await closed_loop([lambda session=session: post(session) for session in sessions], concurrency,
                                 duration, warmup, (aiohttp.ClientError, RuntimeError, TimeoutError))
    finally:
        for session in sessions:
            await session.close()


def run_rest_load(base_url: str, model: str, body: bytes, headers: dict[str, str], concurrency: int,
                  duration: float = 3.0, warmup: float = 0.5) -> LoadResult:
    """Drive ``POST {base_url}/v2/models/{model}/infer`` with ``concurrency`` clients for ``duration`` seconds.

    ``body`` and ``headers`` come from :func:`rest_body`. Non-200 answers count as errors, never
    in the latencies.
    """
    url = f"{base_url}/v2/models/{model}/infer"
    return asyncio.run(_run(url, body, headers, concurrency, duration, warmup))
