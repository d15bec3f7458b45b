"""Soak: minutes of steady load at a fraction of the measured peak; errors, wrong answers and RSS.

Starts ``layerserve serve`` on a free loopback port, measures the closed-loop peak
(bench/loadgen.py, c=16) for one batch-1 ModelInfer of ``--model``, then sends
requests open-loop at ``--fraction`` of that peak for ``--minutes``, checking
every answer against in-process ONNX Runtime and sampling the server's resident
memory (VmRSS in /proc/PID/status) every few seconds. Passes with zero errors,
zero wrong answers and RSS growth under ``--max-growth`` (measured from the
first sample after one minute of load, when allocator pools have filled)::

    python -m bench.soak --minutes 10 --out soak.json
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

from bench.loadgen import MODEL_INFER, run_load
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server.launcher import ServerProcess

SAMPLE_EVERY_S = 5.0
WARMUP_S = 60.0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


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


async def _soak(address: str, pid: int, payload: bytes, expected: np.ndarray, rate: float, seconds: float,
                concurrency: int) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(address)
    call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
    counts = {"ok": 0, "errors": 0, "wrong": 0}
    error_codes: dict[str, int] = {}
    per_minute: list[int] = []
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    next_index = 0

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

    async def sampler() -> None:
        while time.monotonic() - started < seconds:
            samples.append((round(time.monotonic() - started, 1), rss_kib(pid)))
            await asyncio.sleep(SAMPLE_EVERY_S)

    try:
        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
        samples.append((round(time.monotonic() - started, 1), rss_kib(pid)))
    finally:
        await channel.close()
    elapsed = time.monotonic() - started
    baseline = next((kib for at, kib in samples if at >= min(WARMUP_S, seconds / 2)), samples[0][1])
    final = samples[-1][1]
    return {
        "seconds": round(elapsed, 1),
        "target_rate": round(rate, 1),
        "achieved_rate": round(counts["ok"] / elapsed, 1),
        "ok": counts["ok"],
        "errors": counts["errors"],
        "error_codes": error_codes,
        "wrong_answers": counts["wrong"],
        "ok_per_minute": per_minute,
        "rss_kib_start": samples[0][1],
        "rss_kib_baseline": baseline,
        "rss_kib_final": final,
        "rss_kib_max": max(kib for _, kib in samples),
        "rss_growth_from_baseline": round((final - baseline) / baseline, 4),
        "rss_growth_from_start": round((final - samples[0][1]) / samples[0][1], 4),
        "rss_samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fraction", type=float, default=0.8, help="of the measured peak throughput")
    parser.add_argument("--peak-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32, help="requests that may be in flight at once")
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    payload, expected = request_and_answer(args.models, args.model)
    with ServerProcess(args.models, ["--log-level", "WARNING"]) as server:
        peak = run_load(server.address, payload, concurrency=16, duration=args.peak_seconds, warmup=2.0)
        rate = args.fraction * peak.throughput
        result = asyncio.run(_soak(server.address, server.process.pid, payload, expected, rate,
                                   args.minutes * 60, args.concurrency))
        result = {"model": args.model, "peak_throughput": round(peak.throughput, 1), "peak_errors": peak.errors,
                  "fraction": args.fraction, **result, "server_alive": server.process.poll() is None}
    summary = {k: v for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = (result["errors"] == 0 and result["wrong_answers"] == 0 and result["server_alive"]
          and result["rss_growth_from_baseline"] < args.max_growth)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
