"""The event loop a server process runs on: uvloop where it is installed, asyncio's own otherwise.

Every request crosses the event loop several times (gRPC's completion queue, the handler, the
batching task), so the loop's own cost is part of every request's. uvloop (libuv, in Cython) cut
the server's CPU per request by 2-9 % across the digits grid on the 2-core machine (docs/BENCHMARKS.md,
"Issue 12, fourth pass"). uvicorn and MLServer make the same choice (KServe's gRPC server, measured
beside us, runs on asyncio's loop). ``--loop asyncio`` keeps the standard library's loop, for
debugging or for a platform without uvloop; ``auto`` falls back to it quietly where uvloop cannot be
imported.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

LoopChoice = Literal["auto", "asyncio", "uvloop"]
LOOP_CHOICES: tuple[str, ...] = get_args(LoopChoice)

_T = TypeVar("_T")


class LoopUnavailable(ValueError):
    """``--loop uvloop`` where uvloop cannot be imported (a ValueError: a start-up setting error)."""


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory ``asyncio.Runner`` takes for ``choice``; None means asyncio's default loop.

    Raises LoopUnavailable for ``uvloop`` when it is not installed.
    """
    if choice == "asyncio":
        return None
    factory = _uvloop_factory()
    if factory is None and choice == "uvloop":
        raise LoopUnavailable("loop uvloop: uvloop is not installed here (pip install uvloop; it has no "
                              "Windows build), or use --loop asyncio")
    return factory


def resolved(choice: LoopChoice) -> str:
    """The loop ``choice`` gives on this machine: "uvloop" or "asyncio" (LoopUnavailable as loop_factory)."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(main: Coroutine[Any, Any, _T], choice: LoopChoice) -> _T:
    """``asyncio.run(main)`` on the loop ``choice`` names; nothing process-wide (no loop policy) changes."""
    factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """The running loop's kind, as the start-up log reports it: "uvloop" or "asyncio"."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
