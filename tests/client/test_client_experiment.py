"""The experiment on both built-in models against the real server, and the report it draws."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from client_support import BUILT_IN, samples
from PIL import Image

from layerserve.client import LayerClient, experiment
from layerserve.client.fit import FITS
from layerserve.client.report import write_report


@pytest.fixture(scope="module")
def reports(server: str) -> dict[str, experiment.CompareReport]:
    """compare on every held-out sample, the skip curve too, the skip matrix on a few samples."""
    found = {}
    with LayerClient(server) as client:
        for model in BUILT_IN:
            images, labels = samples(model)
            report = experiment.compare(client, model, images, labels)
            report.skip_curve = experiment.skip_curve(client, model, images, labels)
            report.skip_matrix = experiment.skip_matrix(client, model, images[:48], labels[:48])
            found[model] = report
    return found


@pytest.mark.parametrize("model", BUILT_IN)
def test_chains_equal_the_full_graph(reports: dict[str, experiment.CompareReport], model: str) -> None:
    report = reports[model]
    full = report.path("full graph")
    assert full.accuracy >= 0.97
    for name in ("client chain", "server chain"):
        chain = report.path(name)
        assert chain.agreement == 1.0 and chain.accuracy == full.accuracy
        # Identical up to float rounding across the cuts (0.0 for digits_cnn; export measured it).
        assert chain.max_abs_diff <= 1e-5 and chain.kl == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("model", BUILT_IN)
def test_the_final_blocks_alone_do_not_classify(reports: dict[str, experiment.CompareReport], model: str) -> None:
    report = reports[model]
    raw = report.path("final only, raw image")
    assert raw.accuracy is None and raw.error.startswith("INVALID_ARGUMENT: ")
    # The server names what the block expects and what it was given.
    assert re.search(r"expects FP32 \[-1,\d+,\d+,\d+\], got FP32 \[\d+,1,32,32\]", raw.error), raw.error
    for method in FITS:
        path = report.path(f"final only, {method}")
        assert path.accuracy <= 0.30, (method, path.accuracy)
        assert path.kl > 0.5 and path.agreement <= 0.30
    assert report.start_block == report.block_names[report.start]
    assert report.start == len(report.block_names) - 2  # the last conv block precedes the head


@pytest.mark.parametrize("model", BUILT_IN)
def test_skip_curve_starts_at_the_full_accuracy_and_falls(reports: dict[str, experiment.CompareReport], model: str) -> None:
    report = reports[model]
    curve = report.skip_curve
    assert curve.skipped == list(range(len(report.block_names)))
    for method, values in curve.accuracy.items():
        assert values[0] == report.path("full graph").accuracy
        assert values[report.start] == report.path(f"final only, {method}").accuracy
        assert max(values[1:]) < values[0] - 0.4, (method, values)


@pytest.mark.parametrize("model", BUILT_IN)
def test_skip_matrix_diagonal_is_the_network(reports: dict[str, experiment.CompareReport], model: str) -> None:
    matrix = reports[model].skip_matrix
    n = len(matrix.targets)
    assert matrix.accuracy.shape == (n, n) and matrix.sources[0] == "image"
    assert np.isnan(matrix.accuracy[np.tril_indices(n, -1)]).all()
    assert (np.diag(matrix.accuracy) >= 0.9).all()
    # Fitting the image anywhere but the first block is near chance.
    assert (matrix.accuracy[0, 1:-1] <= 0.35).all(), matrix.accuracy[0]


def test_report_writes_html_and_decodable_pictures(server: str, reports: dict[str, experiment.CompareReport], tmp_path: Path) -> None:
    report = reports["digits_cnn"]
    images, labels = samples("digits_cnn")
    with LayerClient(server) as client:
        activations = experiment.activations(client, "digits_cnn", images[:1])
    assert list(activations) and all(a.shape[0] == 1 for a in activations.values())
    index = write_report(report, tmp_path / "report", images, labels, activations)
    page = index.read_text()
    pictures = re.findall(r'<img src="([^"]+)"', page)
    assert set(pictures) == {"paths.png", "samples.png", "skip_curve.png", "skip_matrix.png", "activations.png"}
    for name in pictures:
        with Image.open(index.parent / name) as picture:
            picture.load()
            assert picture.format == "PNG" and min(picture.size) > 100
    assert "expects FP32" in page and "client chain" in page


def test_metrics_on_known_logits() -> None:
    full = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    labels = np.array([0, 2])
    same = experiment.score("same", "", full, full, labels)
    assert same.accuracy == 0.5 and same.agreement == 1.0 and same.kl == pytest.approx(0, abs=1e-12)
    flat = experiment.score("flat", "", np.zeros((2, 3)), full, labels)
    p = experiment.softmax(full)
    expected = np.mean(np.sum(p * np.log(p * 3), axis=1))
    assert flat.kl == pytest.approx(expected, rel=1e-9) and flat.confidence == pytest.approx(1 / 3)


def test_a_graph_that_ends_in_softmax_is_scored_on_its_own_probabilities() -> None:
    """Ultralytics' and Keras' classifiers export their Softmax: compare took a softmax of it again, and
    read a top-1 probability of 0.573 as 0.2 % confidence (1,000 classes flattened towards uniform)."""
    logits = np.random.default_rng(1).standard_normal((4, 1000)) * 3
    probabilities = experiment.softmax(logits).astype(np.float32)
    labels = probabilities.argmax(1)
    assert experiment.gives_probabilities(probabilities) and not experiment.gives_probabilities(logits)
    same = experiment.score("full graph", "model.onnx", probabilities, probabilities, labels)
    assert same.confidence == pytest.approx(float(np.mean(probabilities.max(1))), rel=1e-6)
    assert same.kl == pytest.approx(0, abs=1e-9)
    uniform = np.full_like(probabilities, 1 / 1000)
    flat = experiment.score("flat", "", uniform, probabilities, labels)
    p = probabilities.astype(np.float64)
    expected = np.mean(np.sum(p * (np.log(p + experiment.EPSILON) - np.log(1 / 1000 + experiment.EPSILON)), axis=1))
    assert flat.kl == pytest.approx(expected, rel=1e-4) and flat.confidence == pytest.approx(1 / 1000)

def test_squeezenet_shaped_outputs_are_read_as_class_scores() -> None:
    logits = np.random.default_rng(0).standard_normal((6, 1000)).astype(np.float32)
    labels = logits.argmax(1)
    shaped = logits[:, :, None, None]  # [N, classes, 1, 1], as SqueezeNet's conv classifier answers
    result = experiment.score("full graph", "model.onnx", shaped, shaped, labels)
    assert result.accuracy == 1.0 and result.agreement == 1.0 and result.max_abs_diff == 0.0
    # Channels last, as a Keras or Flax fully convolutional classifier answers (it was refused).
    last = logits[:, None, None, :]
    result = experiment.score("full graph", "model.onnx", last, last, labels)
    assert result.accuracy == 1.0 and experiment.as_logits(last).shape == (6, 1000)
    with pytest.raises(ValueError, match=r"comparing paths needs class scores \[N, classes\]"):
        experiment.as_logits(np.zeros((6, 8, 2, 2)))
