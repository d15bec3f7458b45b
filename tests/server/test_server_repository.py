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


def test_names_resolve_to_the_latest_ready_version_and_errors_stay_exact(tmp_path: Path) -> None:
    """Names are resolved once at load; the answers must be those of resolving each request afresh:
    an empty version is the latest *ready* one, and unknown or unavailable versions keep their errors."""
    from tiny_repo import build

    from layerserve.server.errors import ModelNotFound, ModelUnavailable

    build(tmp_path, "tiny_cnn", "1", seed=1)
    newer = build(tmp_path, "tiny_cnn", "2", seed=2)
    (newer / "blocks" / "00_stem.onnx").write_bytes(b"not the file the manifest names")
    repository = Repository.load(tmp_path, runtime.RuntimeOptions())
    for served in ("tiny_cnn", "tiny_cnn.00_stem", "tiny_cnn.chain"):
        assert repository.endpoint(served).version == "1"
        assert repository.endpoint(served, "1").version == "1"
        with pytest.raises(ModelUnavailable, match="version 2 is unavailable"):
            repository.endpoint(served, "2")
        with pytest.raises(ModelNotFound, match="has no version '3'"):
            repository.endpoint(served, "3")
    with pytest.raises(ModelNotFound, match="serves tiny_cnn, tiny_cnn.00_stem"):
        repository.endpoint("tiny_cnn.99_none")
