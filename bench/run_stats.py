"""Where a served run's time goes: throughput beside the server's own ModelStatistics, per server variant.

For each model, batch 1 with 16 independent clients against one server at a time:
``--workers 1`` (dynamic batching on, off, and ``--instances 4``) and the defaults, each
row with the server's mean queue time, mean run time and the batch sizes it ran (from
ModelStatistics of the worker that answered), beside the same session run in process by
1 and 16 threads. A served run far longer than the in-process one points at the server's
process (threads, allocator, provider state), not at gRPC. Written for the GPU, where the
CPU-made defaults are least tested; ``--device cpu`` runs the same rows.

    python -m bench.run_stats [--device cuda|cpu] [--duration S] [--py-spy] [--out FILE] MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.loadgen import run_load
from bench.machine import machine_info
from bench.payloads import infer_request, manifest, model_input, model_root
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.server import runtime
from layerserve.server.launcher import ServerProcess

VARIANTS: list[tuple[str, list[str]]] = [
    ("one_worker", ["--workers", "1"]),
    ("one_worker_batching_off", ["--workers", "1", "--dynamic-batching", "false"]),
    ("one_worker_4_instances", ["--workers", "1", "--instances", "4"]),
    ("defaults", []),
]
CLIENTS = 16


def server_statistics(address: str, name: str) -> dict[str, object]:
    """Mean queue and run time per execution, and runs per batch size, as the answering worker counted them."""
    with grpc.insecure_channel(address) as channel:
        request = pb.ModelStatisticsRequest(name=name)
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(request, timeout=30).model_stats[0]

    def mean_us(duration: pb.StatisticDuration) -> float:
        return round(duration.ns / max(1, duration.count) / 1e3, 1)

    return {"inferences": stats.inference_count, "executions": stats.execution_count,
            "queue_us": mean_us(stats.inference_stats.queue), "run_us": mean_us(stats.inference_stats.compute_infer),
            "runs_by_batch_size": {str(b.batch_size): b.compute_infer.count for b in stats.batch_stats}}


def in_process_rate(path: Path, device: str, feeds: dict[str, np.ndarray], threads: int, seconds: float = 2.0) -> float:
    """Runs per second of one session (the server's options) called by ``threads`` threads at once."""
    graph = runtime.Graph(path, runtime.RuntimeOptions(device=device))
    graph.run(feeds)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def work(index: int) -> None:
        while time.perf_counter() < stop:
            graph.run(feeds)
            done[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return round(sum(done) / seconds, 1)


def measure(model: str, device: str, duration: float, py_spy_dir: Path | None) -> dict[str, object]:
    """The in-process rates and one row per server variant for ``model``."""
    root = model_root(model)
    folder, spec = manifest(root, model)
    feeds = model_input(spec, 1)
    full = folder / spec.full_model.path
    rows: dict[str, object] = {"in_process_1_thread_per_s": in_process_rate(full, device, feeds, 1),
                               f"in_process_{CLIENTS}_threads_per_s": in_process_rate(full, device, feeds, CLIENTS)}
    payload = infer_request(model, feeds).SerializeToString()
    for variant, flags in VARIANTS:
        with ServerProcess(root, extra_args=["--device", device, "--metrics-port", "-1", *flags],
                           ready_timeout=300) as server:
            spy = None
            if py_spy_dir is not None and variant == "one_worker" and server.process is not None:
                spy = subprocess.Popen(  # folded stacks of the worker while the load runs
                    ["py-spy", "record", "-p", str(server.process.pid), "-d", str(int(duration)), "-r", "200",
                     "-f", "raw", "--nonblocking", "-o", str(py_spy_dir / f"py-spy-{model}-{variant}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = run_load(server.address, payload, CLIENTS, duration=duration, channels=CLIENTS)
            if spy is not None:
                spy.wait(timeout=60)
            rows[variant] = {"img_per_s": round(result.throughput, 1), "p50_ms": round(result.p50_ms, 2),
                             "errors": result.errors, **server_statistics(server.address, model)}
        print(model, variant, rows[variant], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="models/ names or built bench models (resnet50_shaped)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load per server variant")
    parser.add_argument("--py-spy", action="store_true", help="record the one-worker server with py-spy (on PATH)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/run_stats.json"))
    args = parser.parse_args(argv)
    if args.py_spy and shutil.which("py-spy") is None:
        parser.error("--py-spy expects py-spy on PATH, got none")
    spy_dir = args.out.parent if args.py_spy else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "device": args.device, "clients": CLIENTS,
              "models": {model: measure(model, args.device, args.duration, spy_dir) for model in args.models}}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
