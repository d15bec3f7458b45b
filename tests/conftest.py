"""Session fixtures shared across test folders: foreign ONNX files and their split model repository.

Building them costs about a minute on two cores (fourteen torch.export-based exports at 224x224, one
process per core), so the export, server and client tests of bringing your own CNN share one build.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
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
    jobs = [(arch, how, folder / f"{arch}_{how}.onnx") for arch in cnn_zoo.ZOO for how in foreign_graphs.EXPORTS]
    # torch's exporters are single-threaded Python for seconds per model (85 s for these 21 on CI's two
    # cores, most of the suite's longest setup): one process per core, started clean (spawn), not forked
    # from a process that holds torch's threads.
    workers = min(len(jobs), len(os.sched_getaffinity(0)))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = pool.map(foreign_graphs.export_zoo_model, *zip(*jobs, strict=True))
        files = {f"{arch}_{how}": path for (arch, how, _), path in zip(jobs, paths, strict=True)}
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
