"""``layerserve serve``: flags map one-to-one onto server.settings.Settings (env: LAYERSERVE_<FIELD>)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping

from . import settings
from .settings import Settings


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return lowered in {"1", "true", "yes", "on"}


def _count_or_auto(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    defaults = Settings()
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository over the Open Inference Protocol (gRPC and HTTP/REST)",
        description="Serve every model under --models (ours, or a Triton repository): the full graph, each block and the chain, "
        "over gRPC and HTTP/REST. "
        "Each flag also reads LAYERSERVE_<FLAG> (e.g. LAYERSERVE_PORT); flags win.",
    )
    add = parser.add_argument
    add("--models", help=f"model repository folder (default {defaults.models})")
    add("--host", help=f"address to bind (default {defaults.host})")
    add("--port", type=int, help=f"gRPC port, 0 picks a free one (default {defaults.port})")
    add("--http-port", type=int, help="Open Inference Protocol over HTTP/REST, -1 disables, 0 picks a free one "
        f"(default {defaults.http_port})")
    add("--metrics-port", type=int, help=f"Prometheus HTTP port, -1 disables (default {defaults.metrics_port})")
    add("--device", choices=settings.choices("device"), help="execution provider: cuda refuses to start if CUDA "
        "does not load; auto falls back to the CPU (default cpu)")
    add("--workers", type=_count_or_auto, metavar="N|auto", help="server processes sharing the port through "
        "SO_REUSEPORT; auto: one per usable core (default auto)")
    add("--max-message-bytes", type=_count_or_auto, metavar="N|auto", help="largest gRPC message either way; auto: "
        "the largest input or output of any served model at its max_batch_size, plus headroom (default auto)")
    add("--max-concurrent-streams", type=int, help="RPCs in flight per client connection "
        f"(default {defaults.max_concurrent_streams})")
    add("--intra-op-threads", type=int, help=f"ONNX Runtime threads per session (default {defaults.intra_op_threads}; "
        "with 1 and --instances auto, a long run alone in the server takes a second session on every core)")
    add("--provider-options", metavar="KEY=VALUE[,...]", help="options for the device's execution provider, "
        "ONNX Runtime's names, e.g. cudnn_conv_algo_search=HEURISTIC")
    add("--allow-spinning", type=_bool, metavar="BOOL", help="let ONNX Runtime threads spin (default false)")
    add("--native-seams", type=_bool, metavar="BOOL", help="chains pass ONNX Runtime's blocked tensors between "
        "blocks where they can, checked against plain blocks at load (default true)")
    add("--composed-chain", type=_bool, metavar="BOOL", help="the chain of every block runs as one session "
        "composed from the blocks' graphs, checked against plain blocks at load, unless that session would pack over "
        "16 MiB of weights (default true)")
    add("--instances", type=_count_or_auto, metavar="N|auto", help="runs one model may have at once per process, on "
        "worker threads; 0 runs them on the event loop; auto: one while its runs are short, up to the usable "
        "cores while they are long (default auto)")
    add("--dynamic-batching", type=_bool, metavar="BOOL", help="override every manifest's dynamic_batching")
    add("--max-batch-size", type=int, help="override every manifest's max_batch_size (0: no limit)")
    add("--max-queue-delay-us", type=int, help="override every manifest's max_queue_delay_us")
    add("--max-batch-bytes", type=int, help="merge requests while the merged batch's largest activation stays "
        f"within this many bytes (default {defaults.max_batch_bytes})")
    add("--max-queue-size", type=int, help=f"queued requests per model before UNAVAILABLE (default {defaults.max_queue_size})")
    add("--loop", choices=settings.choices("loop"), help="event loop: uvloop, asyncio's own, or auto: uvloop "
        "where it is installed (default auto)")
    add("--grace-s", type=float, help=f"seconds in-flight requests get after SIGTERM (default {defaults.grace_s})")
    add("--log-level", help="DEBUG, INFO, WARNING, ... (default INFO)")
    add("--log-format", choices=["json", "text"], help="log line format (default json)")
    add("--verify", type=_bool, metavar="BOOL", help="check files against the manifest's sha256 (default true)")
    add("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain (needs --tls-key)")
    add("--tls-key", metavar="PEM", help="private key of --tls-cert")
    add("--tls-client-ca", metavar="PEM", help="mutual TLS: require client certificates signed by this CA")
    add("--token-file", metavar="FILE", help="require 'authorization: Bearer <token>' with one of these tokens "
        "(one per line); LAYERSERVE_TOKENS=a,b adds more")
    add("--auth-health", choices=settings.choices("auth_health"), help="with tokens on, which health checks need "
        "one: models (every service but the overall '', which probes use), all, or none (default models)")
    parser.set_defaults(handler=_serve)


def settings_of(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """The Settings that parsed ``serve`` flags and ``environ`` (default: os.environ) give.

    Raises ValueError naming the flag or variable whose value is unusable.
    """
    flags = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(Settings)}
    # "auto" given as a flag must win over a variable, so it is not None here: its stand-in value.
    auto = {name: settings.AUTO[name] for name in settings.AUTO if flags.get(name) == "auto"}
    flags = {name: value for name, value in flags.items() if name not in auto}
    return settings.from_sources(flags, environ, auto=auto)


def _serve(args: argparse.Namespace) -> int:
    from . import processes

    try:
        chosen = settings_of(args)
    except (ValueError, TypeError) as error:
        print(f"layerserve serve: {error}", file=sys.stderr)
        return 2
    return processes.run(chosen)
