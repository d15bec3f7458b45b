"""The event loop: uvloop by default where installed, asyncio's own on request, a clear refusal when
uvloop is asked for and missing; the loop a server reports is the one its requests run on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from layerserve.server import loops
from layerserve.server.launcher import ServerProcess
from layerserve.server.settings import from_sources

uvloop = pytest.importorskip("uvloop", reason="uvloop has no build for this platform")


def _without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import uvloop`` fail, as on a machine where it is not installed (None in sys.modules
    stops an import with ImportError)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def _kind() -> str:
    return loops.running_loop_name()


def test_auto_and_uvloop_run_on_uvloop_and_asyncio_on_asyncios_own() -> None:
    assert loops.run(_kind(), "auto") == "uvloop"
    assert loops.run(_kind(), "uvloop") == "uvloop"
    assert loops.run(_kind(), "asyncio") == "asyncio"
    assert loops.resolved("auto") == "uvloop"


def test_running_a_loop_changes_no_process_wide_policy() -> None:
    before = asyncio.get_event_loop_policy()
    loops.run(_kind(), "uvloop")
    assert asyncio.get_event_loop_policy() is before
    assert asyncio.run(_kind()) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_uvloop(monkeypatch)
    assert loops.resolved("auto") == "asyncio"
    assert loops.run(_kind(), "auto") == "asyncio"
    with pytest.raises(ValueError) as refused:
        from_sources({"loop": "uvloop"}, {})
    message = str(refused.value)
    assert message.startswith("--loop uvloop: loop uvloop: uvloop is not installed") and "--loop asyncio" in message
    assert "\n" not in message
    assert from_sources({}, {}).loop == "auto"  # the default still starts


@pytest.mark.parametrize(("flags", "expected"), [
    ([], "uvloop"),
    (["--loop", "asyncio"], "asyncio"),
    (["--loop", "asyncio", "--workers", "2"], "asyncio"),
    (["--workers", "2"], "uvloop"),
])
def test_a_server_reports_the_loop_it_serves_on_and_answers(tiny_repository: Path, flags: list[str],
                                                             expected: str) -> None:
    flags = ["--workers", "1", *flags] if "--workers" not in flags else flags
    with ServerProcess(tiny_repository, ["--metrics-port", "-1", "--log-format", "text", *flags]) as server, \
            triton.InferenceServerClient(server.address) as client:
        tensor = triton.InferInput("x", [2, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 1, 8, 8), np.float32))
        assert client.infer("tiny_cnn", [tensor]).as_numpy("logits").shape == (2, 10)
        # Ready means one worker answers; wait for every worker's start-up line before stopping them.
        workers = int(flags[flags.index("--workers") + 1])
        deadline = time.monotonic() + 60
        while server.log_tail(400).count(" serving {") < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        log = server.log_tail(400)
    serving = [line for line in log.splitlines() if " serving {" in line]
    assert len(serving) == workers, log[-2000:]  # every worker says which loop it serves on
    assert all(f'"event_loop": "{expected}"' in line for line in serving), log[-2000:]


def test_the_cli_refuses_an_unknown_loop_in_one_line(tiny_repository: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "layerserve.cli.main", "serve", "--models", str(tiny_repository),
                           "--loop", "tokio"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'tokio'" in done.stderr and "Traceback" not in done.stderr
