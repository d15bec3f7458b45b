"""Build and run the gRPC server: services, health, reflection, metrics, SIGTERM drain, workers.

One process runs one ``grpc.aio`` server on one event loop; ONNX Runtime runs on
``instances`` worker threads (docs/BENCHMARKS.md, "Server concurrency design",
has the measurements behind this). ``--workers N`` (default: one per usable core) starts N such processes on
one port through SO_REUSEPORT; the parent serves their summed metrics and
forwards SIGTERM.

SIGTERM (or SIGINT): health turns NOT_SERVING, the server stops accepting RPCs,
in-flight ones (batched ones included) get ``grace_s`` to finish, the process
exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from layerserve.proto import _pool
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc

from . import allocator, cpus, errors, logs, metrics, runtime, security
from .dataplane import DataPlane
from .errors import DeviceUnavailable
from .grpc_inference import InferenceServicer
from .grpc_layers import LayerServicer
from .launcher import free_port
from .repository import Repository
from .settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Running:
    """A started server: its bound ports and parts, for the caller to stop."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    dataplane: DataPlane
    health: health.aio.HealthServicer

    async def stop(self, grace_s: float) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace_s``."""
        self.dataplane.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.dataplane.close()


def _reflection_pool() -> object:
    """Our private pool, holding health and reflection too so reflection can describe every service."""
    for module in (health_pb2, reflection_pb2):
        try:
            _pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            _pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _pool.POOL


def load(settings: Settings) -> DataPlane:
    """Load the repository and build the core; DeviceUnavailable when the device cannot be used."""
    options = runtime.RuntimeOptions(settings.device, settings.intra_op_threads, settings.allow_spinning)
    overrides = {
        "dynamic_batching": settings.dynamic_batching,
        "max_batch_size": settings.max_batch_size,
        "max_queue_delay_us": settings.max_queue_delay_us,
    }
    repository = Repository.load(settings.models, options, overrides, verify=settings.verify)
    if settings.device == "auto":
        for model in repository.versions():
            if model.ready and runtime.CUDA not in model.providers:
                log.warning(
                    "--device auto: CUDA did not load, serving on the CPU",
                    extra={"fields": {"model": model.name, "providers": model.providers,
                                      "available": runtime.available_providers()}},
                )
    return DataPlane(repository, settings.instance_count, settings.max_queue_size, settings.max_message_bytes)


class _Captured:
    """Stands in for a server so a generated ``add_*_to_server`` hands over its method handlers."""

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def _add_service(add_to_server: Callable[[object, object], None], servicer: object, server: grpc.aio.Server) -> None:
    """Register ``servicer`` as the generated code would, but with lenient request deserializers,
    so undecodable bytes are INVALID_ARGUMENT (errors.lenient) rather than gRPC's UNKNOWN."""
    captured = _Captured()
    add_to_server(servicer, captured)
    handlers = errors.lenient_handlers(captured.handlers)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)


async def start(settings: Settings, reuse_port: bool = False, serve_metrics: bool = True) -> Running:
    """Load models and start serving; returns once the port is bound.

    Raises ValueError for unusable access settings (no tokens left), OSError for unreadable
    certificate or token files and for a port that cannot be bound.
    """
    tokens = security.load_tokens(settings)
    credentials = security.server_credentials(settings)
    security.warn_if_exposed(settings, tokens)
    dataplane = load(settings)
    errors.add_observer(metrics.observe_rpc)
    dataplane.batch_observers.append(metrics.observe_run)
    dataplane.drop_observers.append(metrics.observe_drop)
    interceptors = [security.TokenAuth(tokens, settings.auth_health)] if tokens else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # gRPC turns SO_REUSEPORT on by default, which would let two servers share a port silently.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    _add_service(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(dataplane), server)
    _add_service(lpb_grpc.add_LayerServiceServicer_to_server, LayerServicer(dataplane), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *_service_names()):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    for name in dataplane.repository.served_names():
        status = dataplane.repository.is_ready(name)
        await health_servicer.set(
            name, health_pb2.HealthCheckResponse.SERVING if status else health_pb2.HealthCheckResponse.NOT_SERVING
        )
    reflection.enable_server_reflection(
        (*_service_names(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
        pool=_reflection_pool(),
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise OSError(f"cannot bind gRPC to {address}: {error}") from None
    await server.start()
    metrics_port = None
    if serve_metrics and settings.metrics_port >= 0:
        metrics_port = metrics.serve_http(settings.host, settings.metrics_port)
    log.info(
        "serving",
        extra={"fields": {"grpc": f"{settings.host}:{port}", "metrics_port": metrics_port, "device": settings.device,
                          "instances": settings.instance_count, "intra_op_threads": settings.intra_op_threads,
                          "tls": credentials is not None, "mutual_tls": settings.tls_client_ca is not None,
                          "tokens": len(tokens), "auth_health": settings.auth_health if tokens else None,
                          "models": dataplane.repository.served_names(), **cpus.log_fields()}},
    )
    return Running(server, port, metrics_port, dataplane, health_servicer)


def _service_names() -> tuple[str, ...]:
    return (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        lpb.DESCRIPTOR.services_by_name["LayerService"].full_name,
    )


async def serve(settings: Settings, reuse_port: bool = False, serve_metrics: bool = True) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    running = await start(settings, reuse_port, serve_metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("draining", extra={"fields": {"grace_s": settings.grace_s}})
    await running.stop(settings.grace_s)
    log.info("stopped")


def run(settings: Settings) -> int:
    """The ``layerserve serve`` entry point; returns the process exit code."""
    logs.configure(settings.log_level, settings.log_format)
    allocator.retain_freed_memory()
    try:
        if settings.worker_count > 1:
            return _run_workers(settings)
        asyncio.run(serve(settings))
    except DeviceUnavailable as error:
        log.error("refusing to start: %s", error)
        return 2
    except ValueError as error:
        log.error("refusing to start: %s", error)
        return 2
    except (OSError, FileNotFoundError) as error:
        log.error("cannot serve: %s", error)
        return 1
    return 0


def _die_with_parent() -> None:
    """Have the kernel kill this worker when the parent dies, even by SIGKILL (Linux; elsewhere a no-op).

    Otherwise an orphaned worker would keep answering on the port after its server was killed.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker(settings: Settings, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(1)
    logs.configure(settings.log_level, settings.log_format)
    allocator.retain_freed_memory()
    try:
        asyncio.run(serve(settings, reuse_port=True, serve_metrics=False))
    except DeviceUnavailable as error:
        log.error("refusing to start: %s", error)
        raise SystemExit(2) from None


def _run_workers(settings: Settings) -> int:
    """N processes on one port (SO_REUSEPORT; the kernel spreads connections), metrics summed here."""
    security.load_tokens(settings)  # refuse bad access settings once, before any worker starts
    security.server_credentials(settings)
    runtime.requested_providers(settings.device)  # DeviceUnavailable once, here, for a build without CUDA
    port = settings.port or free_port(settings.host)
    metrics_dir = tempfile.mkdtemp(prefix="layerserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # children inherit it before importing prometheus
    context = multiprocessing.get_context("spawn")  # ONNX Runtime and gRPC are not fork-safe
    child = settings.replace(port=port, workers=1, instances=settings.instance_count)
    workers = [context.Process(target=_worker, args=(child, os.getpid()), name=f"worker-{i}")
               for i in range(settings.worker_count)]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for process in workers:
            process.start()
        if settings.metrics_port >= 0:
            metrics.serve_http(settings.host, settings.metrics_port)
        log.info("workers started", extra={"fields": {"workers": settings.worker_count, "grpc": f"{settings.host}:{port}",
                                                      "pids": [p.pid for p in workers], **cpus.log_fields()}})
        while not stopping and all(process.is_alive() for process in workers):
            with contextlib.suppress(InterruptedError):
                workers[0].join(0.2)
    finally:
        for process in workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(settings.grace_s + 5)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [process.exitcode for process in workers]
    log.info("workers stopped", extra={"fields": {"exit_codes": codes}})
    if 2 in codes:  # a worker refused to start (its log says why), as a single process would have
        return 2
    return 0 if stopping and all(code == 0 for code in codes) else 1
