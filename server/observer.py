"""What the server reports as it works: one typed observer, handed to the DataPlane.

The transport reports each RPC's outcome (``rpc``), the core each model run
(``run``) and each queued request dropped unrun (``dropped``). Prometheus metrics
implement it (server/metrics.py); tests and tools may pass their own, and the
default reports nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .batching import BatchReport
    from .endpoints import Endpoint


class Observer(Protocol):
    """Sees every RPC outcome and every model run of one server process."""

    def rpc(self, rpc: str, model: str, code: str, seconds: float) -> None:
        """An RPC answered: its method (``ModelInfer``), the model name it carried, the status code's name."""

    def run(self, endpoint: Endpoint, report: BatchReport) -> None:
        """``endpoint`` ran once (a merged batch or a single request)."""

    def dropped(self, endpoint: Endpoint, reason: str) -> None:
        """A queued request was dropped before its run: ``cancelled`` or ``deadline``."""


class Silent:
    """An Observer that reports nothing."""

    def rpc(self, rpc: str, model: str, code: str, seconds: float) -> None:
        pass

    def run(self, endpoint: Endpoint, report: BatchReport) -> None:
        pass

    def dropped(self, endpoint: Endpoint, reason: str) -> None:
        pass
