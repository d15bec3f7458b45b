"""The Open Inference Protocol over HTTP/REST: convert -> DataPlane -> convert, as the gRPC servicers do.

Routes (``{m}`` is ``/v2/models/<name>``, optionally followed by ``/versions/<v>``)::

    GET  /v2/health/live   /v2/health/ready   /v2              (ServerLive, ServerReady, ServerMetadata)
    GET  {m}   {m}/ready   {m}/config   {m}/stats   /v2/models/stats
    POST {m}/infer                                              (JSON data or the binary tensor extension)
    POST /v2/repository/index
    GET  {m}/blocks        POST {m}/chain                       (the layerserve.v1.LayerService extension)

Everything a route does is one DataPlane call between a decode and an encode
(server/rest_codec.py for tensors). Errors take their HTTP status from the same
domain errors as gRPC (``errors.http_status_of``), with the same message, as
``{"error": "..."}``. Every request passes the DataPlane's drain gate (probes
excepted) and reports to its observer under a fixed route name (``http.ModelInfer``)
and a model label the observer bounds to served names. Bearer tokens and health
exemptions follow the gRPC side's ``--auth-health``: ``/v2/health/*`` stands for the
overall health service, ``{m}/ready`` for a named one.

The transport is aiohttp's low-level web server on the server's own event loop
(:class:`HttpServer`); docs/server.md records the measurement behind that choice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from layerserve.proto import layerserve_pb2 as lpb

from . import rest_codec, security, unsupported
from .dataplane import DataPlane
from .errors import AnswerTooLarge, InvalidInput, ModelNotFound, Unauthenticated, http_status_of, quoted
from .grpc_inference import EXTENSIONS, SERVER_NAME, server_version, statistics_message
from .settings import HealthAuth

log = logging.getLogger(__name__)

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/[a-z]+)?$")
_REFUSED = "missing or unknown bearer token (send 'authorization: Bearer <token>')"


@dataclass
class Reply:
    """An HTTP answer: status, headers (lower-case names, bytes) and body."""

    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_reply(document: Mapping[str, Any] | list, status: int = 200) -> Reply:
    body, headers = rest_codec.encode_body(document)  # type: ignore[arg-type]
    return Reply(status, body, headers)


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON with its field names, 64-bit integers as numbers (as Triton writes them)."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _numbers(message.DESCRIPTOR, document)
    return document


_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def _numbers(descriptor: Any, document: dict[str, Any]) -> None:
    for name, value in document.items():
        field_ = descriptor.fields_by_name.get(name)
        if field_ is None:
            continue
        if field_.cpp_type in _INT64:
            document[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field_.message_type is not None and not field_.message_type.GetOptions().map_entry:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    _numbers(field_.message_type, item)


@dataclass(frozen=True)
class Request:
    """What a route sees: the path's model name and version, headers (lower-case) and the body."""

    name: str
    version: str
    headers: Mapping[str, str]
    body: bytes


Route = Callable[["RestApi", Request], Awaitable[Reply]]


class RestApi:
    """The REST routes over a DataPlane; ``handle`` is transport-free (tests and benchmarks call it too)."""

    def __init__(self, dataplane: DataPlane, tokens: Sequence[str] = (), auth_health: HealthAuth = "models") -> None:
        self.dataplane = dataplane
        self._tokens = [token.encode() for token in tokens]
        self._auth_health = auth_health

    # -- routes: convert -> one DataPlane call -> convert -------------------------------------

    async def server_live(self, request: Request) -> Reply:
        return json_reply({"live": True})

    async def server_ready(self, request: Request) -> Reply:
        ready = self.dataplane.server_ready()
        return json_reply({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Reply:
        return json_reply({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})

    async def model_ready(self, request: Request) -> Reply:
        ready = self.dataplane.model_ready(request.name, request.version)
        return json_reply({"name": request.name, "ready": ready}, 200 if ready else 400)

    async def model_metadata(self, request: Request) -> Reply:
        info = self.dataplane.metadata(request.name, request.version)
        return json_reply({
            "name": info.name, "versions": info.versions, "platform": info.platform,
            "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in info.inputs],
            "outputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in info.outputs],
        })

    async def model_config(self, request: Request) -> Reply:
        return json_reply(message_json(self.dataplane.config(request.name, request.version)))

    async def model_statistics(self, request: Request) -> Reply:
        entries = self.dataplane.statistics(request.name, request.version)
        return json_reply({"model_stats": [message_json(statistics_message(entry)) for entry in entries]})

    async def repository_index(self, request: Request) -> Reply:
        document = rest_codec.split_body(request.body, None)[0] if request.body.strip() else {}
        ready = document.get("ready", False)
        entries = self.dataplane.index(ready is True)
        return json_reply([{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                           for e in entries])

    async def model_infer(self, request: Request) -> Reply:
        endpoint = self.dataplane.endpoint(request.name, request.version)  # before any tensor
        body = rest_codec.decode_request(request.body, request.headers.get(rest_codec.HEADER_LENGTH), quoted)
        result = await self.dataplane.infer(endpoint, request.version, body.inputs, body.outputs,
                                            classification=body.classes)
        chunks: list[bytes | memoryview] = []
        document = {"model_name": endpoint.name, "model_version": endpoint.version,
                    **({"id": body.id} if body.id else {}),
                    "outputs": rest_codec.encode_tensors(result.outputs, body.wants_binary, chunks)}
        return Reply(200, *rest_codec.encode_body(document, chunks))

    async def list_blocks(self, request: Request) -> Reply:
        listing = self.dataplane.blocks(request.name, request.version)
        return json_reply(json_format.MessageToDict(lpb.ListBlocksResponse(
            manifest=listing.manifest, providers=listing.providers, full_model_name=listing.full_model_name,
            block_model_names=listing.block_model_names, chain_model_name=listing.chain_model_name,
            max_message_bytes=listing.max_message_bytes,
        ), preserving_proto_field_name=True))

    async def chain(self, request: Request) -> Reply:
        model = self.dataplane.chain_model(request.name, request.version)  # before any tensor
        body = rest_codec.decode_request(request.body, request.headers.get(rest_codec.HEADER_LENGTH), quoted)
        start, stop, keep = _chain_range(body.document)
        result = await self.dataplane.chain(model, request.version, start, stop, keep, body.inputs)
        chunks: list[bytes | memoryview] = []
        document = {
            "model_name": request.name, "model_version": result.model.version, "id": body.id,
            "outputs": rest_codec.encode_tensors(result.outputs, body.wants_binary, chunks),
            "blocks_run": result.blocks_run,
            "kept": [{"block_index": k.block_index, "block_name": k.block_name,
                      "outputs": rest_codec.encode_tensors(k.outputs, body.wants_binary, chunks)}
                     for k in result.kept],
        }
        return Reply(200, *rest_codec.encode_body(document, chunks))

    # -- dispatch ------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> tuple[str, Route | None, str, str, str]:
        """(route name, route or None when the method is wrong, model name, version, access kind).

        Access kind: "probe" (overall health), "model-health" (a named model's readiness) or "api".
        ModelNotFound for a path no route serves.
        """
        if path.startswith("/v2/models/"):
            match = _MODEL.match(path)
            if match is not None:
                name, version, tail = match["name"], match["version"] or "", match["tail"] or ""
                if name == "stats" and not version and not tail:
                    return "ModelStatistics", RestApi.model_statistics if method == "GET" else None, "", "", "api"
                entry = _MODEL_ROUTES.get(tail)
                if entry is not None:
                    rpc, want, route, access = entry
                    return rpc, route if method == want else None, name, version, access
        entry = _ROUTES.get(path)
        if entry is not None:
            rpc, want, route, access = entry
            return rpc, route if method == want else None, "", "", access
        refusal = unsupported.rest_refusal(path)
        if refusal is not None:
            return "Unsupported", _refuse(refusal), "", "", "api"
        where = ("docs/server.md lists this server's routes" if path == "/v2" or path.startswith("/v2/")
                 else "the Open Inference Protocol's are under /v2 (docs/server.md, HTTP/REST)")
        raise ModelNotFound(f"no route {method} {quoted(path)}; {where}")

    def _allowed(self, access: str, headers: Mapping[str, str]) -> bool:
        if not self._tokens:
            return True
        if access == "probe" and self._auth_health != "all":
            return True
        if access == "model-health" and self._auth_health == "none":
            return True
        return security.token_known(self._tokens, security.bearer(headers.get("authorization")))

    async def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
                     refused: Exception | None = None) -> Reply:
        """Answer one HTTP request; never raises (CancelledError aside: the client went away).

        ``refused``: the transport's reason to refuse the request (a body over the limit), answered
        once the route is known and the caller authenticated, so it is counted like any other error.
        """
        start = time.perf_counter()
        observer = self.dataplane.observer
        rpc, model, admitted = "http.unknown", "", False
        try:
            try:
                name, route, model, version, access = self.route(method, path)
            except ModelNotFound:
                if not self._allowed("api", headers):  # without a token, no path is told apart from another
                    raise Unauthenticated(_REFUSED) from None
                raise
            rpc = f"http.{name}"
            if not self._allowed(access, headers):
                raise Unauthenticated(_REFUSED)
            if route is None:
                raise _MethodNotAllowed(f"{method} is not allowed on {quoted(path)}")
            if refused is not None:
                raise refused
            if access != "probe" and name != "ModelReady":
                self.dataplane.gate.enter()
                admitted = True
            reply = await route(self, Request(model, version, headers, body))
        except asyncio.CancelledError:
            observer.rpc(rpc, model, grpc.StatusCode.CANCELLED.name, time.perf_counter() - start)
            raise
        except Exception as error:  # noqa: BLE001 - the one place every REST error is mapped
            status, code, message = http_status_of(error, model)
            if isinstance(error, _MethodNotAllowed):
                status = 405
            if code is grpc.StatusCode.INTERNAL:
                log.exception("unexpected error in %s", rpc, extra={"fields": {"rpc": rpc, "model": quoted(model)}})
            observer.rpc(rpc, model, code.name, time.perf_counter() - start)
            return json_reply({"error": message}, status)
        finally:
            if admitted:
                self.dataplane.gate.leave()
        observer.rpc(rpc, model, grpc.StatusCode.OK.name, time.perf_counter() - start)
        return reply


def _refuse(refusal: Exception) -> Route:
    """A route that answers with ``refusal`` whatever the method (an extension this server does not have)."""

    async def route(api: RestApi, request: Request) -> Reply:
        raise refusal

    return route


class _MethodNotAllowed(InvalidInput):
    """A known path with the wrong method (405)."""


def _chain_range(document: Mapping[str, Any]) -> tuple[int, int | None, list[int]]:
    def integer(key: str, default: int | None) -> int | None:
        value = document.get(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInput(f"chain {key!r} expects an integer, got {str(value)[:40]}")
        return value

    keep = document.get("keep", [])
    if not isinstance(keep, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in keep):
        raise InvalidInput(f"chain 'keep' expects an array of block indices, got {str(keep)[:80]}")
    return integer("start", 0) or 0, integer("stop", None), keep


# tail of /v2/models/<name>[/versions/<v>] -> (route name, method, route, access kind)
_MODEL_ROUTES: dict[str, tuple[str, str, Route, str]] = {
    "": ("ModelMetadata", "GET", RestApi.model_metadata, "api"),
    "/ready": ("ModelReady", "GET", RestApi.model_ready, "model-health"),
    "/config": ("ModelConfig", "GET", RestApi.model_config, "api"),
    "/stats": ("ModelStatistics", "GET", RestApi.model_statistics, "api"),
    "/infer": ("ModelInfer", "POST", RestApi.model_infer, "api"),
    "/blocks": ("ListBlocks", "GET", RestApi.list_blocks, "api"),
    "/chain": ("Chain", "POST", RestApi.chain, "api"),
}
_ROUTES: dict[str, tuple[str, str, Route, str]] = {
    "/v2/health/live": ("ServerLive", "GET", RestApi.server_live, "probe"),
    "/v2/health/ready": ("ServerReady", "GET", RestApi.server_ready, "probe"),
    "/v2": ("ServerMetadata", "GET", RestApi.server_metadata, "api"),
    "/v2/repository/index": ("RepositoryIndex", "POST", RestApi.repository_index, "api"),
}


# -- the transport: aiohttp's low-level web server, on the server's event loop -----------------------


class HttpServer:
    """aiohttp serving ``api`` on already-bound sockets, inside the running event loop.

    aiohttp's runner API embeds in a loop the process owns (``handle_signals=False``: signals are
    server/processes.py's), bounds request lines and headers by itself (8190 bytes each), and this
    reads each body in chunks up to ``max_body_bytes``, refusing a larger one (413, as gRPC's
    RESOURCE_EXHAUSTED) before it is read whole.
    """

    def __init__(self, api: RestApi, sockets: list[socket.socket], ssl_context: ssl.SSLContext | None,
                 max_body_bytes: int) -> None:
        self.api = api
        self.sockets = sockets
        self.ssl_context = ssl_context
        self.max_body_bytes = max_body_bytes
        self._runner: Any = None

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def _serve(self, request: Any) -> Any:
        from aiohttp import web

        headers = {key.lower(): value for key, value in request.headers.items()}
        limit = self.max_body_bytes
        refused, body = None, b""
        if request.content_length is not None and request.content_length > limit:
            refused = AnswerTooLarge(f"request body of {request.content_length:,} bytes is over the server's "
                                     f"message limit of {limit:,} bytes")
        else:
            chunks, size = [], 0
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    refused = AnswerTooLarge(f"request body is over the server's message limit of {limit:,} bytes")
                    break
                chunks.append(chunk)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        reply = await self.api.handle(request.method, request.path, headers, body, refused)
        response = web.Response(status=reply.status, body=reply.body,
                                headers={key.decode(): value.decode() for key, value in reply.headers})
        if refused is not None:  # the rest of the body is never read: this connection cannot go on
            response.force_close()
        return response

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.ServerRunner(web.Server(self._serve, access_log=None), handle_signals=False,
                                        shutdown_timeout=1.0, keepalive_timeout=15)
        await self._runner.setup()
        for sock in self.sockets:
            await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        """Stop listening and close connections (requests in flight were drained by the gate before)."""
        if self._runner is not None:
            await self._runner.cleanup()


def bind(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (0: a free port); SO_REUSEPORT for a group of workers.

    OSError when the port is taken (the caller checks first, to name who holds it).
    """
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    # The protocol number matters: asyncio sets TCP_NODELAY only on sockets that say IPPROTO_TCP, and
    # without it every answer written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return [sock]
