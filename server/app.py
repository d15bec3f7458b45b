"""Build and run the gRPC server: services, health, reflection, metrics, SIGTERM drain, workers.

One process runs one ``grpc.aio`` server on one event loop; ONNX Runtime runs on
``instances`` worker threads (docs/BENCHMARKS.md, "Server concurrency design",
has the measurements behind this). ``--workers N`` (default: one per usable core) starts N such processes on
one port through SO_REUSEPORT; the parent serves their summed metrics and
forwards SIGTERM.

SIGTERM (or SIGINT): health turns NOT_SERVING, new RPCs get UNAVAILABLE (the
drain gate, server/drain.py), those accepted before (batched ones included) get
``grace_s`` to finish, then the server stops and the process exits 0. With
workers, the parent alone takes SIGINT (a terminal's Ctrl-C reaches the whole
process group) and forwards SIGTERM.

A server refuses a port another process holds (server/ports.py), and start-up
errors are one log line in every mode: the parent checks what it can before
starting workers, and a worker that cannot start reports its reason to the
parent, which logs each distinct reason once.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from layerserve.proto import _pool
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import layerserve_pb2_grpc as lpb_grpc

from . import allocator, cpus, errors, limits, logs, metrics, ports, runtime, security
from .dataplane import DataPlane
from .errors import DeviceUnavailable
from .grpc_inference import InferenceServicer
from .grpc_layers import LayerServicer
from .repository import Repository
from .settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# After the last admitted RPC, refuse new ones until none has come for QUIET_S (at most SETTLE_MAX_S)
# before gRPC's stop, which cancels calls that have arrived but not reached a handler yet
# (docs/server.md, "Operations").
QUIET_S = 0.1
SETTLE_MAX_S = 1.0


@dataclass
class Running:
    """A started server: its bound ports and parts, for the caller to stop."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    dataplane: DataPlane
    health: health.aio.HealthServicer

    async def stop(self, grace_s: float) -> None:
        """Drain: NOT_SERVING, refuse new RPCs (UNAVAILABLE), let admitted ones finish within ``grace_s``.

        The gate closes while the server still runs, so RPCs that reached it before are answered;
        gRPC's own stop would cancel those not yet at their handler (CANCELLED, not retried).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        self.dataplane.draining = True
        await self.health.enter_graceful_shutdown()
        left = await self.dataplane.gate.close(grace_s)
        if left:
            log.warning("grace period over; cancelling RPCs still running", extra={"fields": {"rpcs": left}})
        else:
            await self.dataplane.gate.settle(QUIET_S, min(SETTLE_MAX_S, max(0.0, deadline - loop.time())))
        await self.server.stop(max(0.0, deadline - loop.time()))
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
    max_message_bytes = settings.max_message_bytes or limits.message_limit(repository)
    return DataPlane(repository, settings.instance_count, settings.max_queue_size, max_message_bytes)


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
    metrics.serve_models(dataplane.repository.served_names())
    errors.add_observer(metrics.observe_rpc)
    dataplane.batch_observers.append(metrics.observe_run)
    dataplane.drop_observers.append(metrics.observe_drop)
    interceptors = [security.TokenAuth(tokens, settings.auth_health)] if tokens else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", dataplane.max_message_bytes),
            ("grpc.max_receive_message_length", dataplane.max_message_bytes),
            # SETTINGS_MAX_CONCURRENT_STREAMS: with the message limit, bounds what one connection can pin.
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
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
        if not reuse_port:  # our own workers hold the port with SO_REUSEPORT: no test-bind then
            ports.check_free(settings.host, settings.port)  # PortInUse, naming the process
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
                          "max_message_bytes": dataplane.max_message_bytes,
                          "max_concurrent_streams": settings.max_concurrent_streams,
                          "models": dataplane.repository.served_names(), **cpus.log_fields()}},
    )
    return Running(server, port, metrics_port, dataplane, health_servicer)


def _service_names() -> tuple[str, ...]:
    return (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        lpb.DESCRIPTOR.services_by_name["LayerService"].full_name,
    )


async def serve(
    settings: Settings,
    reuse_port: bool = False,
    serve_metrics: bool = True,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Serve until one of ``signals``, then drain."""
    running = await start(settings, reuse_port, serve_metrics)
    allocator.start_janitor(limits.heap_budget(running.dataplane.max_message_bytes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("draining", extra={"fields": {"grace_s": settings.grace_s}})
    await running.stop(settings.grace_s)
    log.info("stopped")


class _Stopped(BaseException):
    """SIGTERM before serving began: stop quietly (exit 0), as a drain with nothing to drain."""


def _stop_starting(signum: int, frame: object) -> None:
    raise _Stopped


def run(settings: Settings) -> int:
    """The ``layerserve serve`` entry point; returns the process exit code.

    Start-up errors are one log line: 2 when the settings or the device are unusable, 1 when a
    file, folder or the port is.
    """
    logs.configure(settings.log_level, settings.log_format)
    allocator.retain_freed_memory()
    signal.signal(signal.SIGTERM, _stop_starting)  # until the event loop takes the signals over
    try:
        if settings.worker_count > 1:
            return _run_workers(settings)
        ports.check_free(settings.host, settings.port)
        asyncio.run(serve(settings))
    except (_Stopped, KeyboardInterrupt):
        log.info("stopped before serving")
    except (DeviceUnavailable, ValueError, OSError) as error:
        prefix, code = _failure(error)
        log.error("%s: %s", prefix, error)
        return code
    return 0


def _failure(error: BaseException) -> tuple[str, int]:
    """The log prefix and exit code of a start-up error."""
    if isinstance(error, (DeviceUnavailable, ValueError)):
        return "refusing to start", 2
    return "cannot serve", 1


def _die_with_parent() -> None:
    """Have the kernel kill this worker when the parent dies, even by SIGKILL (Linux; elsewhere a no-op).

    Otherwise an orphaned worker would keep answering on the port after its server was killed.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker(settings: Settings, parent: int, failures: multiprocessing.SimpleQueue) -> None:
    """One worker process: serve on the shared port until the parent's SIGTERM.

    A start-up failure is put on ``failures`` for the parent to log once, not logged here.
    SIGINT is ignored (inherited from the parent, and set again here): the parent takes it.
    """
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_starting)
    logs.configure(settings.log_level, settings.log_format)
    allocator.retain_freed_memory()
    try:
        asyncio.run(serve(settings, reuse_port=True, serve_metrics=False, signals=(signal.SIGTERM,)))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # drained: a late second SIGTERM must not kill it
    except _Stopped:
        return
    except (DeviceUnavailable, ValueError, OSError) as error:
        prefix, code = _failure(error)
        failures.put((prefix, str(error), code))
        raise SystemExit(code) from None


def _check_before_workers(settings: Settings) -> None:
    """Refuse, once and before any worker starts, what every worker would refuse."""
    security.load_tokens(settings)
    security.server_credentials(settings)
    runtime.requested_providers(settings.device)  # DeviceUnavailable for a build without CUDA
    if not Path(settings.models).is_dir():
        raise FileNotFoundError(f"model repository {settings.models} is not a folder")


def _run_workers(settings: Settings) -> int:
    """N processes on one port (SO_REUSEPORT; the kernel spreads connections), metrics summed here."""
    _check_before_workers(settings)
    port, held = ports.hold(settings.host, settings.port)  # PortInUse; kept until the workers are gone
    metrics_dir = tempfile.mkdtemp(prefix="layerserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # children inherit it before importing prometheus
    context = multiprocessing.get_context("spawn")  # ONNX Runtime and gRPC are not fork-safe
    failures = context.SimpleQueue()
    child = settings.replace(port=port, workers=1, instances=settings.instance_count)
    workers = [context.Process(target=_worker, args=(child, os.getpid(), failures), name=f"worker-{i}")
               for i in range(settings.worker_count)]
    stopping = False
    told: set[int] = set()

    def stop_workers() -> None:
        """SIGTERM each live worker once (a second one, after its drain, would kill it)."""
        for process in workers:
            if process.pid is not None and process.pid not in told and process.is_alive():
                told.add(process.pid)
                os.kill(process.pid, signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_workers()  # at once, so each closes its drain gate now

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if settings.metrics_port >= 0:  # before the workers, so a taken port is refused once
            metrics.serve_http(settings.host, settings.metrics_port)
        # Workers start with SIGINT ignored (an ignored signal stays ignored across exec), so a
        # Ctrl-C, which reaches the whole process group, stops them only through the parent.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for process in workers:
            process.start()
        signal.signal(signal.SIGINT, on_signal)
        log.info("workers started", extra={"fields": {"workers": settings.worker_count, "grpc": f"{settings.host}:{port}",
                                                      "pids": [p.pid for p in workers], **cpus.log_fields()}})
        while not stopping and all(process.is_alive() for process in workers):
            with contextlib.suppress(InterruptedError):
                workers[0].join(0.2)
    finally:
        stop_workers()
        for process in workers:
            if process.pid is not None:
                process.join(settings.grace_s + 5)
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [process.exitcode for process in workers]
    reasons: dict[tuple[str, str], int] = {}
    while not failures.empty():
        prefix, message, code = failures.get()
        reasons.setdefault((prefix, message), code)
    for (prefix, message), _code in reasons.items():
        log.error("%s: %s", prefix, message)
    if reasons:
        return max(reasons.values())
    log.info("workers stopped", extra={"fields": {"exit_codes": codes}})
    if not stopping:
        log.error("a worker exited; stopping the others", extra={"fields": {"exit_codes": codes}})
        return 1
    return 0 if all(code == 0 for code in codes) else 1
