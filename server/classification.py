"""Triton's classification extension: an output returned as its top classes instead of its tensor.

A request asks it per output with the parameter ``classification`` (tritonclient's
``InferRequestedOutput(name, class_count=k)``; Triton's own ``image_client.py`` example does).
That output then comes back as a BYTES tensor [rows, k] ([k] for a model without a batch
dimension) of ``"<value>:<index>[:<label>]"`` strings, highest value first: ``index`` is
the position within the row's elements (all dimensions past the batch, flattened), ``value``
the element as the model gave it, ``label`` the class name where the model has them (the
manifest's labels, ``layerserve split --labels``; a Triton model's ``label_filename``).
k is at most the row's element count, as in Triton.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

PARAMETER = "classification"
# A class count past this is a client mistake, refused before anything is built for it (server/parameters.py).
MOST_CLASSES = 1 << 20


def _value_texts(values: np.ndarray) -> list[str]:
    """Elements as Triton writes them: floats with six decimals (C++ ``std::to_string``), integers as they are."""
    if np.issubdtype(values.dtype, np.floating):
        return [f"{value:f}" for value in values.astype(np.float64).tolist()]
    return [str(int(value)) for value in values.tolist()]


def top_classes(array: np.ndarray, count: int, batched: bool, labels: Sequence[str] = ()) -> np.ndarray:
    """``array`` (one model output) as its ``count`` highest elements per row, as a BYTES array (module docstring).

    Sorted for all rows at once and formatted in one pass: a class count in the thousands over a
    batch of 64 is ~10^5 strings, and this runs while other requests wait (DataPlane.infer).
    """
    rows = array.reshape(array.shape[0] if batched and array.ndim else 1, -1)
    kept = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :kept]
    texts = _value_texts(np.take_along_axis(rows, order, axis=1).ravel())
    named = len(labels)
    strings = [f"{text}:{index}:{labels[index]}".encode() if index < named else f"{text}:{index}".encode()
               for text, index in zip(texts, order.ravel().tolist(), strict=True)]
    result = np.empty(len(strings), dtype=object)
    result[:] = strings
    return result.reshape(order.shape) if batched else result.reshape(kept)


def encoded_bytes(array: np.ndarray) -> int:
    """Bytes ``array`` takes in an answer: BYTES elements as Triton's 4-byte length and the bytes themselves."""
    if array.dtype == object:
        return sum(len(element) for element in array.ravel().tolist()) + 4 * array.size
    return array.nbytes


def classified(outputs: Mapping[str, np.ndarray], counts: Mapping[str, int], batched: bool,
               labels: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """``outputs`` with each one named in ``counts`` replaced by its top classes."""
    return {name: top_classes(array, counts[name], batched, labels.get(name, ())) if name in counts else array
            for name, array in outputs.items()}


def labels_by_output(labels: Sequence[str], output_shapes: Mapping[str, Sequence[int]]) -> dict[str, list[str]]:
    """Which outputs the model's class names label: those with as many elements per row as there are names."""
    if not labels:
        return {}
    return {name: list(labels) for name, shape in output_shapes.items()
            if all(dim > 0 for dim in shape[1:]) and math.prod(shape[1:]) == len(labels)}
