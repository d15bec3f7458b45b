"""Access control: TLS server credentials (optionally mutual TLS) and bearer tokens.

Tokens come from ``--token-file`` (one per line; blank lines and ``#`` comments
ignored) and the ``LAYERSERVE_TOKENS`` variable (comma-separated), never from a
flag, so they stay out of ``ps``. A client sends ``authorization: Bearer <token>``
metadata; the interceptor compares it with every known token in constant time
(``hmac.compare_digest``) and refuses the RPC with UNAUTHENTICATED otherwise.
Health (``--auth-health``): by default only the overall ``""`` service answers
without a token, because probes (Kubernetes, load balancers) carry none and
per-model health would tell anyone which model names exist; ``all`` protects
that one too, ``none`` leaves every health check open. Reflection needs a token
like every other service.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from .errors import Unauthenticated, status_of
from .observer import Observer, Silent
from .settings import HealthAuth, Settings

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


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP/REST port's TLS context from the same files as gRPC's (mutual TLS: client certificates
    required and checked against ``tls_client_ca``); None when TLS is off. OSError on unreadable files,
    ValueError on files that are not a matching PEM certificate and key."""
    if settings.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as error:
        raise ValueError(f"TLS files do not load (--tls-cert {settings.tls_cert}, --tls-key {settings.tls_key}"
                         f"{f', --tls-client-ca {settings.tls_client_ca}' if settings.tls_client_ca else ''}): "
                         f"{error.reason or error}") from None
    return context


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``tls_cert``/``tls_key`` (PEM); with ``tls_client_ca``, clients must
    present a certificate signed by it (mutual TLS). None when TLS is off. OSError on unreadable files,
    ValueError on files that are not a matching PEM certificate and key (gRPC itself would only fail
    at bind time, once per worker): the files are checked through :func:`ssl_context`."""
    if ssl_context(settings) is None:
        return None
    pair = (Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def bearer(value: str | None) -> bytes | None:
    """The token of an ``authorization: Bearer <token>`` value (gRPC metadata or HTTP header), else None."""
    if isinstance(value, str) and value[: len(_SCHEME)].lower() == _SCHEME:
        return value[len(_SCHEME) :].strip().encode()
    return None


def token_known(tokens: Sequence[bytes], offered: bytes | None) -> bool:
    """Whether ``offered`` is one of ``tokens``; compares with every token, in constant time each."""
    if offered is None:
        return False
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token)
    return matched


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization" and (token := bearer(value)) is not None:  # type: ignore[arg-type]
            return token
    return None


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuse every RPC without a known bearer token (UNAUTHENTICATED); health checks as ``health`` says:
    "models" (only the overall "" service is open), "all" (none is open) or "none" (all are open)."""

    def __init__(self, tokens: Sequence[str], health: HealthAuth = "models", observer: Observer | None = None) -> None:
        if not tokens:
            raise ValueError("TokenAuth needs at least one token")
        self._tokens = [token.encode() for token in tokens]
        self._health = health
        self._observer = observer or Silent()

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        """Whether ``metadata`` carries a known token; compares with every token, in constant time each."""
        return token_known(self._tokens, _bearer(metadata))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if self.allows(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        if details.method.startswith(HEALTH_PREFIX) and handler is not None:
            if self._health == "none":
                return handler
            if self._health == "models":
                return _overall_health_only(details.method, handler, self._observer)
        return _refusal(details.method, handler, self._observer)


_REFUSED = Unauthenticated("missing or unknown bearer token (send 'authorization: Bearer <token>')")
_HEALTH_REFUSED = Unauthenticated(
    "health of a named service needs a bearer token (send 'authorization: Bearer <token>'); "
    "the overall service '' needs none"
)


def _overall_health_only(method: str, handler: grpc.RpcMethodHandler, observer: Observer) -> grpc.RpcMethodHandler:
    """``handler`` (a health method) answering only for the overall service ``""``, UNAUTHENTICATED
    for a named one, so a caller without a token cannot learn which model names exist."""
    code, message = status_of(_HEALTH_REFUSED)
    rpc = method.rsplit("/", 1)[-1]

    async def refuse_named(request: object, context: grpc.aio.ServicerContext) -> None:
        if getattr(request, "service", None) != "":
            observer.rpc(rpc, "", code.name, 0.0)
            await context.abort(code, message)

    if handler.unary_unary is not None:
        check = handler.unary_unary

        async def unary(request: object, context: grpc.aio.ServicerContext) -> object:
            await refuse_named(request, context)
            return await check(request, context)

        return handler._replace(unary_unary=unary)
    if handler.unary_stream is not None:
        watch = handler.unary_stream

        async def stream(request: object, context: grpc.aio.ServicerContext) -> None:
            await refuse_named(request, context)
            answers = watch(request, context)
            if inspect.isasyncgen(answers):
                async for answer in answers:
                    await context.write(answer)
            else:  # grpc_health's aio Watch writes through the context itself
                await answers

        return handler._replace(unary_stream=stream)
    return _refusal(method, handler, observer)


def _refusal(method: str, handler: grpc.RpcMethodHandler | None, observer: Observer) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that aborts with UNAUTHENTICATED, reading nothing it would parse.

    Unknown methods are refused the same way, so an unauthenticated caller learns nothing of the API;
    their metric label is "unknown", never the name the caller chose.
    """
    code, message = status_of(_REFUSED)
    rpc = method.rsplit("/", 1)[-1] if handler is not None else "unknown"

    async def refuse(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        observer.rpc(rpc, "", code.name, 0.0)
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
