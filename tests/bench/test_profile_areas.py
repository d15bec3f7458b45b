"""bench/profile.py's areas: time in a C event loop is charged to the loop's callbacks, whichever loop runs."""

from __future__ import annotations

from bench import profile

C_CALLBACKS = "event-loop callbacks in C (grpc.aio Cython core, uvloop or asyncio tasks)"


def test_a_c_loop_is_named_as_such_on_asyncio_and_on_uvloop() -> None:
    raw = "\n".join([
        # uvloop: its loop is C, so the time in grpc.aio's Cython core has Runner.run innermost
        "<module> (server.py:9);run (asyncio/runners.py:190);Runner.run (asyncio/runners.py:118) 7",
        # asyncio: the same time has Handle._run innermost
        "<module> (server.py:9);BaseEventLoop._run_once (asyncio/base_events.py:1922);"
        "Handle._run (asyncio/events.py:80) 3",
        # asyncio's own Python
        "<module> (server.py:9);BaseEventLoop._run_once (asyncio/base_events.py:1922) 2",
        "<module> (server.py:9);DataPlane.infer (server/dataplane.py:300) 8",
    ])
    summary = profile.summarize(raw, seconds=1.0, rate=20)
    assert summary["busy_samples"] == 20
    assert summary["area_percent"] == {C_CALLBACKS: 50.0, "layerserve (server/, proto/)": 40.0,
                                       "asyncio event loop (Python)": 10.0}
