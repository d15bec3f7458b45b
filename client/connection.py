"""Opening a gRPC channel to a layerserve server: insecure, TLS or mutual TLS, with a token.

Contract: :func:`open_channel` returns a ready-to-use ``grpc.Channel`` (channels
connect lazily, so a wrong address shows up on the first RPC as UNAVAILABLE);
:func:`call_metadata` returns the metadata every RPC must carry. A bearer token
travels as ``authorization: Bearer <token>``: as call credentials over TLS (gRPC
refuses to send call credentials in the clear), as plain metadata otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc

# Activations of a 64-sample batch easily pass gRPC's 4 MiB default.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_ADDRESS = "127.0.0.1:8001"
# For many replicas behind one name (a headless Service's DNS name, or "ipv4:a:p,b:p"): balance requests
# round_robin over every address, wait for a ready replica, and retry what a terminating one turns away:
# UNAVAILABLE, and CANCELLED, which gRPC's graceful shutdown answers to calls that reached the server but
# no handler yet (grpc/grpc#41785). Inference and chains are idempotent, so a retry is safe.
REPLICAS_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "inference.GRPCInferenceService"}, {"service": "layerserve.v1.LayerService"}],
        "waitForReady": True,
        "timeout": "30s",
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
    }],
})
REPLICAS_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.service_config", REPLICAS_SERVICE_CONFIG), ("grpc.enable_retries", 1))


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach one server.

    ``root_certificates`` (PEM path) turns TLS on (``tls=True`` alone uses the
    system roots); ``certificate_chain`` + ``private_key`` add a client certificate
    (mutual TLS). ``timeout`` (seconds) is the deadline of every RPC; None waits.
    ``server_name`` overrides the name checked against the server certificate.
    ``channel_options`` are added to the channel's gRPC options, e.g. a service config that balances
    round_robin over every address a name resolves to and retries (docs/deploy.md, "Clients").
    """

    tls: bool = False
    root_certificates: Path | None = None
    certificate_chain: Path | None = None
    private_key: Path | None = None
    server_name: str | None = None
    token: str | None = None
    timeout: float | None = 60.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    channel_options: tuple[tuple[str, str | int], ...] = ()

    @property
    def secure(self) -> bool:
        return self.tls or self.root_certificates is not None or self.certificate_chain is not None


def _read(path: Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def open_channel(address: str, settings: ConnectionSettings | None = None) -> grpc.Channel:
    """A channel to ``address`` (``host:port``) configured by ``settings``.

    Raises ValueError when only one of certificate_chain / private_key is given,
    OSError when a certificate file cannot be read.
    """
    settings = settings or ConnectionSettings()
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        *settings.channel_options,
    ]
    if not settings.secure:
        return grpc.insecure_channel(address, options=options)
    if (settings.certificate_chain is None) != (settings.private_key is None):
        raise ValueError("mutual TLS needs both a certificate chain and a private key")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.root_certificates),
        private_key=_read(settings.private_key),
        certificate_chain=_read(settings.certificate_chain),
    )
    if settings.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(settings.token)
        )
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
    return grpc.secure_channel(address, credentials, options=options)


def call_metadata(settings: ConnectionSettings | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata for every RPC: the bearer token when it cannot ride on TLS call credentials."""
    settings = settings or ConnectionSettings()
    if settings.token and not settings.secure:
        return (("authorization", f"Bearer {settings.token}"),)
    return ()
