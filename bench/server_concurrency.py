"""Measure the server's concurrency design: which configuration serves batch-1 traffic best.

Each configuration is a real server process (``layerserve serve`` with flags, or
``--sync``: a plain thread-pool ``grpc.server`` over the same endpoints and
codec, for the sync-vs-asyncio comparison) driven by bench.loadgen's
closed-loop client with pre-serialized ModelInfer requests. Results go to
stdout as a Markdown table (docs/BENCHMARKS.md, "Server concurrency design").

    python -m bench.server_concurrency --model digits_cnn --concurrency 1 16 --duration 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from bench.loadgen import run_load
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import manifest as manifests
from layerserve.proto import tensors
from layerserve.server.launcher import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent

# name -> `layerserve serve` flags ("sync:N" runs the thread-pool reference server with N threads).
CONFIGS: dict[str, list[str]] = {
    "sync, 8 threads, no batching": ["sync:8"],
    "aio, no batching, 1 instance": ["--dynamic-batching", "false", "--instances", "1"],
    "aio, no batching, 2 instances": ["--dynamic-batching", "false", "--instances", "2"],
    "aio, batching 0 us, 1 instance": ["--dynamic-batching", "true", "--max-queue-delay-us", "0", "--instances", "1"],
    "aio, batching 0 us, 2 instances": ["--dynamic-batching", "true", "--max-queue-delay-us", "0", "--instances", "2"],
    "aio, batching 500 us, 2 instances": ["--dynamic-batching", "true", "--max-queue-delay-us", "500",
                                          "--instances", "2"],
    "aio, batching 0 us, 2 instances, 2 intra-op spinning": [
        "--dynamic-batching", "true", "--max-queue-delay-us", "0", "--instances", "2",
        "--intra-op-threads", "2", "--allow-spinning", "true"],
    "aio, no batching, on the loop": ["--dynamic-batching", "false", "--instances", "0"],
    "aio, batching 0 us, on the loop": ["--dynamic-batching", "true", "--max-queue-delay-us", "0", "--instances", "0"],
    "aio, batching 0 us, 2 workers": ["--dynamic-batching", "true", "--max-queue-delay-us", "0", "--instances", "1",
                                      "--workers", "2"],
}


def request_bytes(models: Path, model: str, batch: int) -> bytes:
    version = manifests.version_folders(models / model)[-1]
    manifest = manifests.read_manifest(version)
    spec = manifest.inputs[0]
    x = np.random.default_rng(0).standard_normal((batch, *spec.shape[1:])).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    tensors.add_raw_input(request, spec.name, x)
    return request.SerializeToString()


def sync_server(models: Path, port: int, threads: int) -> None:
    """The reference: grpc.server on a thread pool, same endpoints and codec, no batching."""
    import grpc

    from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
    from layerserve.proto.tensors import decode_inputs, encode_outputs
    from layerserve.server import runtime
    from layerserve.server.repository import Repository

    repository = Repository.load(models, runtime.RuntimeOptions())

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        def ServerReady(self, request, context):
            return pb.ServerReadyResponse(ready=True)

        def ModelInfer(self, request, context):
            endpoint = repository.endpoint(request.model_name, request.model_version)
            inputs = decode_inputs(request)
            endpoint.validate(inputs)
            response = pb.ModelInferResponse(model_name=endpoint.name, model_version=endpoint.version)
            encode_outputs(response, endpoint.run(inputs))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(threads), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class SyncProcess(ServerProcess):
    def __init__(self, models: Path, threads: int) -> None:
        super().__init__(models)
        self.threads = threads

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.server_concurrency", "--serve-sync", str(self.port),
                "--threads", str(self.threads), "--models", str(self.models)]


def in_server(address: str, model: str) -> str:
    """Average time a request spent inside the server vs in its (batched) run, from ModelStatistics."""
    import grpc

    from layerserve.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats[0].inference_stats
    request = stats.success.ns / max(1, stats.success.count) / 1e3
    run = stats.compute_infer.ns / max(1, stats.compute_infer.count) / 1e3
    return f"{request:.0f} / {run:.0f}"


def compute_only(models: Path, model: str, batch: int, repeats: int = 2000) -> float:
    """Median ONNX Runtime time of one in-process run (seconds), with the server's session options."""
    from layerserve.server import runtime
    from layerserve.server.repository import Repository

    endpoint = Repository.load(models, runtime.RuntimeOptions()).endpoint(model)
    request = pb.ModelInferRequest.FromString(request_bytes(models, model, batch))
    x = tensors.decode_input(request.inputs[0], request.raw_input_contents[0])
    feeds = {request.inputs[0].name: x}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        endpoint.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--configs", nargs="*", help="substrings of configuration names to run (default all)")
    parser.add_argument("--serve-sync", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sync:
        sync_server(args.models, args.serve_sync, args.threads)
        return 0

    payload = request_bytes(args.models, args.model, args.batch)
    compute = compute_only(args.models, args.model, args.batch)
    print(f"in-process ONNX Runtime, {args.model} batch {args.batch}: {compute * 1e6:.0f} us median\n")
    print("| configuration | " + " | ".join(f"c={c} req/s | c={c} p50 ms" for c in args.concurrency)
          + " | in server: request / run µs |")
    print("|---|" + "---|---|" * len(args.concurrency) + "---|")
    for name, flags in CONFIGS.items():
        if args.configs and not any(part in name for part in args.configs):
            continue
        if flags[0].startswith("sync:"):
            server = SyncProcess(args.models, int(flags[0].split(":")[1]))
        else:
            server = ServerProcess(args.models, ["--log-level", "WARNING", *flags])
        cells = []
        with server:
            for concurrency in args.concurrency:
                result = run_load(server.address, payload, concurrency, duration=args.duration, warmup=1.0)
                cells += [f"{result.throughput:.0f}", f"{result.p50_ms:.2f}"]
            inside = "" if isinstance(server, SyncProcess) else in_server(server.address, args.model)
        print(f"| {name} | " + " | ".join(cells) + f" | {inside} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
