"""Readable block names from where a node came from, and which module each block is.

The dynamo exporter writes ``pkg.torch.onnx.name_scopes`` on each node, e.g.
``"['', 'stage2', 'stage2.0', 'stage2.0.bn1', '_native_batch_norm_legit_no_training_3']"``:
the module path from the root, then the op. The TorchScript-based exporter names
nodes ``/layer1/layer1.0/conv1/Conv`` (each part an attribute name, a Sequential's
child qualified by its parent's). Both become the same *module path* of full
dotted names, outermost first: ``['layer1', 'layer1.0', 'layer1.0.conv1']``.
Graphs with neither get names from op types.

Which depth of that path makes a block (:func:`scope_labels`):

* ``depth=N``: the module at depth N (1: the top-level modules, ``layer1``;
  2: one level down, ``layer1.0``), or the deepest one a node has when shallower;
* ``depth=None`` (auto): the top-level modules, except that a module holding more
  than half of the model's weighted layers (Conv/Gemm/MatMul) is opened, and so on
  down: torchvision's ``features`` container (MobileNet, EfficientNet, DenseNet)
  and RegNet's ``trunk_output`` give one block per stage, while ResNet's
  ``layer1``..``layer4`` (none holds half) stay whole.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter

import onnx_ir as ir

from .layers import WEIGHTED_OPS

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_UNSAFE = re.compile(r"[^A-Za-z0-9]+")
# Tools that insert or rewrite nodes prefix the TorchScript name they came from: ONNX Runtime's saved
# optimized graph of an FP16 model names them ``InsertedPrecisionFreeCast_/layer1/layer1.0/conv1/Conv``.
_INSERTED = re.compile(r"^[A-Za-z][A-Za-z0-9]*_(?=/)")


def module_path(node: ir.Node) -> list[str]:
    """The modules enclosing ``node`` as full dotted names, outermost first; [] if the graph does not say."""
    raw = node.metadata_props.get(SCOPES_KEY)
    if raw:
        try:
            scopes = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            scopes = []
        return [s for s in scopes[:-1] if isinstance(s, str) and s]
    name = _INSERTED.sub("", node.name or "")
    if name.startswith("/"):
        return _dotted([p for p in name.split("/") if p][:-1])
    return []


def _dotted(parts: list[str]) -> list[str]:
    """TorchScript's per-level names (``features``, ``features.3``, ``block``) as full dotted paths."""
    path: list[str] = []
    for index, part in enumerate(parts):
        if not path:
            path.append(part)
        elif part.startswith(parts[index - 1] + "."):  # a Sequential's child: "features" -> "features.3"
            path.append(path[-1] + part[len(parts[index - 1]) :])
        else:
            path.append(f"{path[-1]}.{part}")
    return path


def top_scope(node: ir.Node) -> str | None:
    """The top-level module ``node`` belongs to (``stage2``), or None when the graph does not say."""
    path = module_path(node)
    return path[0] if path else None


def scope_labels(nodes: list[ir.Node], depth: int | None = None) -> dict[ir.Node, str | None]:
    """Each node's block scope (a full dotted module name) at ``depth`` (None: auto; module docstring)."""
    paths = {node: module_path(node) for node in nodes}
    if depth is not None:
        return {node: path[min(depth, len(path)) - 1] if path else None for node, path in paths.items()}
    opened = _opened_scopes([paths[n] for n in nodes if n.op_type in WEIGHTED_OPS and paths[n]])
    labels: dict[ir.Node, str | None] = {}
    for node, path in paths.items():
        level = 0
        while level < len(path) - 1 and path[level] in opened:
            level += 1
        labels[node] = path[level] if path else None
    return labels


def _opened_scopes(weighted: list[list[str]]) -> set[str]:
    """Scopes holding more than half of the weighted layers (and more than one child), outermost first."""
    opened: set[str] = set()
    total = len(weighted)
    level = 0
    while total:
        counts = Counter(path[level] for path in weighted if len(path) > level and all(p in opened for p in path[:level]))
        scope, count = counts.most_common(1)[0] if counts else (None, 0)
        if scope is None or 2 * count <= total:
            break
        children = {path[level + 1] for path in weighted if len(path) > level + 1 and path[level] == scope}
        if len(children) < 2:
            break
        opened.add(scope)
        level += 1
    return opened


def sanitize(label: str) -> str:
    """``stage2.0.bn1`` -> ``stage2_0_bn1``: safe in file names and tensor names."""
    return _UNSAFE.sub("_", label).strip("_") or "block"


def layer_names(nodes: list[ir.Node]) -> dict[ir.Node, str]:
    """Layer names from node names a converter wrote as ``<model>/<layer>/<op>``: tf2onnx writes Keras'
    ``mobilenetv2_1.00_224/block_1_project/Conv2D`` (``StatefulPartitionedCall/resnet50/...`` from a SavedModel).
    The layer is the part after what every such name starts with; {} when most names are not like that."""
    parts = {node: node.name.split("/") for node in nodes
             if node.name and not node.name.startswith("/") and "/" in node.name}
    if not parts or 2 * len(parts) < len(nodes):
        return {}
    shared = len(os.path.commonprefix(list(parts.values())))
    return {node: path[shared] for node, path in parts.items() if len(path) > shared + 1 and path[shared]}


def block_label(nodes: list[ir.Node], labels: dict[ir.Node, str | None] | None = None,
                layers: dict[ir.Node, str] | None = None) -> str:
    """A label for a block made of ``nodes`` (graph order): the scope of its last labelled node, or
    ``<first>_to_<last>`` when its first and last weighted layers lie in different scopes of ``labels`` (no
    cut between those modules).

    ``labels`` maps nodes to scopes (:func:`scope_labels`); without it, the deepest
    module of the last node with a module path. Graphs without module paths: the layer
    (``layers``, :func:`layer_names`) of its last Conv/Gemm/MatMul, else its op type; else
    the same of its last node.
    """
    def scope_of(node: ir.Node) -> str | None:
        return labels.get(node) if labels is not None else (module_path(node) or [None])[-1]

    weighted_scopes = [labels.get(node) for node in nodes if node.op_type in WEIGHTED_OPS and labels.get(node)] \
        if labels is not None else []
    if weighted_scopes and weighted_scopes[0] != weighted_scopes[-1]:
        # No cut between those modules (a detector's neck and head): the name says the block spans them.
        return f"{sanitize(weighted_scopes[0])}_to_{sanitize(weighted_scopes[-1])}"
    for node in reversed(nodes):
        scope = scope_of(node)
        if scope:
            return sanitize(scope)
    weighted = [n for n in nodes if n.op_type in WEIGHTED_OPS]
    last = weighted[-1] if weighted else nodes[-1]
    layer = (layers or {}).get(last)
    return sanitize(layer) if layer else sanitize(last.op_type.lower())


def block_name(index: int, label: str) -> str:
    """``00_stem``: zero-padded position, then the label."""
    return f"{index:02d}_{label}"
