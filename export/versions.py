"""The versions of the tools that shape exported bytes, for the manifest's provenance.

Its own module because every export path records them, and ``layerserve split`` of an
ONNX file must not import torch (only reads its version when installed).
"""

from __future__ import annotations

import platform
from importlib import metadata

TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "scikit-learn", "numpy")


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools that shape the exported bytes."""
    versions = {"python": platform.python_version()}
    for tool in TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            continue
    return versions
