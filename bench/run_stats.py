"""Where a served run's time goes: throughput beside the server's own ModelStatistics, per server variant.

For each model, batch 1 with 16 independent clients against one server at a time:
``--workers 1`` (dynamic batching on, off, and ``--instances 4``) and the defaults, each
row with the server's mean queue time, mean run time and the batch sizes it ran (from
ModelStatistics of the worker that answered), beside the same session run in process by
1 and 16 threads. A served run far longer than the in-process one points at the server's
process (threads, allocator, provider state), not at gRPC. Written for the GPU, where the
CPU-made defaults are least tested; ``--device cpu`` runs the same rows.

    python -m bench.run_stats [--device cuda|cpu] [--duration S] [--py-spy] [--variants A,B] [--warmup S] [--out FILE] MODEL [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from bench.gpu_check import gpu_name
from bench.loadgen import run_load
from bench.machine import machine_info
from bench.payloads import infer_request, manifest, model_input, model_root
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.server import runtime
from layerserve.server.launcher import ServerProcess

# Each variant: the serve flags, and environment variables for the server. Beside the defaults, the rows
# test one suspect each for a served run lasting longer than the same run in process
# (docs/BENCHMARKS.md, "On a GPU": "Not solved, for the next session with a GPU").
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "one_worker": (["--workers", "1"], {}),
    "one_worker_batching_off": (["--workers", "1", "--dynamic-batching", "false"], {}),
    "one_worker_4_instances": (["--workers", "1", "--instances", "4"], {}),
    # one run at a time per worker, the batcher merging the rest: no concurrent runs on one device
    "one_worker_1_instance": (["--workers", "1", "--instances", "1"], {}),
    # runs on the event loop: no hand-off of the GIL between the loop and an executor thread
    "one_worker_on_loop": (["--workers", "1", "--instances", "0"], {}),
    # cuDNN's heuristic algorithm choice instead of an exhaustive search for every new batch shape
    "one_worker_heuristic": (["--workers", "1", "--provider-options", "cudnn_conv_algo_search=HEURISTIC"], {}),
    "one_worker_1_instance_heuristic": (["--workers", "1", "--instances", "1", "--provider-options",
                                         "cudnn_conv_algo_search=HEURISTIC"], {}),
    # glibc's own malloc settings (per-thread arenas) instead of server/allocator.py's single arena
    "one_worker_glibc_malloc": (["--workers", "1"], {"MALLOC_TRIM_THRESHOLD_": str(128 << 10)}),
    "defaults": ([], {}),
}
DEFAULT_VARIANTS = ("one_worker", "one_worker_batching_off", "one_worker_4_instances", "defaults")
CLIENTS = 16


def server_counts(address: str, name: str) -> dict[str, object]:
    """The answering worker's ModelStatistics for ``name`` as raw totals (ns and counts)."""
    with grpc.insecure_channel(address) as channel:
        request = pb.ModelStatisticsRequest(name=name)
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(request, timeout=30).model_stats[0]
    return {"inferences": stats.inference_count, "executions": stats.execution_count,
            "queue": (stats.inference_stats.queue.ns, stats.inference_stats.queue.count),
            "run": (stats.inference_stats.compute_infer.ns, stats.inference_stats.compute_infer.count),
            "batches": {b.batch_size: b.compute_infer.count for b in stats.batch_stats}}


def statistics_between(before: dict[str, object] | None, after: dict[str, object]) -> dict[str, object]:
    """Mean queue and run time per execution, and runs per batch size, counted after ``before`` (None: since start).

    One worker answers both reads only with ``--workers 1``; with several, the rows are one worker's.
    """
    def minus(key: str) -> object:
        if before is None:
            return after[key]
        if isinstance(after[key], tuple):
            return tuple(a - b for a, b in zip(after[key], before[key], strict=True))  # type: ignore[arg-type]
        if isinstance(after[key], dict):
            return {size: count - before[key].get(size, 0) for size, count in after[key].items()}  # type: ignore[attr-defined,union-attr]
        return after[key] - before[key]  # type: ignore[operator]

    def mean_us(total: tuple[int, int]) -> float:
        return round(total[0] / max(1, total[1]) / 1e3, 1)

    batches = minus("batches")
    return {"inferences": minus("inferences"), "executions": minus("executions"),
            "queue_us": mean_us(minus("queue")), "run_us": mean_us(minus("run")),  # type: ignore[arg-type]
            "runs_by_batch_size": {str(size): count for size, count in batches.items() if count}}  # type: ignore[union-attr]


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


def measure(model: str, device: str, duration: float, py_spy_dir: Path | None,
            variants: Sequence[str] = DEFAULT_VARIANTS, warmup: float = 0.0) -> dict[str, object]:
    """The in-process rates and one row per server variant for ``model``."""
    root = model_root(model)
    folder, spec = manifest(root, model)
    feeds = model_input(spec, 1)
    full = folder / spec.full_model.path
    rows: dict[str, object] = {"in_process_1_thread_per_s": in_process_rate(full, device, feeds, 1),
                               f"in_process_{CLIENTS}_threads_per_s": in_process_rate(full, device, feeds, CLIENTS)}
    payload = infer_request(model, feeds).SerializeToString()
    for variant in variants:
        flags, env = VARIANTS[variant]
        with ServerProcess(root, extra_args=["--device", device, "--metrics-port", "-1", *flags],
                           ready_timeout=300, env=env) as server:
            before = None
            if warmup > 0:  # new batch shapes, allocator growth and kernel choice happen here, not counted below
                run_load(server.address, payload, CLIENTS, duration=warmup, channels=CLIENTS)
                before = server_counts(server.address, model)
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
                             "errors": result.errors,
                             **statistics_between(before, server_counts(server.address, model))}
        print(model, variant, rows[variant], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="models/ names or built bench models (resnet50_shaped)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of load per server variant")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of the same load before each measured cell, left out of its statistics")
    parser.add_argument("--py-spy", action="store_true", help="record the one-worker server with py-spy (on PATH)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated server variants, of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("bench/out/run_stats.json"))
    args = parser.parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants expects names of {', '.join(VARIANTS)}, got {args.variants!r}")
    if args.py_spy and shutil.which("py-spy") is None:
        parser.error("--py-spy expects py-spy on PATH, got none")
    spy_dir = args.out.parent if args.py_spy else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import onnxruntime  # the module that loads, which package metadata may not name (onnxruntime-gpu by --target)

    report: dict[str, object] = {"machine": machine_info(), "gpu": gpu_name(), "device": args.device,
                                 "onnxruntime": onnxruntime.__version__,
                                 "providers": onnxruntime.get_available_providers(), "clients": CLIENTS,
                                 "variants": variants, "warmup_s": args.warmup,
                                 "duration_s": args.duration, "models": {}}
    for model in args.models:  # written after each model, so a run cut short keeps what it measured
        report["models"][model] = measure(model, args.device, args.duration, spy_dir, variants, args.warmup)  # type: ignore[index]
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
