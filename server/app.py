"""Assemble one server process: the DataPlane, the gRPC services, HTTP/REST, health, reflection, metrics, drain.

``start`` loads the repository, builds the core and binds the ports (gRPC, and
HTTP/REST on the same event loop: server/rest.py); ``Running.stop`` drains: health
turns NOT_SERVING, new RPCs and REST requests get UNAVAILABLE / 503 (the drain gate,
server/drain.py, which both transports pass), those accepted before (batched ones
included) get ``grace_s`` to finish, then HTTP and gRPC stop. Process management (signals, SO_REUSEPORT workers, exit
codes) is server/processes.py.
"""

from __future__ import annotations

import asyncio
import logging
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

from . import allocator, cpus, limits, loops, metrics, ports, rest, runtime, security, unsupported
from .busy_workers import WorkerBoard
from .dataplane import DataPlane
from .endpoints import BatchingOverrides
from .grpc_inference import InferenceServicer
from .grpc_layers import LayerServicer
from .observer import Silent
from .repository import Repository
from .rpc import add_service
from .settings import Settings

log = logging.getLogger(__name__)

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
    # The HTTP/REST endpoint, None with --http-port -1.
    http: rest.HttpServer | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

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
        # Both at once: anything between the settle and gRPC's stop widens the instant in which a call
        # that has just arrived is cancelled rather than refused.
        stops = [self.server.stop(max(0.0, deadline - loop.time()))]
        if self.http is not None:
            stops.append(self.http.stop())
        await asyncio.gather(*stops)
        await self.dataplane.close()


def _reflection_pool() -> object:
    """Our private pool, holding health and reflection too so reflection can describe every service."""
    for module in (health_pb2, reflection_pb2):
        try:
            _pool.POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            _pool.POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return _pool.POOL


def load(settings: Settings, optimized_dir: Path | None = None, board: WorkerBoard | None = None,
         stats_folder: Path | None = None) -> DataPlane:
    """Load the repository and build the core; DeviceUnavailable when the device cannot be used.

    ``optimized_dir``: where the graphs' optimized copies are shared (server/optimized.py); ``board``: this
    worker's view of the runs in flight per worker (server/busy_workers.py), None when serving alone;
    ``stats_folder``: where the workers' statistics are summed (server/statistics.py), None when alone.
    """
    options = runtime.RuntimeOptions(settings.device, settings.intra_op_threads, settings.allow_spinning,
                                     optimized_dir, settings.provider_options, settings.native_seams,
                                     settings.composed_chain, settings.every_core_threads)
    overrides = BatchingOverrides(settings.dynamic_batching, settings.max_batch_size, settings.max_queue_delay_us)
    repository = Repository.load(settings.models, options, overrides, verify=settings.verify)
    allocator.give_back()  # what loading freed (the chains' probes ran at batch 2): not the idle size
    if settings.device == "auto":
        for model in repository.versions():
            if model.ready and runtime.CUDA not in model.providers:
                log.warning(
                    "--device auto: CUDA did not load, serving on the CPU",
                    extra={"fields": {"model": model.name, "providers": model.providers,
                                      "available": runtime.available_providers()}},
                )
    max_message_bytes = settings.max_message_bytes or limits.message_limit(repository)
    # Without a metrics port nobody can read the metrics: recording them cost ~5 % of the CPU per batch-1
    # request (9 memory-mapped writes with --workers; docs/BENCHMARKS.md, "Issue 12, second pass").
    observer = metrics.PrometheusObserver(repository.served_names()) if settings.metrics_port >= 0 else Silent()
    return DataPlane(repository, settings.instances, settings.max_queue_size, max_message_bytes, observer,
                     settings.max_batch_bytes, cores=settings.instance_count, board=board, stats_folder=stats_folder)


async def start(
    settings: Settings, reuse_port: bool = False, serve_metrics: bool = True, optimized_dir: Path | None = None,
    board: WorkerBoard | None = None, stats_folder: Path | None = None,
) -> Running:
    """Load models and start serving; returns once the port is bound.

    Raises ValueError for unusable access settings (no tokens left), OSError for unreadable
    certificate or token files and for a port that cannot be bound.
    """
    tokens = security.load_tokens(settings)
    credentials = security.server_credentials(settings)
    security.warn_if_exposed(settings, tokens)
    dataplane = load(settings, optimized_dir, board, stats_folder)
    interceptors = [security.TokenAuth(tokens, settings.auth_health, dataplane.observer)] if tokens else []
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
    http: rest.HttpServer | None = None
    try:
        add_service(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(dataplane), server)
        add_service(lpb_grpc.add_LayerServiceServicer_to_server, LayerServicer(dataplane), server)
        server.add_generic_rpc_handlers((unsupported.GrpcRefusals(),))  # Triton's methods we refuse, by name
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
        http = await _start_http(settings, dataplane, tokens, reuse_port) if settings.http_port >= 0 else None
        metrics_port = None
        if serve_metrics and settings.metrics_port >= 0:
            metrics_port = metrics.serve_http(settings.host, settings.metrics_port)
        log.info(
            "serving",
            extra={"fields": {"grpc": f"{settings.host}:{port}",
                              "http": f"{settings.host}:{http.port}" if http is not None else None,
                              "metrics_port": metrics_port, "device": settings.device,
                              "event_loop": loops.running_loop_name(),
                              "instances": settings.instances if settings.instances is not None
                              else f"auto (1 to {settings.instance_count})",
                              "intra_op_threads": settings.intra_op_threads,
                              "tls": credentials is not None, "mutual_tls": settings.tls_client_ca is not None,
                              "tokens": len(tokens), "auth_health": settings.auth_health if tokens else None,
                              "max_message_bytes": dataplane.max_message_bytes,
                              "max_concurrent_streams": settings.max_concurrent_streams,
                              "models": dataplane.repository.served_names(), **cpus.log_fields()}},
        )
        return Running(server, port, metrics_port, dataplane, health_servicer, http)
    except BaseException:
        # Nothing was served yet (SIGTERM during start-up, a port refused): stop what started here, on this
        # loop. A grpc.aio server left to the garbage collector after its loop closed prints a traceback.
        if http is not None:
            await http.stop()
        await server.stop(None)
        raise


async def _start_http(settings: Settings, dataplane: DataPlane, tokens: list[str], reuse_port: bool) -> rest.HttpServer:
    """HTTP/REST on ``settings.http_port`` over the same DataPlane, TLS and tokens as gRPC."""
    if not reuse_port:  # our own workers hold the port with SO_REUSEPORT: no test-bind then
        ports.check_free(settings.host, settings.http_port, "HTTP port")  # PortInUse, naming the process
    api = rest.RestApi(dataplane, tokens, settings.auth_health)
    http = rest.HttpServer(api, rest.bind(settings.host, settings.http_port, reuse_port),
                           security.ssl_context(settings), dataplane.max_message_bytes)
    await http.start()
    return http


def _service_names() -> tuple[str, ...]:
    return (
        pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        lpb.DESCRIPTOR.services_by_name["LayerService"].full_name,
    )
