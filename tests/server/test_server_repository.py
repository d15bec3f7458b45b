"""Loading a repository: a model's own folder given as the repository is named for what it is."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from layerserve.server import runtime
from layerserve.server.repository import Repository


def test_a_model_folder_given_as_the_repository_says_so(tiny_repository: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    model_folder = tmp_path / "my_cnn"
    shutil.copytree(tiny_repository / "tiny_cnn", model_folder)  # what `layerserve split --out my_cnn` writes
    with caplog.at_level(logging.WARNING, logger="layerserve"):
        repository = Repository.load(model_folder, runtime.RuntimeOptions())
    assert list(repository.versions()) == []
    (warning,) = [record.getMessage() for record in caplog.records if "repository is empty" in record.getMessage()]
    assert f"{model_folder} holds version folders (1, 2) itself" in warning
    assert "serve its parent, or move it to <repository>/my_cnn" in warning
