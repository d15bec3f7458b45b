"""Kept for the benchmark modules' imports: the launcher lives in ``layerserve.server.launcher``."""

from layerserve.server.launcher import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port"]
