"""Reading the ONNX file a user points ``layerserve split`` at, with its external data.

``onnx.load`` refuses external data that is a symbolic link, to keep a model from reading
files outside its folder. Hugging Face's hub cache is exactly that: ``snapshots/<rev>/model.onnx``
and its ``model.onnx_data`` are links into ``blobs/``, and ONNX Runtime runs such a file as it
is. So the weights are read here: a location must name a file inside the model's folder (no
absolute path, no ``..``), and that file may be a link, which is followed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePath

import onnx
from onnx import external_data_helper

from .errors import SplitError

# Files users point split at that are models of another framework: how to make them ONNX.
CONVERSIONS = {
    ".keras": "a Keras model: convert it with tf2onnx (tf2onnx.convert.from_keras, or model.export(path, "
              "format='onnx') in Keras 3)",
    ".h5": "a Keras model: convert it with tf2onnx (tf2onnx.convert.from_keras)",
    ".pb": "a TensorFlow graph: convert it with tf2onnx (python -m tf2onnx.convert --graphdef ...)",
    ".tflite": "a TensorFlow Lite model: convert it with tf2onnx (python -m tf2onnx.convert --tflite ...)",
    ".pt": "a PyTorch file: export the model with `layerserve export --model FILE.py:NAME` or torch.onnx.export",
    ".pth": "a PyTorch file: export the model with `layerserve export --model FILE.py:NAME` or torch.onnx.export",
    ".safetensors": "weights without a graph: load them into the model and export it with torch.onnx.export",
}


def read_model(source: str | Path) -> onnx.ModelProto:
    """An ONNX file with its external data (read from the file's folder); SplitError for anything else."""
    path = Path(source)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            raise SplitError(f"{source} is a TensorFlow SavedModel; split takes an ONNX file: convert it with "
                             f"python -m tf2onnx.convert --saved-model {source} --output model.onnx")
        raise SplitError(f"{source} is a folder; split takes an ONNX file (a Triton repository with --triton)")
    if not path.is_file():
        raise SplitError(f"{source}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, ValueError, ... for garbage
        conversion = CONVERSIONS.get(path.suffix.lower())
        if conversion is not None:
            raise SplitError(f"{source} is not an ONNX model; it looks like {conversion}") from None
        first = " ".join(str(error).split())[:200]
        raise SplitError(f"{source} is not an ONNX model ({type(error).__name__}: {first})") from None
    if not proto.graph.node:
        raise SplitError(f"{source} is not an ONNX model (no graph nodes)")
    for tensor in _tensors(proto.graph):
        if external_data_helper.uses_external_data(tensor):
            _read_external(tensor, path)
    return proto


def _read_external(tensor: onnx.TensorProto, model: Path) -> None:
    """Fill ``tensor`` from the file its external data names beside ``model`` (module docstring)."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    parts = PurePath(location).parts
    if not location or PurePath(location).is_absolute() or ".." in parts:
        raise SplitError(f"{model}: weight {tensor.name[:80]!r} is stored at {location[:120]!r}, which is not a "
                         "file in the model's folder")
    data = model.parent / location
    if not data.is_file():
        raise SplitError(f"{model}: weight {tensor.name[:80]!r} is stored in {location[:120]!r}, which is not "
                         f"beside the model (copy it into {model.parent})")
    real = data.resolve()
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = real.name
    try:
        external_data_helper.load_external_data_for_tensor(tensor, str(real.parent))
    except Exception as error:  # a short file, an offset past its end
        first = " ".join(str(error).split())[:200]
        raise SplitError(f"{model}: weight {tensor.name[:80]!r} cannot be read from {location[:120]!r} "
                         f"({type(error).__name__}: {first})") from None
    tensor.data_location = onnx.TensorProto.DEFAULT
    del tensor.external_data[:]


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor ``graph`` holds: initializers and attribute tensors, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)
