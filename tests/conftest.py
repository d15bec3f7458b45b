"""Session fixtures shared across test folders: foreign ONNX files and their split model repository.

Building them costs ~30 s (seven dynamo exports at 224x224), so the export, server and client
tests of bringing your own CNN share one build.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import cnn_zoo
import foreign_graphs
import pytest

from layerserve.cli.main import main

# Servers the tests start from the command line (and their workers) take a free HTTP/REST port rather
# than the fixed default 8000, which another server on this machine may hold; a test that means a
# port says so with --http-port.
os.environ.setdefault("LAYERSERVE_HTTP_PORT", "0")


@pytest.fixture(scope="session")
def foreign_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every foreign ONNX file by model name: ``<arch>_<torchscript|dynamo>`` for the zoo, then OTHER_GRAPHS."""
    folder = tmp_path_factory.mktemp("foreign-onnx")
    files = {
        f"{arch}_{how}": foreign_graphs.export_zoo_model(arch, how, folder / f"{arch}_{how}.onnx")
        for arch in cnn_zoo.ZOO
        for how in foreign_graphs.EXPORTS
    }
    files.update({name: make(folder / f"{name}.onnx") for name, make in foreign_graphs.OTHER_GRAPHS.items()})
    return files


@pytest.fixture(scope="session")
def foreign_repository(foreign_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``layerserve split FILE --out DIR`` with no other flag, for every foreign file, into one repository."""
    root = tmp_path_factory.mktemp("foreign-models")
    for name, path in foreign_files.items():
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["split", str(path), "--out", str(root / name)])
        assert code == 0, f"layerserve split {path.name} failed"
    return root
