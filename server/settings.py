"""The server's one settings object: CLI flags and ``LAYERSERVE_*`` variables map onto it.

Precedence: command-line flag > environment variable > default here. Every field
is named after its flag (``--max-queue-delay-us`` <-> ``max_queue_delay_us`` <->
``LAYERSERVE_MAX_QUEUE_DELAY_US``), so the three spellings never drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import cpus, loops
from .devices import DEVICE_CHOICES, parse_provider_options
from .loops import LoopChoice

# The --device choices come from the one devices table (server/devices.py).
Device = Literal[DEVICE_CHOICES]
ENV_PREFIX = "LAYERSERVE_"
# Fields that take "auto" (flag or variable), and the value that stands for it.
AUTO: dict[str, object] = {"workers": 0, "instances": None, "max_message_bytes": None}
HealthAuth = Literal["models", "all", "none"]


@dataclass(frozen=True)
class Settings:
    """How one server process (or a group of SO_REUSEPORT workers) runs."""

    models: Path = Path("models")
    host: str = "127.0.0.1"
    # 0: let the OS pick (tests); the bound port is logged and returned by the app.
    port: int = 8001
    # Prometheus over HTTP; a negative port turns metrics off.
    metrics_port: int = 8002
    # The Open Inference Protocol over HTTP/REST (Triton's and KServe's default port); -1 turns it off,
    # 0 lets the OS pick.
    http_port: int = 8000
    device: Device = "cpu"
    # Processes sharing the port through SO_REUSEPORT; 1 serves in this process; 0 ("auto"): one per
    # usable core (docs/BENCHMARKS.md, "Performance levers (measured)").
    workers: int = 0
    # Both directions; larger messages fail with RESOURCE_EXHAUSTED. None ("auto"): derived from the
    # served models once they are loaded (server/limits.py), so a refused message costs little.
    max_message_bytes: int | None = None
    # HTTP/2 streams (RPCs in flight) one connection may hold; bounds what a client that never
    # reads its answers can pin (docs/server.md, "Limits").
    max_concurrent_streams: int = 128
    # ONNX Runtime threads per session. Few and non-spinning: gRPC needs the cores too
    # (docs/BENCHMARKS.md, "Server concurrency design").
    intra_op_threads: int = 1
    allow_spinning: bool = False
    # Chains hand ONNX Runtime's blocked tensors from block to block where the blocks allow it, checked
    # against the plain chain at load (server/seams.py, server/chains.py); false runs every block plain.
    native_seams: bool = True
    # The chain of every block, nothing kept, runs as one session composed from the blocks' graphs, checked
    # against the plain chain at load (server/composed.py), unless that session would pack over
    # composed.PACKABLE_MAX of weights; false runs it block by block.
    composed_chain: bool = True
    # Options for the device's execution provider, ONNX Runtime's names, "KEY=VALUE[,KEY=VALUE]": e.g.
    # cudnn_conv_algo_search=HEURISTIC for CUDA (docs/server.md, "Execution providers").
    provider_options: str = ""
    # Runs (batches) one served model may have at once, on worker threads (Triton's instance count).
    # 0 runs sessions on the event loop itself; None ("auto"): one at a time while the model's runs
    # are short, up to the usable cores while they are long (server/slots.py), so one client
    # connection, which reaches one worker, can still use every core for a large model.
    instances: int | None = None
    # Dynamic batching: None keeps each manifest's ServingConfig.
    dynamic_batching: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    # Requests are merged while the merged batch's largest activation (rows x the model's largest
    # activation per row, from the manifest) stays within this many bytes; a request larger than it
    # runs alone, never split. Bounds the memory batching can add (docs/server.md, "Memory").
    max_batch_bytes: int = 64 * 1024 * 1024
    # Requests waiting per model before new ones are refused with UNAVAILABLE.
    max_queue_size: int = 1024
    # Seconds in-flight requests get to finish after SIGTERM.
    grace_s: float = 10.0
    # The event loop: uvloop where installed (auto), or asyncio's own (server/loops.py).
    loop: LoopChoice = "auto"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # Model versions are checked against the manifest's sha256 before loading.
    verify: bool = True
    # TLS: server certificate chain and key (PEM); with tls_client_ca, clients must present a
    # certificate signed by that CA (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens: a file (one per line) and/or LAYERSERVE_TOKENS (comma-separated; no flag, so
    # tokens stay out of the process list). Any token configured turns authentication on.
    token_file: Path | None = None
    tokens: str | None = field(default=None, repr=False)
    # With tokens on, which health checks need one: "models" (default) every service but the overall
    # "" one, which probes use; "all"; "none" (per-model health then tells anyone which names exist).
    auth_health: HealthAuth = "models"

    @property
    def worker_count(self) -> int:
        """``workers``, with 0 ("auto") resolved to the usable cores."""
        return self.workers or usable_cores()

    @property
    def instance_count(self) -> int:
        """The most runs one model may have at once per worker: ``instances``, or with None ("auto") the
        usable cores (reached only while the model's runs are long)."""
        if self.instances is not None:
            return self.instances
        return usable_cores()

    @property
    def every_core_threads(self) -> int:
        """Intra-op threads of the session a long run alone in the server takes (runtime.on_every_core): the
        usable cores with ``--instances auto`` and one thread per session; 0 (none) when either is set
        otherwise, or with one core."""
        cores = usable_cores()
        return cores if self.instances is None and self.intra_op_threads == 1 and cores > 1 else 0

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def usable_cores() -> int:
    """Cores this process may use: its affinity mask capped by its cgroup CPU quota (a pod's CPU limit)."""
    return cpus.usable_cores().count


class InvalidSetting(ValueError):
    """A value out of range for ``field``; from_sources names the flag or variable it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def env_name(name: str) -> str:
    """``max_queue_size`` -> ``LAYERSERVE_MAX_QUEUE_SIZE``."""
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    """``max_queue_size`` -> ``--max-queue-size``."""
    return "--" + name.replace("_", "-")


def _hint(name: str) -> object:
    hint = typing.get_type_hints(Settings)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal field (``device``: cpu, cuda, auto), None for other fields."""
    hint = _hint(name)
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None


def _parse(name: str, text: str) -> object:
    if name in AUTO and text.strip().lower() == "auto":
        return AUTO[name]
    kind = _hint(name)
    if typing.get_origin(kind) is Literal:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
            raise ValueError(f"{env_name(name)}={text!r} is not a boolean")
        return lowered in {"1", "true", "yes", "on"}
    try:
        return kind(text)
    except ValueError:
        expected = {int: "an integer", float: "a number"}.get(kind, f"a {getattr(kind, '__name__', kind)}")
        auto = " or auto" if name in AUTO else ""
        raise ValueError(f"{env_name(name)}={text!r} is not {expected}{auto}") from None


def from_sources(
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    auto: Mapping[str, object] | None = None,
) -> Settings:
    """Settings from environment variables overridden by ``flags`` (None values are unset flags).

    ``auto`` names fields given as "auto" on the command line, with their stand-in values (AUTO);
    they win over the environment like any flag.

    Raises ValueError for a malformed variable or an out-of-range value.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    for spec in dataclasses.fields(Settings):
        text = environ.get(env_name(spec.name))
        if text is not None and text != "":
            values[spec.name] = _parse(spec.name, text)
            origin[spec.name] = f"{env_name(spec.name)}={text!r}" if spec.name != "tokens" else env_name(spec.name)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
            origin[name] = f"{flag_name(name)} {value}"
    for name, value in (auto or {}).items():
        values[name] = value
        origin[name] = f"{flag_name(name)} auto"
    try:
        return validate(Settings(**values))
    except InvalidSetting as error:
        source = origin.get(error.field)
        raise ValueError(f"{source}: {error}" if source else str(error)) from None


def validate(settings: Settings) -> Settings:
    """Check value ranges; returns ``settings`` or raises InvalidSetting (a ValueError) naming the field."""
    for spec in dataclasses.fields(Settings):
        allowed = choices(spec.name)
        value = getattr(settings, spec.name)
        if allowed and value not in allowed:
            raise InvalidSetting(spec.name, f"{spec.name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                                            f"got {value!r}")
    if settings.instances is not None and settings.instances < 0:
        raise InvalidSetting("instances", f"instances must be >= 0 (0: run on the event loop) or auto, "
                                          f"got {settings.instances}")
    if settings.loop == "uvloop":
        try:
            loops.loop_factory("uvloop")
        except loops.LoopUnavailable as error:
            raise InvalidSetting("loop", str(error)) from None
    try:
        parse_provider_options(settings.provider_options)
    except ValueError as error:
        raise InvalidSetting("provider_options", str(error)) from None
    if settings.workers < 0:
        raise InvalidSetting("workers", f"workers must be >= 1, or 0 / auto for one per usable core, "
                                        f"got {settings.workers}")
    if settings.http_port < -1:
        raise InvalidSetting("http_port", f"http_port must be a port, 0 (any free one) or -1 (off), got {settings.http_port}")
    for name in ("intra_op_threads", "max_queue_size", "max_message_bytes", "max_concurrent_streams"):
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise InvalidSetting(name, f"{name} must be at least 1, got {value}")
    if settings.max_batch_size is not None and settings.max_batch_size < 0:
        raise InvalidSetting("max_batch_size", f"max_batch_size must be >= 0, got {settings.max_batch_size}")
    if settings.max_queue_delay_us is not None and settings.max_queue_delay_us < 0:
        raise InvalidSetting("max_queue_delay_us",
                             f"max_queue_delay_us must be >= 0, got {settings.max_queue_delay_us}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise InvalidSetting("tls_cert" if settings.tls_key is None else "tls_key", "TLS needs both tls_cert and tls_key")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise InvalidSetting("tls_client_ca", "tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    paths = {name: Path(getattr(settings, name)) for name in ("tls_cert", "tls_key", "tls_client_ca", "token_file")
             if getattr(settings, name) is not None}
    return settings.replace(models=Path(settings.models), **paths)
