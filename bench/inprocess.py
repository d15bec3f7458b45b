"""In-process baseline: the server's own endpoints (same sessions, same ONNX Runtime options), no transport.

``InProcess(root)`` loads the repository exactly as ``layerserve serve`` does
(``Repository.load`` with the default ``RuntimeOptions``) and times ``Endpoint.run``
in a plain loop, one run at a time: the served-vs-in-process ratios compare the
same computation with and without gRPC, codec, validation, batching and the client.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from layerserve.server import runtime
from layerserve.server.repository import Repository


class InProcess:
    """Every endpoint of the repository at ``root``, callable without a server."""

    def __init__(self, root: Path) -> None:
        self.repository = Repository.load(Path(root), runtime.RuntimeOptions())
        self._warm: set[tuple[str, int]] = set()

    def time_runs(self, name: str, inputs: dict[str, np.ndarray], seconds: float, min_runs: int = 2) -> list[float]:
        """Seconds per ``Endpoint.run`` of the served ``name``, for at least ``seconds`` and ``min_runs`` runs.

        The first call per (name, batch) runs once untimed (ONNX Runtime allocates on first use).
        """
        endpoint = self.repository.endpoint(name)
        key = (name, next(iter(inputs.values())).shape[0])
        if key not in self._warm:
            endpoint.run(inputs)
            self._warm.add(key)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < min_runs or time.perf_counter() < deadline:
            start = time.perf_counter()
            endpoint.run(inputs)
            times.append(time.perf_counter() - start)
        return times

    def blocks(self, model: str) -> list:
        """The block endpoints of ``model``, in chain order."""
        version = self.repository.model(model)
        found = [endpoint for endpoint in version.endpoints.values() if endpoint.kind == "block"]
        return sorted(found, key=lambda endpoint: endpoint.block_index)

    def block_inputs(self, model: str, inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """What each block of ``model`` receives when ``inputs`` enter the first one (the chain's activations)."""
        blocks = self.blocks(model)
        feeds = [inputs]
        for endpoint, following in zip(blocks, blocks[1:], strict=False):
            outputs = endpoint.run(feeds[-1])
            feeds.append(dict(zip((spec.name for spec in following.inputs), outputs.values(), strict=True)))
        return feeds
