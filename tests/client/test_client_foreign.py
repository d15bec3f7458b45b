"""The experiment on a user's own 224x224 model and pictures: ``layerserve compare --images DIR`` with the
default batch size, against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from client_support import ServerProcess, layerserve
from PIL import Image

MODEL = "mobilenet_v3_torchscript"


@pytest.fixture(scope="module")
def served_foreign(foreign_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("compare-models")
    (root / MODEL).symlink_to(foreign_repository / MODEL, target_is_directory=True)
    log = tmp_path_factory.mktemp("compare-server") / "server.log"
    with ServerProcess(root, extra_args=["--metrics-port", "-1", "--log-format", "text"], log_path=log) as server:
        yield server.address


def _pictures(root: Path) -> Path:
    """Three classes of photos of various sizes and formats, the ImageFolder layout."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(("cat", "dog", "fish")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (240 + 17 * i, 320 - 9 * i, 3), dtype=np.uint8)
            pixels[..., index] = 255  # a colour cast per class
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "fish" / "notes.txt").write_text("not a picture")
    return root


@pytest.mark.slow
def test_compare_on_a_folder_of_pictures_at_224_with_default_flags(served_foreign: str, tmp_path: Path) -> None:
    pictures = _pictures(tmp_path / "pictures")
    shown = layerserve("compare", MODEL, "--images", str(pictures), "--json", server=served_foreign)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["samples"] == 12
    paths = {path["name"]: path for path in report["paths"]}
    for name in ("client chain", "server chain"):
        assert paths[name]["agreement"] == 1.0 and paths[name]["max_abs_diff"] <= 1e-4, paths[name]
    raw = paths["final only, raw image"]["error"]
    assert raw.startswith("INVALID_ARGUMENT: ") and "got FP32 [12,3,224,224]" in raw
    assert {"final only, resize", "final only, pad", "final only, project"} <= set(paths)
    assert report["skip_curve"] and report["skip_matrix"]
    # The folders are not the model's classes: said once, since the accuracy then counts folder positions.
    assert "note: the folders (cat, dog, fish) are not the model's classes" in " ".join(shown.stderr.split())


@pytest.mark.slow
def test_compare_refusals_are_one_line(served_foreign: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_file = tmp_path / "empty.npz"  # once an EOFError traceback
    empty_file.touch()
    for args, expected in (
        ([], "lists no samples; pass --images DIR"),
        (["--images", str(empty)], "has no class subfolders"),
        (["--images", str(tmp_path / "absent")], "is not a folder of class subfolders"),
        (["--samples", str(empty_file)], "is not a .npz archive of 'images' and 'labels' arrays (numpy.savez)"),
        (["--samples", str(tmp_path / "absent.npz")], "absent.npz: no such file"),
    ):
        shown = layerserve("compare", MODEL, *args, server=served_foreign)
        assert shown.returncode == 2, shown.stderr
        lines = shown.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in shown.stderr, shown.stderr


@pytest.fixture(scope="module")
def served_byo(foreign_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The end-to-end export (UINT8 pixels, two outputs), the INT8-quantized model, the Keras export
    (channels last) and a segmentation model, served with defaults."""
    root = tmp_path_factory.mktemp("byo-models")
    for name in ("uint8_two_outputs", "qoperator_int8", "keras_nhwc", "segmentation_fcn"):
        (root / name).symlink_to(foreign_repository / name, target_is_directory=True)
    log = tmp_path_factory.mktemp("byo-server") / "server.log"
    with ServerProcess(root, extra_args=["--metrics-port", "-1", "--log-format", "text"], log_path=log) as server:
        yield server.address


def _samples(path: Path, images: np.ndarray) -> Path:
    np.savez(path, images=images, labels=np.arange(len(images)) % 10)
    return path


@pytest.mark.slow
def test_compare_scores_the_first_of_two_outputs_on_integer_pixels(served_byo: str, tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    samples = _samples(tmp_path / "pixels.npz", pixels)
    shown = layerserve("compare", "uint8_two_outputs", "--samples", str(samples), "--json", server=served_byo)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["outputs"] == ["logits", "embedding"]
    paths = {path["name"]: path for path in report["paths"]}
    for name in ("client chain", "server chain"):
        assert paths[name]["agreement"] == 1.0 and paths[name]["max_abs_diff"] <= 1e-4, paths[name]
    assert paths["final only, raw image"]["error"].startswith("INVALID_ARGUMENT: ")
    costs = report["encodings"]
    assert costs["cut_datatypes"][0] == "UINT8"  # pixels go as they are: no encoding applies to them
    assert {costs["bytes_per_request"][e][0] for e in ("fp32", "fp16", "int8")} == {32 * 32 * 3}
    assert costs["bytes_per_request"]["fp16"][1] * 2 == costs["bytes_per_request"]["fp32"][1]
    table = layerserve("compare", "uint8_two_outputs", "--samples", str(samples), "--no-curve", "--matrix-samples", "0",
                       server=served_byo)
    assert table.returncode == 0, table.stderr
    assert "scored on output 'logits' (the first of 2)" in table.stdout
    assert "input (UINT8, sent as it is)" in table.stdout


@pytest.mark.slow
def test_compare_and_plan_leave_int8_activations_as_they_are(served_byo: str, tmp_path: Path) -> None:
    images = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    samples = _samples(tmp_path / "images.npz", images)
    shown = layerserve("compare", "qoperator_int8", "--samples", str(samples), "--no-curve", "--matrix-samples", "0",
                       "--json", server=served_byo)
    assert shown.returncode == 0, shown.stderr
    costs = json.loads(shown.stdout)["encodings"]
    int8_cuts = [cut for cut, datatype in enumerate(costs["cut_datatypes"]) if datatype == "INT8"]
    assert costs["cut_datatypes"][0] == "FP32" and int8_cuts == list(range(1, len(costs["cut_datatypes"])))
    for cut in int8_cuts:
        assert costs["bytes_per_request"]["fp16"][cut] == costs["bytes_per_request"]["fp32"][cut]
        assert costs["agreement"]["fp16"][cut] == costs["agreement"]["int8"][cut] == 1.0
    planned = layerserve("plan", "qoperator_int8", "--near", served_byo, "--far", served_byo, "--link", "20Mbit/s,10ms",
                         "--warmup", "1", "--repeats", "2", "--samples", str(samples), "--encodings", "fp16,int8",
                         "--json")
    assert planned.returncode == 0, planned.stderr
    document = json.loads(planned.stdout)
    assert document["profile"]["cut_datatypes"][1] == "INT8"
    candidates = {(e["cut"], e["encoding"]) for e in document["plan"]["estimates"]}
    assert (0, "fp16") in candidates and not any(cut in int8_cuts and e != "fp32" for cut, e in candidates)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["uint8_two_outputs", "keras_nhwc"])
def test_compare_takes_pictures_for_channels_last_and_integer_inputs(served_byo: str, tmp_path: Path,
                                                                     model: str) -> None:
    pictures = _pictures(tmp_path / "pictures")
    shown = layerserve("compare", model, "--images", str(pictures), "--no-curve", "--matrix-samples", "0",
                       "--encodings", "", "--json", server=served_byo)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["samples"] == 12
    paths = {path["name"]: path for path in report["paths"]}
    assert paths["server chain"]["agreement"] == 1.0 and paths["client chain"]["agreement"] == 1.0
    assert "got FP32 [12,32,32,3]" in paths["final only, raw image"]["error"]


@pytest.mark.slow
def test_a_float_array_for_integer_pixels_is_refused_by_the_server_not_truncated(served_byo: str) -> None:
    from layerserve.client import LayerClient
    from layerserve.client.errors import ServerError

    floats = np.random.default_rng(2).standard_normal((2, 32, 32, 3))  # normalised images, float64
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3))  # numpy's int64, values of UINT8
    with LayerClient(served_byo) as client:
        with pytest.raises(ServerError) as refused:
            client.infer("uint8_two_outputs", floats)
        assert refused.value.code.name == "INVALID_ARGUMENT"
        assert "expects UINT8 [-1,32,32,3], got FP64 [2,32,32,3]" in refused.value.message
        as_pixels = client.infer("uint8_two_outputs", pixels.astype(np.uint8))
        np.testing.assert_array_equal(client.infer("uint8_two_outputs", pixels)["logits"], as_pixels["logits"])


@pytest.mark.slow
def test_forced_fits_into_a_quantized_block_are_int8_and_the_raw_image_is_refused_as_it_is(
    served_byo: str, tmp_path: Path
) -> None:
    images = np.random.default_rng(3).standard_normal((8, 3, 32, 32)).astype(np.float32)
    samples = _samples(tmp_path / "images.npz", images)
    shown = layerserve("compare", "qoperator_int8", "--samples", str(samples), "--matrix-samples", "2",
                       "--encodings", "", "--json", server=served_byo)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    paths = {path["name"]: path for path in report["paths"]}
    assert "got FP32 [8,3,32,32]" in paths["final only, raw image"]["error"]  # as sent, not cast to INT8
    for method in ("resize", "pad", "project"):
        assert paths[f"final only, {method}"]["error"] is None and paths[f"final only, {method}"]["accuracy"] is not None
    assert all(value is not None for value in report["skip_curve"]["accuracy"]["resize"])


@pytest.mark.slow
def test_compare_refuses_a_segmentation_model_before_reading_pictures(served_byo: str, tmp_path: Path) -> None:
    """It read and preprocessed every picture, printed a note on their folders, ran the full graph, then refused."""
    pictures = _pictures(tmp_path / "pictures")
    shown = layerserve("compare", "segmentation_fcn", "--images", str(pictures), server=served_byo)
    assert shown.returncode == 2, shown.stderr
    lines = shown.stderr.strip().splitlines()
    assert len(lines) == 1 and "comparing paths needs class scores [N, classes]" in lines[0], shown.stderr
