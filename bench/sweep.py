"""Comparisons across server configurations, measured interleaved.

Every server of a group is started at once and the repeats go round-robin over them
(server A, B, C, A, B, C, ...), so drift on the shared machine hits each alike; an idle
server costs next to nothing meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.served import served, served_rest
from layerserve.server.launcher import ServerProcess

# label -> a context manager factory giving a started server (with .address and .process)
Servers = dict[str, Callable[[], ServerProcess]]


def layerserve(root: Path, *flags: str) -> Callable[[], ServerProcess]:
    """A factory for ``layerserve serve`` on ``root`` with ``flags`` (logs at WARNING)."""
    return lambda: ServerProcess(root, ["--log-level", "WARNING", *flags], ready_timeout=180)


def interleaved(servers: Servers, name: str, inputs: dict[str, np.ndarray], concurrencies: list[int],
                repeats: int, duration: float, warmup: float, log: Callable[[str], None] = print,
                ) -> dict[str, dict[int, list[dict]]]:
    """label -> concurrency -> one record per repeat (bench.served.Cell.record) of ``name`` at batch ``inputs``."""
    results: dict[str, dict[int, list[dict]]] = {label: {c: [] for c in concurrencies} for label in servers}
    with contextlib.ExitStack() as stack:
        started = {label: stack.enter_context(factory()) for label, factory in servers.items()}
        for repeat in range(repeats):
            for concurrency in concurrencies:
                for label, server in started.items():
                    cell = served(server.address, name, inputs, concurrency, duration, warmup, server.process.pid)
                    results[label][concurrency].append(cell.record())
                    log(f"  [{repeat + 1}/{repeats}] {label:<28} c={concurrency:<3} "
                        f"{cell.result.throughput:8.1f} req/s  p50 {cell.result.p50_ms:7.2f} ms  "
                        f"errors {cell.result.errors}")
    return results


def interleaved_rest(servers: Servers, name: str, inputs_of: Callable[[int], dict[str, np.ndarray]],
                     cells: list[tuple[int, int]], encodings: list[str], repeats: int, duration: float,
                     warmup: float, log: Callable[[str], None] = print) -> dict[str, dict[str, list[dict]]]:
    """label -> ``"<encoding>/b<batch>/c<clients>"`` -> one record per repeat, over each server's HTTP/REST
    port (``server.http_url``); ``encodings``: "binary" (tritonclient.http's) and/or "json"."""
    keys = [f"{encoding}/b{batch}/c{clients}" for encoding in encodings for batch, clients in cells]
    results: dict[str, dict[str, list[dict]]] = {label: {key: [] for key in keys} for label in servers}
    with contextlib.ExitStack() as stack:
        started = {label: stack.enter_context(factory()) for label, factory in servers.items()}
        for repeat in range(repeats):
            for encoding in encodings:
                for batch, clients in cells:
                    key = f"{encoding}/b{batch}/c{clients}"
                    for label, server in started.items():
                        cell = served_rest(server.http_url, name, inputs_of(batch), clients, duration, warmup,
                                           server.process.pid, encoding == "binary")
                        results[label][key].append(cell.record())
                        log(f"  [{repeat + 1}/{repeats}] REST {key:<16} {label:<22} {cell.result.throughput:8.1f} "
                            f"req/s  p50 {cell.result.p50_ms:7.2f} ms  errors {cell.result.errors}")
    return results
