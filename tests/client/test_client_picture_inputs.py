"""Pictures for inputs laid out the other ways users write them, split and served for real: models that
take one picture and add their own batch (no batch dimension: ``[32, 32, 3]`` answering ``[1, 10]``, and
``[3, 40, 48]`` squeezing its batch away again to answer ``[10]``), and an MNIST-style model taking grey
``[N, 28, 28]`` pictures without a channel axis. ``layerserve infer`` and ``compare`` read
pictures into them, the client library sends several samples, and every answer is ONNX Runtime's on the
user's own file."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import foreign_graphs
import numpy as np
import pytest
from client_support import ServerProcess, layerserve
from PIL import Image

from layerserve.cli.main import main
from layerserve.client import LayerClient
from layerserve.client.errors import ServerError
from layerserve.client.images import load_input
from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest
from layerserve.proto.tensors import TensorSpec

BUILDERS = {"one_picture": foreign_graphs.one_picture_hwc, "squeezed": foreign_graphs.one_picture_chw_squeezed,
            "grey": foreign_graphs.grey_without_channel_axis}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("picture-inputs")
    return {name: build(folder / f"{name}.onnx") for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def repository(originals: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``layerserve split FILE --out DIR`` with no other flag (in this process: torch is imported already)."""
    root = tmp_path_factory.mktemp("picture-models")
    for name, source in originals.items():
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["split", str(source), "--out", str(root / name)]) == 0, f"layerserve split {name} failed"
    return root


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("picture-server") / "server.log"
    with ServerProcess(repository, extra_args=["--metrics-port", "-1", "--log-format", "text"], log_path=log) as server:
        yield server.address


def _original_answers(source: Path, samples: np.ndarray, batched: bool) -> np.ndarray:
    """ONNX Runtime on the user's file: all rows at once where it has a batch, else one sample per run."""
    session = cpu_session(str(source))
    name = session.get_inputs()[0].name
    if batched:
        return session.run(None, {name: samples})[0]
    return np.concatenate([session.run(None, {name: sample})[0] for sample in samples])


def _pictures(root: Path, count: int = 3) -> Path:
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40 + 5 * i, 36, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.slow
def test_split_says_the_input_has_no_batch_dimension_and_records_picture_preprocessing(repository: Path) -> None:
    one = read_manifest(repository / "one_picture" / "1")
    batch_note = next(note for note in one.provenance.notes if note.startswith("batch "))
    assert batch_note.startswith("batch none: the input [32,32,3] is one sample with no batch dimension"), batch_note
    assert "rows" not in batch_note.split(";")[-1]  # not "requests must have exactly 32 rows"
    assert one.input_bytes_per_sample == 32 * 32 * 3 * 4
    assert one.serving.max_batch_size == 0 and not one.serving.dynamic_batching
    assert (one.preprocessing.color, one.preprocessing.crop_height, one.preprocessing.crop_width) == ("RGB", 32, 32)

    grey = read_manifest(repository / "grey" / "1")
    assert list(grey.inputs[0].shape) == [-1, 28, 28]
    assert (grey.preprocessing.color, grey.preprocessing.crop_height, grey.preprocessing.crop_width) == ("L", 28, 28)
    assert list(grey.preprocessing.mean) == [0.0] and list(grey.preprocessing.std) == [1.0]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["one_picture", "grey"])
def test_infer_reads_a_picture_into_the_input(served: str, repository: Path, originals: dict[str, Path],
                                              model: str, tmp_path: Path) -> None:
    picture = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 44, 3), dtype=np.uint8)).save(picture)
    manifest = read_manifest(repository / model / "1")
    spec = TensorSpec.from_proto(manifest.inputs[0])
    sent = load_input(picture, spec, preprocessing=manifest.preprocessing)
    assert sent.shape == ((32, 32, 3) if model == "one_picture" else (1, 28, 28))
    shown = layerserve("infer", model, str(picture), "--json", server=served)
    assert shown.returncode == 0, shown.stderr
    got = np.asarray(next(iter(json.loads(shown.stdout)["outputs"].values()))["data"], np.float32)
    want = _original_answers(originals[model], sent[None] if model == "one_picture" else sent, model == "grey")
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_graph_that_squeezes_its_batch_away_answers_one_row_per_sample(
        served: str, repository: Path, originals: dict[str, Path]) -> None:
    manifest = read_manifest(repository / "squeezed" / "1")
    assert manifest.provenance.notes[-1].startswith("batch none: the input [3,40,48] is one sample"), \
        manifest.provenance.notes
    assert manifest.blocks[-1].output_bytes_per_sample == 10 * 4  # the whole [10], not one of its values
    samples = np.random.default_rng(4).random((4, 3, 40, 48), dtype=np.float32)
    session = cpu_session(str(originals["squeezed"]))
    want = np.stack([session.run(None, {session.get_inputs()[0].name: sample})[0] for sample in samples])
    assert want.shape == (4, 10)
    with LayerClient(served) as client:
        np.testing.assert_allclose(client.infer_array("squeezed", samples), want, rtol=1e-5, atol=1e-5)
        for where in ("client", "server"):  # the client's chain meets the squeeze at its last, one-row block
            np.testing.assert_allclose(client.chain("squeezed", samples, where=where).scores, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_several_samples_of_an_input_without_a_batch_dimension_go_one_per_request(
        served: str, originals: dict[str, Path]) -> None:
    samples = np.random.default_rng(3).random((5, 32, 32, 3), dtype=np.float32)
    want = _original_answers(originals["one_picture"], samples, batched=False)
    with LayerClient(served) as client:
        assert client.infer_array("one_picture", samples).shape == (5, 10)
        np.testing.assert_allclose(client.infer_array("one_picture", samples), want, rtol=1e-5, atol=1e-5)
        for where in ("client", "server"):
            chained = client.chain("one_picture", samples, where=where, keep=[0])
            np.testing.assert_allclose(chained.scores, want, rtol=1e-5, atol=1e-5)
            # The first block adds the batch: its outputs join along it, one row per sample.
            assert chained.kept_output(chained.blocks_run[0]).shape == (5, 3, 32, 32)
        one = client.infer_array("one_picture", samples[0])  # a single sample as the graph takes it
        np.testing.assert_allclose(one, want[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["one_picture", "squeezed", "grey"])
def test_compare_runs_on_pictures_for_either_layout(served: str, model: str, tmp_path: Path) -> None:
    pictures = _pictures(tmp_path / "pictures")
    shown = layerserve("compare", model, "--images", str(pictures), "--json", server=served)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["samples"] == 6
    paths = {path["name"]: path for path in report["paths"]}
    for name in ("client chain", "server chain"):
        assert paths[name]["agreement"] == 1.0 and paths[name]["max_abs_diff"] <= 1e-5, paths[name]
    assert paths["final only, raw image"]["error"].startswith("INVALID_ARGUMENT: ")
    for fit in ("resize", "pad", "project"):
        assert paths[f"final only, {fit}"]["error"] is None, paths[f"final only, {fit}"]
    assert report["skip_curve"] and report["skip_matrix"]


@pytest.mark.slow
def test_no_samples_for_an_input_without_a_batch_dimension_is_the_servers_one_line_refusal(served: str) -> None:
    with LayerClient(served) as client, pytest.raises(ServerError, match=r"expects FP32 \[32,32,3\], got FP32 \[0,32,32,3\]"):
        client.infer_array("one_picture", np.zeros((0, 32, 32, 3), np.float32))
