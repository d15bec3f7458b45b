"""Reading and writing model-repository manifests (``repository.proto`` as JSON).

The repository layout (documented in docs/model-repository.md)::

    models/<name>/<version>/manifest.json   ModelManifest, protobuf JSON
    models/<name>/<version>/model.onnx      the full graph
    models/<name>/<version>/blocks/NN_*.onnx the ordered blocks
    models/<name>/<version>/samples.npz     labelled evaluation samples

Export writes these; the server and client only read them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import json_format

from .repository_pb2 import ModelManifest

MANIFEST_FILE = "manifest.json"
# What marks a Triton model folder (proto/triton.py reads it).
TRITON_CONFIG = "config.pbtxt"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, unreadable or not of a format we know."""


def read_manifest(path: Path) -> ModelManifest:
    """Parse ``path`` (a manifest.json, or a version folder holding one) into a ModelManifest."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        text = path.read_text()
    except OSError as error:
        raise ManifestError(f"cannot read manifest {path}: {error.strerror or error}") from None
    manifest = ModelManifest()
    try:
        json_format.Parse(text, manifest)
    except json_format.ParseError as error:
        raise ManifestError(f"{path} is not a valid manifest: {error}") from None
    if manifest.format != FORMAT_VERSION:
        raise ManifestError(f"{path} has manifest format {manifest.format}, expected {FORMAT_VERSION}")
    return manifest


def write_manifest(manifest: ModelManifest, path: Path) -> Path:
    """Write ``manifest`` as indented JSON to ``path`` (or ``path/manifest.json`` for a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    manifest.format = manifest.format or FORMAT_VERSION
    # sort_keys: protobuf maps (tool_versions) iterate in a per-process order; sorted keys
    # make the file reproducible byte for byte.
    text = json_format.MessageToJson(manifest, indent=2, preserving_proto_field_name=True, sort_keys=True)
    path.write_text(text + "\n")
    return path


def version_folders(model_dir: Path) -> list[Path]:
    """A model folder's numeric version folders holding a manifest, oldest first."""
    found = [
        child
        for child in Path(model_dir).iterdir()
        if child.is_dir() and child.name.isdigit() and (child / MANIFEST_FILE).is_file()
    ]
    return sorted(found, key=lambda child: int(child.name))


def iter_repository(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(model name, version folder)`` for every model version under ``root``, sorted.

    Triton model folders (holding a config.pbtxt) are left out: proto/triton.py reads those.
    """
    for model_dir in sorted(Path(root).iterdir()):
        if model_dir.is_dir() and not (model_dir / TRITON_CONFIG).is_file():
            for version_dir in version_folders(model_dir):
                yield model_dir.name, version_dir


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
