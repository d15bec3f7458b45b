"""The drain gate: on shutdown, RPCs already accepted finish and new ones are told to retry.

gRPC's own ``server.stop(grace)`` cancels calls that have reached the server but
not yet its handlers, and clients see those as CANCELLED, which retry policies
do not retry. So shutdown first closes this gate while the server still runs:
every RPC that reaches ``handled`` from then on is refused with UNAVAILABLE
(ShuttingDown, retryable), and ``close`` waits until the RPCs admitted before
have answered, and ``settle`` until no new RPC has come for a moment (a call
arriving just as gRPC stops is the one it cancels); only then does the server
stop. Everything runs on the server's one event loop, so the counter needs no
lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .errors import ShuttingDown


class Gate:
    """Admits RPCs while open and counts those in flight."""

    def __init__(self) -> None:
        self.open = True
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self._last_refused = 0.0

    def enter(self) -> None:
        """Admit one RPC; ShuttingDown (UNAVAILABLE) once the gate is closed."""
        if not self.open:
            self._last_refused = time.monotonic()
            raise ShuttingDown("the server is shutting down; retry (another replica, or this one once restarted)")
        self.in_flight += 1

    def leave(self) -> None:
        """An admitted RPC has answered."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def close(self, timeout_s: float) -> int:
        """Refuse new RPCs and wait up to ``timeout_s`` for the admitted ones; returns how many are left."""
        self.open = False
        self._last_refused = time.monotonic()  # quiet is counted from the close
        if self.in_flight:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self.in_flight

    async def settle(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until no RPC has been refused for ``quiet_s`` seconds, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (now := time.monotonic()) < deadline:
            quiet = now - self._last_refused
            if quiet >= quiet_s:
                return
            await asyncio.sleep(min(quiet_s - quiet, deadline - now))
