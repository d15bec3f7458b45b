"""The errors export refuses with: one line that names the problem and what to do.

The CLI prints them as ``layerserve <command>: <message>`` and exits 2, without a
traceback; anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class ExportError(ValueError):
    """A model cannot be exported, split or checked as asked; the message says why and what to do."""


class SplitError(ExportError):
    """A model cannot be split as asked; the message says why, naming the tensors involved."""


class GraphRefused(SplitError):
    """ONNX Runtime cannot load or run the whole graph: the graph is the problem, not a block or a cut.

    One type for every place that finds it, so a caller keeps this reason (and its advice) rather than
    replacing it with a guess of its own.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"ONNX Runtime cannot run the graph: {reason}")
