"""Prometheus metrics, per model: requests and errors by status code, latency, queue time, batch size.

Served over HTTP by ``prometheus_client``'s WSGI app, at ``/metrics`` only: every
other path is 404, so an HTTP health probe pointed at this port by mistake fails
instead of always passing. With ``--workers N`` every worker writes to a shared
multiprocess directory and the parent serves the sum
(``prometheus_client.multiprocess``); ``serve_http`` picks the right collector.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

from .batching import BatchReport
from .endpoints import Endpoint
from .ports import PortInUse, in_use_message

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


# Model label values the process allows: the served names of every repository loaded in it (the
# metrics are process-wide). Nothing a client sends is added here.
_labelled: set[str] = set()


def allowed_model_labels() -> frozenset[str]:
    """Every value the ``model`` label may take in this process, besides ``""``."""
    return frozenset(_labelled)


class PrometheusObserver:
    """The server's Observer (server/observer.py) as Prometheus metrics.

    Label values for the model are only names the repository serves (``served``), so a client
    cannot add label sets: any other name a request carries is counted under ``model=""``.
    """

    def __init__(self, served: Iterable[str]) -> None:
        self._served = frozenset(served)
        _labelled.update(self._served)
        # Each label set's children, looked up once: ``labels()`` takes a lock and builds a key on every
        # call. Bounded like the labels: RPC names x served names x status codes.
        self._rpc_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._run_children: dict[str, tuple[Histogram, Histogram, Histogram]] = {}

    def rpc(self, rpc: str, model: str, code: str, seconds: float) -> None:
        """Count every RPC and time it."""
        children = self._rpc_children.get((rpc, model, code))
        if children is None:
            label = model if model in self._served else ""
            children = (REQUESTS.labels(rpc, label, code), LATENCY.labels(rpc, label))
            if label:  # an unknown name shares model="" and is not kept as a key
                self._rpc_children[rpc, model, code] = children
        requests, latency = children
        requests.inc()
        latency.observe(seconds)

    def run(self, endpoint: Endpoint, report: BatchReport) -> None:
        """Batch size, compute and queue time per run."""
        children = self._run_children.get(endpoint.name)
        if children is None:
            name = endpoint.name
            children = self._run_children[name] = (BATCH_SIZE.labels(name), COMPUTE.labels(name), QUEUE.labels(name))
        batch_size, compute, queue = children
        batch_size.observe(report.rows)
        compute.observe(report.compute_s)
        for seconds in report.queue_s:
            queue.observe(seconds)

    def dropped(self, endpoint: Endpoint, reason: str) -> None:
        """A queued request abandoned before its run ("cancelled", "deadline")."""
        DROPPED.labels(endpoint.name, reason).inc()


PATH = "/metrics"
_App = Callable[[dict, Callable[..., object]], Iterable[bytes]]


def _metrics_only(app: _App) -> _App:
    """``app`` at PATH; 404 for every other path."""

    def serve(environ: dict, start_response: Callable[..., object]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: this port serves {PATH} only\n".encode()]
        return app(environ, start_response)

    return serve


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_http(host: str, port: int) -> int:
    """Start the metrics HTTP server (PATH only) on a daemon thread; returns the bound port."""
    registry = None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
    app = make_wsgi_app(registry) if registry is not None else make_wsgi_app()
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    try:
        server = make_server(host, port, _metrics_only(app), server_class, handler_class=_Quiet)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(in_use_message(port, "metrics port")) from None
        raise
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return int(server.server_address[1])
