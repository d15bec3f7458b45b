"""The real server for tests: app.start() on a background thread, and a free loopback port."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from layerserve.server import app, loops
from layerserve.server.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerThread:
    """The real app.start() on its own event loop (the one ``settings.loop`` names, as a served process
    runs on) in a background thread."""

    def __init__(self, settings: Settings) -> None:
        if settings.http_port == Settings.http_port:  # tests never take a fixed port: 0 picks a free one
            settings = settings.replace(http_port=0)
        self.settings = settings
        self.running: app.Running | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: loops.run(self._main(), settings.loop), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.running = await app.start(self.settings)
        except BaseException as error:  # surfaced to the test thread
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.running.stop(5)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and self._error is None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_url(self) -> str:
        """The HTTP/REST endpoint's base URL."""
        return f"http://127.0.0.1:{self.running.http_port}"
