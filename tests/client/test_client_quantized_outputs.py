"""A model whose answer is quantized (a full-integer TFLite classifier's INT8 softmax, scale 1/256 and zero
point -128): split records the quantization, and ``compare`` and ``infer`` score its real values, not the
stored integers (a softmax over -128..127 called every answer about 100 % sure)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import foreign_graphs
import numpy as np
import pytest
from client_support import ServerProcess, layerserve

from layerserve.cli.main import main
from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest

MODEL = "int8_softmax"


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return foreign_graphs.int8_softmax_output(tmp_path_factory.mktemp("quantized-output") / f"{MODEL}.onnx")


@pytest.fixture(scope="module")
def served(original: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("quantized-models")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["split", str(original), "--out", str(root / MODEL)]) == 0
    log = tmp_path_factory.mktemp("quantized-server") / "server.log"
    with ServerProcess(root, extra_args=["--metrics-port", "-1", "--log-format", "text"], log_path=log) as server:
        yield server.address, root


def _real(original: Path, images: np.ndarray) -> np.ndarray:
    session = cpu_session(str(original))
    stored = session.run(None, {session.get_inputs()[0].name: images})[0]
    assert stored.dtype == np.int8
    return (stored.astype(np.float64) + 128) / 256


@pytest.mark.slow
def test_split_records_the_answers_quantization(served: tuple[str, Path]) -> None:
    manifest = read_manifest(served[1] / MODEL / "1")
    for spec in (manifest.outputs[0], manifest.blocks[-1].outputs[0]):
        assert spec.datatype == "INT8" and spec.HasField("quantization"), spec
        assert (spec.quantization.scale, spec.quantization.zero_point) == (1 / 256, -128)
    assert not manifest.inputs[0].HasField("quantization")


@pytest.mark.slow
def test_compare_scores_the_real_probabilities(served: tuple[str, Path], original: Path, tmp_path: Path) -> None:
    images = np.random.default_rng(0).random((12, 32, 32, 3), dtype=np.float32)
    real = _real(original, images)
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=images, labels=real.argmax(1))
    shown = layerserve("compare", MODEL, "--samples", str(samples), "--json", server=served[0])
    assert shown.returncode == 0, shown.stderr
    paths = {path["name"]: path for path in json.loads(shown.stdout)["paths"]}
    full = paths["full graph"]
    # Read as probabilities (rows within half a step per class of 1): the confidence is the real top value.
    assert full["confidence"] == pytest.approx(float(np.mean(real.max(1) / real.sum(1))), abs=1e-9)
    assert full["confidence"] < 0.9 and full["accuracy"] == 1.0
    for name in ("client chain", "server chain"):
        assert paths[name]["agreement"] == 1.0 and paths[name]["kl"] == pytest.approx(0.0, abs=1e-12), paths[name]


@pytest.mark.slow
def test_infer_shows_the_real_probability(served: tuple[str, Path], original: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    array = tmp_path / "x.npy"
    np.save(array, image)
    shown = layerserve("infer", MODEL, str(array), server=served[0])
    assert shown.returncode == 0, shown.stderr
    real = _real(original, image)[0]
    top = re.search(r"│ 0\s+│ (\d+)\s+│ ([\d.]+)%", shown.stdout)
    assert top is not None, shown.stdout
    assert int(top.group(1)) == int(real.argmax())
    assert float(top.group(2)) == pytest.approx(100 * real.max() / real.sum(), abs=0.05)
