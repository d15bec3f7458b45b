"""The served-name scheme, in one place for server, client and benchmarks.

A model ``digits_cnn`` is served under three kinds of name, all through the
standard protocol's ``model_name``: the full graph (``digits_cnn``), each block
(``digits_cnn.02_stage2``) and the chain of every block (``digits_cnn.chain``).
"""

from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "."
CHAIN = "chain"


def block_name(model: str, block: str) -> str:
    """The served name of ``model``'s block ``block``: ``digits_cnn.02_stage2``."""
    return f"{model}{SEPARATOR}{block}"


def chain_name(model: str) -> str:
    """The served name of ``model``'s chain of every block: ``digits_cnn.chain``."""
    return f"{model}{SEPARATOR}{CHAIN}"


def owner(served: str, models: Iterable[str]) -> str | None:
    """The model among ``models`` that serves ``served`` (the longest whose name or name-dot prefixes it), or None."""
    for name in sorted(models, key=len, reverse=True):
        if served == name or served.startswith(name + SEPARATOR):
            return name
    return None
