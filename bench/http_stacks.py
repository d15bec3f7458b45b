"""Which HTTP stack serves the REST endpoint: the same routes (server/rest.py's RestApi) on each candidate.

    python -m bench.http_stacks [--seconds 3] [--repeats 3]

Each candidate runs in a process of its own on the default asyncio event loop (the one
grpc.aio shares), over the real DataPlane serving models/digits_cnn (one process, one
ONNX Runtime thread, no batching delay), and bench/rest_loadgen.py drives
``digits_cnn`` at batch 1 with 1 and 16 clients (binary tensors). Candidates: a plain
ASGI app on uvicorn (httptools), the same routes behind a Starlette route (FastAPI's
core) on uvicorn, aiohttp's web application (router), its low-level server, and the
server's own transport (``aiohttp-runner``: server/rest.py's HttpServer). uvicorn and
Starlette are needed only to run this (``pip install uvicorn httptools starlette``);
docs/server.md records the result.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.payloads import manifest, model_input
from bench.rest_loadgen import rest_body, run_rest_load
from layerserve.server.launcher import free_port

if TYPE_CHECKING:
    from layerserve.server.rest import RestApi

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS = ("asgi-uvicorn", "starlette-uvicorn", "aiohttp", "aiohttp-lowlevel", "aiohttp-runner")


async def _serve(stack: str, port: int) -> None:
    from layerserve.server import app, rest
    from layerserve.server.settings import Settings

    settings = Settings(models=REPO_ROOT / "models", workers=1, instances=1, max_queue_delay_us=0)
    dataplane = app.load(settings)
    api = rest.RestApi(dataplane)
    limit = dataplane.max_message_bytes
    if stack == "aiohttp-lowlevel":
        from aiohttp import web

        async def plain(request: web.BaseRequest) -> web.Response:
            body = await request.read()
            headers = {k.lower(): v for k, v in request.headers.items()}
            reply = await api.handle(request.method, request.path, headers, body)
            return web.Response(status=reply.status, body=reply.body,
                                headers={k.decode(): v.decode() for k, v in reply.headers})

        low = web.Server(plain, access_log=None)
        await asyncio.get_running_loop().create_server(low, "127.0.0.1", port)
    elif stack == "aiohttp-runner":
        server = rest.HttpServer(api, rest.bind("127.0.0.1", port, False), None, limit)
        await server.start()
    elif stack == "aiohttp":
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k.lower(): v for k, v in request.headers.items()}
            reply = await api.handle(request.method, request.path, headers, body)
            return web.Response(status=reply.status, body=reply.body,
                                headers={k.decode(): v.decode() for k, v in reply.headers})

        web_app = web.Application(client_max_size=limit)
        web_app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    else:
        target = asgi_app(api, limit)
        if stack == "starlette-uvicorn":
            from starlette.applications import Starlette
            from starlette.requests import Request
            from starlette.responses import Response
            from starlette.routing import Route

            async def endpoint(request: Request) -> Response:
                body = await request.body()
                headers = {k.lower(): v for k, v in request.headers.items()}
                reply = await api.handle(request.method, request.url.path, headers, body)
                return Response(reply.body, reply.status, {k.decode(): v.decode() for k, v in reply.headers})

            target = Starlette(routes=[Route("/{tail:path}", endpoint, methods=["GET", "POST"])])
        import uvicorn

        config = uvicorn.Config(target, http="httptools", loop="none", lifespan="off", access_log=False,
                                log_level="warning", server_header=False, date_header=False)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # what Server.serve would set before startup
        await server.startup(sockets=rest.bind("127.0.0.1", port, False))
    await asyncio.Event().wait()


def asgi_app(api: RestApi, limit: int) -> Callable[..., Awaitable[None]]:
    """The routes as a plain ASGI application (the body read whole; limits are the server's business)."""

    async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        reply = await api.handle(scope["method"], scope["path"], headers, b"".join(chunks))
        reply.headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    return app


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stack server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("stack server never listened")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.port))
        return 0
    _, spec = manifest(REPO_ROOT / "models", "digits_cnn")
    body, headers = rest_body(model_input(spec, 1))
    servers = {}
    try:
        chosen = [s for s in args.stacks.split(",") if s]
        for stack in chosen:
            port = free_port()
            process = subprocess.Popen([sys.executable, "-m", "bench.http_stacks", "--serve", stack, "--port", str(port)],
                                       cwd=REPO_ROOT)
            servers[stack] = (port, process)
            _wait_listening(port, process)
        results: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for clients in (1, 16):
                for stack, (port, _) in servers.items():
                    result = run_rest_load(f"http://127.0.0.1:{port}", "digits_cnn", body, headers, clients,
                                           args.seconds, 0.5)
                    results.setdefault((stack, clients), []).append(result.throughput)
                    print(f"[{repeat + 1}/{args.repeats}] {stack:<18} c={clients:<3} {result.throughput:8.1f} req/s "
                          f"p50 {result.p50_ms:6.2f} ms errors {result.errors}", flush=True)
        print("\n| stack | c=1 req/s median (min-max) | c=16 req/s median (min-max) |\n|---|---|---|")
        for stack in chosen:
            cells = []
            for clients in (1, 16):
                values = results[(stack, clients)]
                cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
            print(f"| {stack} | {cells[0]} | {cells[1]} |")
    finally:
        for _, process in servers.values():
            process.terminate()
            process.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
