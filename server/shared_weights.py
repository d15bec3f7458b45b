"""One copy of each weight across the optimized graphs: identical external tensors point at one place.

ONNX Runtime optimizes the full graph and each block separately (server/optimized.py), and
writes each copy's weights to a file of its own. A block holds the same convolutions as the
full graph, transformed the same way, so the same bytes sit in two files, and every worker
maps both: a ResNet-50's weights counted twice. After the copies are made, every external
initializer whose bytes already exist in an earlier copy is pointed at those bytes instead
(its ``location``/``offset``/``length``), so the sessions map one file region.

The graphs are read through server/onnx_fields.py (the serving install has no ``onnx`` package).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .onnx_fields import EXTERNAL, Model, save


def share_identical(graphs: list[Path]) -> int:
    """Point each external initializer of ``graphs`` (ONNX files in one folder, earlier ones first) whose
    bytes an earlier initializer already holds at that earlier region; returns the bytes no longer mapped
    twice. A graph is rewritten through a temporary file and an atomic rename."""
    first_place: dict[tuple[int, bytes], tuple[str, int]] = {}
    shared = 0
    for graph in graphs:
        model = Model.FromString(graph.read_bytes())
        changed = False
        for tensor in model.graph.initializer:
            entries = {entry.key: entry for entry in tensor.external_data}
            if tensor.data_location != EXTERNAL or not {"location", "length"} <= entries.keys():
                continue
            location = entries["location"].value
            offset = int(entries["offset"].value) if "offset" in entries else 0
            length = int(entries["length"].value)
            with open(graph.parent / location, "rb") as data:
                data.seek(offset)
                key = (length, hashlib.sha256(data.read(length)).digest())
            place = first_place.setdefault(key, (location, offset))
            if place == (location, offset):
                continue
            entries["location"].value = place[0]
            if "offset" in entries:
                entries["offset"].value = str(place[1])
            else:
                tensor.external_data.add(key="offset", value=str(place[1]))
            changed = True
            shared += length
        if changed:
            save(model, graph)
    return shared
