"""Access control: TLS server credentials (optionally mutual TLS) and bearer tokens.

Tokens come from ``--token-file`` (one per line; blank lines and ``#`` comments
ignored) and the ``LAYERSERVE_TOKENS`` variable (comma-separated), never from a
flag, so they stay out of ``ps``. A client sends ``authorization: Bearer <token>``
metadata; the interceptor compares it with every known token in constant time
(``hmac.compare_digest``) and refuses the RPC with UNAUTHENTICATED otherwise.
``grpc.health.v1.Health`` is exempt unless ``--auth-health`` (Kubernetes probes
carry no credentials); reflection needs a token like every other service.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from .errors import Unauthenticated, observe, status_of
from .settings import Settings

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SCHEME = "bearer "


def load_tokens(settings: Settings) -> list[str]:
    """Every accepted token from ``settings.token_file`` and ``settings.tokens``.

    Raises OSError when the file cannot be read, ValueError when tokens were
    configured but none is left after removing blanks and comments.
    """
    tokens: list[str] = []
    if settings.token_file is not None:
        for line in Path(settings.token_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    if settings.tokens:
        tokens.extend(token.strip() for token in settings.tokens.split(",") if token.strip())
    if (settings.token_file is not None or settings.tokens) and not tokens:
        raise ValueError("bearer tokens were configured (--token-file / LAYERSERVE_TOKENS) but none was found")
    return tokens


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls_cert``/``tls_key`` (PEM); with ``tls_client_ca``, clients must
    present a certificate signed by it (mutual TLS). None when TLS is off. OSError on unreadable files."""
    if settings.tls_cert is None:
        return None
    pair = (Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
            return value[len(_SCHEME) :].strip().encode()
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuse every RPC without a known bearer token (UNAUTHENTICATED), health checks exempt unless
    ``protect_health``."""

    def __init__(self, tokens: Sequence[str], protect_health: bool = False) -> None:
        if not tokens:
            raise ValueError("TokenAuth needs at least one token")
        self._tokens = [token.encode() for token in tokens]
        self._protect_health = protect_health

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        """Whether ``metadata`` carries a known token; compares with every token, in constant time each."""
        offered = _bearer(metadata)
        if offered is None:
            return False
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(offered, token)
        return matched

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if (not self._protect_health and details.method.startswith(HEALTH_PREFIX)) or self.allows(
            details.invocation_metadata
        ):
            return await continuation(details)
        handler = await continuation(details)
        return _refusal(details.method, handler)


def _refusal(method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that aborts with UNAUTHENTICATED, reading nothing it would parse.

    Unknown methods are refused the same way, so an unauthenticated caller learns nothing of the API.
    """
    code, message = status_of(Unauthenticated("missing or unknown bearer token (send 'authorization: Bearer <token>')"))
    rpc = method.rsplit("/", 1)[-1]

    async def refuse(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        observe(rpc, "", code, 0.0)
        await context.abort(code, message)

    streaming = (handler.request_streaming, handler.response_streaming) if handler is not None else (False, False)
    build = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streaming]
    return build(refuse)


def warn_if_exposed(settings: Settings, tokens: Sequence[str]) -> None:
    """Log a warning when tokens would cross a non-loopback network in the clear."""
    if tokens and settings.tls_cert is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "bearer tokens without TLS on a non-loopback address travel in the clear",
            extra={"fields": {"host": settings.host}},
        )
