"""Fresh end to end: train a tiny digits model for a few steps, export, split, check, write; twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layerserve.export.builtin import BuildOptions, build
from layerserve.export.graph import load_model
from layerserve.export.parity import chain_check
from layerserve.export.split import split
from layerserve.export.train import TrainConfig
from layerserve.proto.manifest import read_manifest, sha256_of

QUICK = BuildOptions(config=TrainConfig(epochs=1, max_steps=3), min_accuracy=0.0, show_progress=False)


def _without_timestamp(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    del manifest["provenance"]["created"]
    return manifest


@pytest.mark.slow
def test_train_export_split_end_to_end_is_deterministic(tmp_path: Path) -> None:
    first = build("digits_cnn", tmp_path / "a", QUICK)
    build("digits_cnn", tmp_path / "b", QUICK)
    folder = tmp_path / "a" / "digits_cnn" / "1"
    assert read_manifest(folder) == first
    assert first.provenance.training_epochs == 1
    assert first.provenance.export_max_abs_diff <= 1e-4
    assert first.provenance.chain_max_abs_diff <= 1e-5
    for ref in [first.full_model, first.samples.file, *(b.file for b in first.blocks)]:
        assert sha256_of(folder / ref.path) == ref.sha256
    assert _without_timestamp(folder / "manifest.json") == _without_timestamp(
        tmp_path / "b" / "digits_cnn" / "1" / "manifest.json"
    )
    # The written files split again to the same chain, and the chain still matches.
    model = load_model(folder / "model.onnx")
    result = split(model)
    assert [b.name for b in result.blocks] == [b.name for b in first.blocks]
    with np.load(folder / "samples.npz") as samples:
        assert chain_check(model.proto, result, samples["images"][:16]).max_abs_diff <= 1e-5
