"""Where a server process spends its time under load: py-spy samples of the GIL holder, summarized.

``profile_during(pid, seconds, work)`` records the process with ``py-spy record --gil``
(only the thread holding the GIL is sampled: on a Python server that is the serial
resource) while ``work()`` drives load, and returns the share of the GIL held, the
share per area (by the innermost Python frame's file) and the top innermost functions.
Time in C extensions is charged to the Python frame that called into them: an event-loop
callback with no Python frame above it (``Handle._run`` innermost) is grpc.aio's Cython
core or asyncio's C task stepping; on uvloop, whose loop is C, the innermost Python frame of
that time is the ``asyncio.Runner.run`` that started the loop.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE = 250  # samples per second

# Area of a frame, by file path; first match wins.
AREAS = [
    ("ONNX Runtime (Session.run)", re.compile(r"^onnxruntime/")),
    ("event-loop callbacks in C (grpc.aio Cython core, uvloop or asyncio tasks)",
     re.compile(r"^asyncio/(events|runners)\.py$")),
    ("asyncio event loop (Python)", re.compile(r"^asyncio/|^selectors\.py$")),
    ("gRPC (Python layer)", re.compile(r"^grpc/")),
    ("protobuf", re.compile(r"^google/protobuf")),
    ("prometheus_client", re.compile(r"^prometheus_client/")),
    ("numpy", re.compile(r"^numpy/")),
    ("layerserve (server/, proto/)", re.compile(r"^(server|proto|cli)/")),
    ("worker threads (concurrent.futures)", re.compile(r"^(threading\.py|concurrent/)")),
]
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _area(path: str) -> str:
    for name, pattern in AREAS:
        if pattern.search(path):
            return name
    return "other Python"


def summarize(raw: str, seconds: float, rate: int = RATE, top: int = 12) -> dict[str, object]:
    """Busy-sample shares from py-spy's raw output (``frame;frame;... count`` per line)."""
    areas: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.split(";")[-1]
        match = _FRAME.match(leaf)
        function, path = (match["function"], match["file"]) if match else (leaf, leaf)
        areas[_area(path)] += count
        leaves[f"{function} ({Path(path).name})"] += count
        total += count
    share = {name: round(100.0 * n / total, 1) for name, n in areas.most_common()} if total else {}
    return {
        "busy_samples": total,
        "gil_held_share": round(total / (seconds * rate), 2),  # of the wall time, summed over processes
        "area_percent": share,
        "top_functions_percent": {name: round(100.0 * n / total, 1) for name, n in leaves.most_common(top)},
    }


def profile_during(pid: int, seconds: float, work: Callable[[], object],
                   stacks_out: Path | None = None) -> dict[str, object]:
    """Sample ``pid`` for ``seconds`` while ``work()`` runs on a thread; the summary, with ``work``'s result.

    ``work`` should last a little longer than ``seconds``. ``stacks_out`` keeps the collapsed
    stacks (speedscope and flamegraph.pl read them). RuntimeError with py-spy's message when it
    cannot attach.
    """
    with tempfile.TemporaryDirectory() as folder:
        raw_path = Path(folder) / "stacks.txt"
        command = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(RATE),
                   "--format", "raw", "--output", str(raw_path), "--nonblocking", "--gil", "--subprocesses"]
        box: dict[str, object] = {}
        spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        worker = threading.Thread(target=lambda: box.setdefault("result", work()))
        worker.start()
        output, _ = spy.communicate(timeout=seconds + 60)
        worker.join()
        if spy.returncode != 0 or not raw_path.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {output.strip()[-500:]}")
        summary = summarize(raw_path.read_text(), seconds)
        if stacks_out is not None:
            stacks_out.parent.mkdir(parents=True, exist_ok=True)
            stacks_out.write_text(raw_path.read_text())
    summary["work"] = box.get("result")
    return summary
