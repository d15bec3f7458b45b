"""Readable block names from where a node came from.

The dynamo exporter writes ``pkg.torch.onnx.name_scopes`` on each node, e.g.
``"['', 'stage2', 'stage2.0', 'stage2.0.bn1', '_native_batch_norm_legit_no_training_3']"``:
the module path from the root, then the op. TorchScript-era exporters name nodes
``/layer1/layer1.0/conv1/Conv``. Graphs with neither get names from op types.
"""

from __future__ import annotations

import ast
import re

import onnx_ir as ir

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def module_path(node: ir.Node) -> list[str]:
    """The module names enclosing ``node``, outermost first (``['stage2', 'stage2.0', ...]``); [] if unknown."""
    raw = node.metadata_props.get(SCOPES_KEY)
    if raw:
        try:
            scopes = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            scopes = []
        return [s for s in scopes[:-1] if s]
    name = node.name or ""
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p]
        return parts[:-1]
    return []


def top_scope(node: ir.Node) -> str | None:
    """The top-level module ``node`` belongs to (``stage2``), or None when the graph does not say."""
    path = module_path(node)
    return path[0] if path else None


def sanitize(label: str) -> str:
    """``stage2.0.bn1`` -> ``stage2_0_bn1``: safe in file names and tensor names."""
    return _UNSAFE.sub("_", label).strip("_") or "block"


def block_label(nodes: list[ir.Node], granularity: str) -> str:
    """A label for a block made of ``nodes`` (graph order).

    ``layer``: the top-level scope of its last node; ``cut``: the deepest module of its
    last node. Without scopes: the op type of its last Conv/Gemm/MatMul, else of its last node.
    """
    for node in reversed(nodes):
        path = module_path(node)
        if path:
            return sanitize(path[0] if granularity == "layer" else path[-1])
    weighted = [n for n in nodes if n.op_type in WEIGHTED_OPS]
    last = weighted[-1] if weighted else nodes[-1]
    return sanitize(last.op_type.lower())


def block_name(index: int, label: str) -> str:
    """``00_stem``: zero-padded position, then the label."""
    return f"{index:02d}_{label}"


WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
