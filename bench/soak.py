"""Soak: minutes of steady load at a fraction of the measured peak; errors, wrong answers, RSS, /metrics.

Starts ``layerserve serve`` on a free loopback port (default workers), measures the
closed-loop peak (bench/loadgen.py, c=16) for one batch-1 ModelInfer of ``--model``,
then sends requests open-loop at ``--fraction`` of that peak for ``--minutes``,
checking every answer against in-process ONNX Runtime and sampling the server's
resident memory (VmRSS of the server and its worker processes, summed) and the
size of its ``/metrics`` page every few seconds. With ``--hostile 0.1`` a tenth of
the requests are hostile: an unknown model name never sent before, a malformed
tensor, or bytes that are no request; each must be refused with NOT_FOUND or
INVALID_ARGUMENT and a message of at most 1024 bytes. Passes with zero errors,
zero wrong answers, zero hostile requests answered otherwise, and RSS and
/metrics growth under ``--max-growth`` (measured from the first sample after one
minute of load, when allocator pools have filled)::

    python -m bench.soak --minutes 10 --hostile 0.1 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.fuzz import MAX_DETAILS_BYTES, metrics_bytes
from bench.loadgen import MODEL_INFER, run_load
from bench.machine import tree_rss_kib
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server.launcher import ServerProcess

SAMPLE_EVERY_S = 5.0
WARMUP_S = 60.0
HOSTILE_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})


def hostile_request(index: int, valid: bytes) -> bytes:
    """The ``index``-th hostile request: an unknown name never used before (with a malformed tensor every
    other time), a valid request's tensor with its shape declared wrong, or bytes that are no request."""
    kind = index % 4
    if kind in (0, 1):
        request = pb.ModelInferRequest(model_name=f"soak-unknown-{index}-" + "n" * (index % 300))
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 1, 32, 32])
        if kind == 1:
            tensor.shape[:] = [3, 5]  # and no contents: still NOT_FOUND, the name is looked up first
        else:
            request.raw_input_contents.append(b"\0" * 4096)
        return request.SerializeToString()
    if kind == 2:
        request = pb.ModelInferRequest.FromString(valid)
        request.inputs[0].shape[0] = 2  # declares twice the rows the raw contents hold
        return request.SerializeToString()
    return b"\xff\x01" + index.to_bytes(8, "little")  # not a ModelInferRequest


def request_and_answer(models: Path, model: str, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A serialized batch-1 request for ``model`` and the logits ONNX Runtime gives for it."""
    folder = version_folders(models / model)[-1]
    manifest = read_manifest(folder)
    spec = manifest.inputs[0]
    array = np.random.default_rng(seed).standard_normal((1, *spec.shape[1:])).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=spec.name, datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    session = ort.InferenceSession(str(folder / manifest.full_model.path), providers=["CPUExecutionProvider"])
    return request.SerializeToString(), session.run(None, {spec.name: array})[0]


async def _soak(address: str, pid: int, metrics_port: int, payload: bytes, expected: np.ndarray, rate: float,
                seconds: float, concurrency: int, hostile: float) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(address)
    call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
    counts = {"ok": 0, "errors": 0, "wrong": 0, "hostile": 0, "hostile_unexpected": 0}
    error_codes: dict[str, int] = {}
    hostile_codes: dict[str, int] = {}
    longest_details = 0
    per_minute: list[int] = []
    samples: list[tuple[float, int]] = []
    metrics_samples: list[tuple[float, int]] = []
    started = time.monotonic()
    next_index = 0
    every = round(1 / hostile) if hostile > 0 else 0

    async def hostile_one(index: int) -> None:
        nonlocal longest_details
        counts["hostile"] += 1
        try:
            await call(hostile_request(index, payload), timeout=30)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        hostile_codes[code.name] = hostile_codes.get(code.name, 0) + 1
        longest_details = max(longest_details, len(details.encode()))
        if code not in HOSTILE_CODES or len(details.encode()) > MAX_DETAILS_BYTES:
            counts["hostile_unexpected"] += 1

    async def worker() -> None:
        nonlocal next_index
        while True:
            index = next_index
            next_index += 1
            due = started + index / rate
            if due - started >= seconds:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if every and index % every == every - 1:
                await hostile_one(index)
                continue
            try:
                reply = await call(payload, timeout=30)
            except grpc.aio.AioRpcError as error:
                counts["errors"] += 1
                error_codes[error.code().name] = error_codes.get(error.code().name, 0) + 1
                continue
            response = pb.ModelInferResponse.FromString(reply)
            got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(expected.shape)
            if np.allclose(got, expected, rtol=1e-4, atol=1e-5):
                counts["ok"] += 1
                minute = int((time.monotonic() - started) // 60)
                per_minute.extend([0] * (minute + 1 - len(per_minute)))
                per_minute[minute] += 1
            else:
                counts["wrong"] += 1

    async def sample() -> None:
        at = round(time.monotonic() - started, 1)
        samples.append((at, tree_rss_kib(pid)))
        if metrics_port > 0:
            size = await asyncio.get_running_loop().run_in_executor(None, metrics_bytes, metrics_port)
            metrics_samples.append((at, size))

    async def sampler() -> None:
        while time.monotonic() - started < seconds:
            await sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    try:
        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
        await sample()
    finally:
        await channel.close()
    elapsed = time.monotonic() - started
    warm = min(WARMUP_S, seconds / 2)
    baseline = next((kib for at, kib in samples if at >= warm), samples[0][1])
    final = samples[-1][1]
    metrics_base = next((size for at, size in metrics_samples if at >= warm), 0)
    metrics_final = metrics_samples[-1][1] if metrics_samples else 0
    return {
        "seconds": round(elapsed, 1),
        "target_rate": round(rate, 1),
        "achieved_rate": round(counts["ok"] / elapsed, 1),
        "ok": counts["ok"],
        "errors": counts["errors"],
        "error_codes": error_codes,
        "wrong_answers": counts["wrong"],
        "hostile": counts["hostile"],
        "hostile_codes": hostile_codes,
        "hostile_unexpected": counts["hostile_unexpected"],
        "longest_status_message_bytes": longest_details,
        "ok_per_minute": per_minute,
        "rss_kib_start": samples[0][1],
        "rss_kib_baseline": baseline,
        "rss_kib_final": final,
        "rss_kib_max": max(kib for _, kib in samples),
        "rss_growth_from_baseline": round((final - baseline) / baseline, 4),
        "rss_growth_from_start": round((final - samples[0][1]) / samples[0][1], 4),
        "metrics_bytes_baseline": metrics_base,
        "metrics_bytes_final": metrics_final,
        "metrics_bytes_max": max((size for _, size in metrics_samples), default=0),
        "metrics_growth_from_baseline": round((metrics_final - metrics_base) / metrics_base, 4) if metrics_base else 0,
        "rss_samples": samples,
        "metrics_samples": metrics_samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fraction", type=float, default=0.8, help="of the measured peak throughput")
    parser.add_argument("--peak-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32, help="requests that may be in flight at once")
    parser.add_argument("--max-growth", type=float, default=0.05, help="of RSS and of /metrics, after the first minute")
    parser.add_argument("--hostile", type=float, default=0.0, help="fraction of hostile requests (e.g. 0.1)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    payload, expected = request_and_answer(args.models, args.model)
    with ServerProcess(args.models, ["--log-level", "WARNING"]) as server:
        peak = run_load(server.address, payload, concurrency=16, duration=args.peak_seconds, warmup=2.0)
        rate = args.fraction * peak.throughput
        result = asyncio.run(_soak(server.address, server.process.pid, server.metrics_port, payload, expected, rate,
                                   args.minutes * 60, args.concurrency, args.hostile))
        result = {"model": args.model, "peak_throughput": round(peak.throughput, 1), "peak_errors": peak.errors,
                  "fraction": args.fraction, **result, "server_alive": server.process.poll() is None}
    summary = {k: v for k, v in result.items() if k not in ("rss_samples", "metrics_samples")}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = (result["errors"] == 0 and result["wrong_answers"] == 0 and result["server_alive"]
          and result["hostile_unexpected"] == 0
          and result["rss_growth_from_baseline"] < args.max_growth
          and result["metrics_growth_from_baseline"] < args.max_growth)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
