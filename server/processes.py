"""The ``layerserve serve`` process: one server, or N SO_REUSEPORT worker processes behind a parent.

One process runs one ``grpc.aio`` server on one event loop (server/app.py); ONNX
Runtime runs on ``instances`` worker threads (docs/BENCHMARKS.md, "Server
concurrency design", has the measurements behind this). ``--workers N`` (default:
one per usable core) starts N such processes on one port through SO_REUSEPORT;
the parent serves their summed metrics and forwards SIGTERM.

SIGTERM (or SIGINT) drains (``Running.stop``) and the process exits 0. With
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
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from layerserve.proto import manifest as manifests

from . import allocator, app, cpus, limits, logs, loops, metrics, optimized, ports, runtime, security
from .busy_workers import WorkerBoard
from .errors import DeviceUnavailable
from .settings import Settings, usable_cores

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


async def serve(
    settings: Settings,
    reuse_port: bool = False,
    serve_metrics: bool = True,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    optimized_dir: Path | None = None,
    board: WorkerBoard | None = None,
    stats_folder: Path | None = None,
) -> None:
    """Serve until one of ``signals``, then drain."""
    running = await app.start(settings, reuse_port, serve_metrics, optimized_dir, board, stats_folder)
    allocator.start_janitor(limits.heap_budget(running.dataplane.max_message_bytes),
                            idle_s=running.dataplane.idle_seconds)
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
    optimized_dir = Path(tempfile.mkdtemp(prefix="layerserve-ort-"))  # this run's optimized graphs
    try:
        if settings.worker_count > 1:
            return _run_workers(settings, optimized_dir)
        ports.check_free(settings.host, settings.port)
        if settings.http_port >= 0:
            ports.check_free(settings.host, settings.http_port, "HTTP port")
        if _makes_optimized_copies(settings):
            _optimize_graphs(settings, optimized_dir)  # here: this one process loads them anyway
        loops.run(serve(settings, optimized_dir=optimized_dir), settings.loop)
    except (_Stopped, KeyboardInterrupt):
        log.info("stopped before serving")
    except (DeviceUnavailable, ValueError, OSError) as error:
        prefix, code = _failure(error)
        log.error("%s: %s%s", prefix, error, _where_space_ran_out(error, optimized_dir))
        return code
    finally:
        shutil.rmtree(optimized_dir, ignore_errors=True)
    return 0


def _where_space_ran_out(error: BaseException, optimized_dir: Path) -> str:
    """For a full disk: where the server writes (its optimized graphs, under TMPDIR), else ""."""
    if not isinstance(error, OSError) or error.errno != errno.ENOSPC:
        return ""
    return (f" (the optimized copy of every served graph goes to {optimized_dir.parent}: free space there, or set "
            "TMPDIR to a folder that has it)")


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


def _worker(settings: Settings, parent: int, failures: multiprocessing.SimpleQueue, optimized_dir: Path,
            board: WorkerBoard | None, stats_folder: Path) -> None:
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
        loops.run(serve(settings, reuse_port=True, serve_metrics=False, signals=(signal.SIGTERM,),
                        optimized_dir=optimized_dir, board=board, stats_folder=stats_folder), settings.loop)
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


def _graph_files(models: Path) -> list[Path]:
    """Every graph file the repository's manifests name (unreadable manifests: the workers say why)."""
    files = []
    for _, folder in manifests.iter_repository(models):
        try:
            manifest = manifests.read_manifest(folder)
        except manifests.ManifestError:
            continue
        files += [folder / ref.path for ref in (manifest.full_model, *(b.file for b in manifest.blocks))
                  if (folder / ref.path).is_file()]
    return files


def _makes_optimized_copies(settings: Settings) -> bool:
    """Whether this server serves from optimized copies: on the CPU (other devices copy weights to the
    device anyway, server/optimized.py), over a repository that exists (else loading says why)."""
    return runtime.resolve_device(settings.device).name == "cpu" and Path(settings.models).is_dir()


def _optimize_graphs(settings: Settings, optimized_dir: Path) -> None:
    """Have ONNX Runtime optimize every graph once, so every session maps the same weights: in a child
    before the workers start (the parent never holds a session, nor the memory one leaves behind), or
    in the single serving process before it loads them."""
    logs.configure(settings.log_level, settings.log_format)
    options = runtime.RuntimeOptions(settings.device, settings.intra_op_threads, settings.allow_spinning)
    failed = optimized.prepare(optimized_dir, _graph_files(Path(settings.models)),
                               lambda: runtime.session_options(options))
    if failed:
        log.debug("graphs left for the workers to load themselves", extra={"fields": {"graphs": failed}})


def _run_workers(settings: Settings, optimized_dir: Path) -> int:
    """N processes on one port (SO_REUSEPORT; the kernel spreads connections), metrics summed here."""
    _check_before_workers(settings)
    port, held = ports.hold(settings.host, settings.port)  # PortInUse; kept until the workers are gone
    http_port = settings.http_port
    if http_port >= 0:
        try:
            http_port, held_http = ports.hold(settings.host, http_port, "HTTP port")  # one HTTP port for all workers
        except OSError:
            for sock in held:
                sock.close()
            raise
        held += held_http
    metrics_dir = tempfile.mkdtemp(prefix="layerserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # children inherit it before importing prometheus
    stats_folder = Path(tempfile.mkdtemp(prefix="layerserve-stats-"))  # ModelStatistics summed over the workers
    context = multiprocessing.get_context("spawn")  # ONNX Runtime and gRPC are not fork-safe
    failures = context.SimpleQueue()
    child = settings.replace(port=port, http_port=http_port, workers=1)
    if _makes_optimized_copies(settings):
        preparing = context.Process(target=_optimize_graphs, args=(settings, optimized_dir), name="optimize",
                                    daemon=True)
        preparing.start()
        preparing.join()
    # On the CPU with --instances auto, each worker sees which others are running, to keep runs off threads
    # when they hold every core (a fixed instance count decides alone).
    board = (WorkerBoard(settings.worker_count, usable_cores(), context)
             if settings.instances is None and runtime.resolve_device(settings.device).name == "cpu" else None)
    workers = [context.Process(target=_worker, name=f"worker-{i}",
                               args=(child, os.getpid(), failures, optimized_dir, board and board.for_worker(i),
                                     stats_folder))
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
                                                      "http": f"{settings.host}:{http_port}" if http_port >= 0 else None,
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
        shutil.rmtree(stats_folder, ignore_errors=True)
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
