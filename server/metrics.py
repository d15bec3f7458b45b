"""Prometheus metrics, per model: requests and errors by status code, latency, queue time, batch size.

Served over HTTP by ``prometheus_client``. With ``--workers N`` every worker
writes to a shared multiprocess directory and the parent serves the sum
(``prometheus_client.multiprocess``); ``serve_http`` picks the right collector.
"""

from __future__ import annotations

import os

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess

from .batching import BatchReport
from .endpoints import Endpoint

_LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "layerserve_requests", "RPCs handled, by RPC, model and gRPC status code", ["rpc", "model", "code"]
)
LATENCY = Histogram(
    "layerserve_request_duration_seconds", "Time from RPC start to answer (or error), by RPC and model",
    ["rpc", "model"], buckets=_LATENCY_BUCKETS,
)
QUEUE = Histogram(
    "layerserve_queue_duration_seconds", "Time a request waited before its (batched) run started, by model",
    ["model"], buckets=_LATENCY_BUCKETS,
)
COMPUTE = Histogram(
    "layerserve_compute_duration_seconds", "ONNX Runtime time of one (batched) run, by model",
    ["model"], buckets=_LATENCY_BUCKETS,
)
DROPPED = Counter(
    "layerserve_dropped_requests", "Requests dropped unrun because the client cancelled or the deadline passed",
    ["model", "reason"],
)
BATCH_SIZE = Histogram(
    "layerserve_batch_size", "Rows per model run after dynamic batching, by model", ["model"], buckets=_BATCH_BUCKETS
)


def observe_rpc(rpc: str, model: str, code: grpc.StatusCode, seconds: float) -> None:
    """errors.Observer: count every RPC and time it. Unknown names are not kept as labels."""
    if code is grpc.StatusCode.NOT_FOUND:
        model = ""
    REQUESTS.labels(rpc, model, code.name).inc()
    LATENCY.labels(rpc, model).observe(seconds)


def observe_run(endpoint: Endpoint, report: BatchReport) -> None:
    """DataPlane batch observer: batch size, compute and queue time per run."""
    BATCH_SIZE.labels(endpoint.name).observe(report.rows)
    COMPUTE.labels(endpoint.name).observe(report.compute_s)
    queue = QUEUE.labels(endpoint.name)
    for seconds in report.queue_s:
        queue.observe(seconds)


def observe_drop(endpoint: Endpoint, reason: str) -> None:
    """DataPlane drop observer: a queued request abandoned before its run ("cancelled", "deadline")."""
    DROPPED.labels(endpoint.name, reason).inc()


def serve_http(host: str, port: int) -> int:
    """Start the metrics HTTP server on a daemon thread; returns the bound port."""
    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=host, **({"registry": registry} if registry else {}))
    return int(server.server_address[1])
