"""What the client tests share: the committed models, their samples, and a real server subprocess.

A module of its own (not conftest): test modules import it by a name no other test
folder uses, so the whole suite can run in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server.launcher import ServerProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"
BUILT_IN = ("digits_cnn", "digits_resnet")

__all__ = ["BUILT_IN", "MODELS", "REPO_ROOT", "ServerProcess", "free_port", "layerserve", "samples", "start_server"]


def layerserve(*args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
    """``layerserve ARGS [--server SERVER]`` as a subprocess, as a person would run it."""
    command = [sys.executable, "-m", "layerserve.cli.main", *args]
    if server is not None:
        command += ["--server", server]
    # Wide enough that rich never wraps a cell the assertions look for.
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)


def start_server(tmp_path_factory: pytest.TempPathFactory, name: str) -> ServerProcess:
    """A ready server over models/ (text logs in a temp folder, no metrics port)."""
    server = ServerProcess(
        MODELS,
        extra_args=["--metrics-port", "-1", "--log-format", "text"],
        log_path=tmp_path_factory.mktemp(name) / "server.log",
    )
    return server.start()


def samples(model: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The committed held-out samples of ``model`` (latest version), optionally the first ``limit``."""
    folder = version_folders(MODELS / model)[-1]
    manifest = read_manifest(folder)
    with np.load(folder / manifest.samples.file.path) as archive:
        images, labels = archive["images"], archive["labels"]
    return images[:limit], labels[:limit]
