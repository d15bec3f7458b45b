"""A Triton model repository served as it is: config.pbtxt + <v>/model.onnx, built here from the committed
digits_cnn, with models we cannot serve beside it; then split with `layerserve split --triton` so it gains
blocks and a chain."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from server_harness import ServerThread
from tritonclient.utils import InferenceServerException

from layerserve.cli.main import main
from layerserve.server.settings import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "digits_cnn" / "1" / "model.onnx"
CONFIG = """
name: "digits_cnn"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { specific: { versions: [ 1 ] } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "note" value: { string_value: "kept as written" } }
"""
REFUSED = {
    "ensemble_model": ('name: "ensemble_model"\nplatform: "ensemble"\n', "ensemble models are not served"),
    "tf_model": ('backend: "tensorflow"\nmax_batch_size: 4\n', "backend 'tensorflow' is not served"),
    "stateful": ('platform: "onnxruntime_onnx"\nmax_batch_size: 4\nsequence_batching { }\n',
                 "sequence batching (stateful models) is not supported"),
    "garbled": ('platform: "onnxruntime_onnx"\nmax_batch_sise: 4\n', "config.pbtxt is not a Triton ModelConfig"),
}


@pytest.fixture(scope="module")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton")
    model = onnx.load(str(COMMITTED))  # the committed file keeps its weights apart; Triton's holds them inline
    for version in ("1", "2"):
        (root / "digits_cnn" / version).mkdir(parents=True)
        onnx.save(model, str(root / "digits_cnn" / version / "model.onnx"))
    (root / "digits_cnn" / "config.pbtxt").write_text(CONFIG)
    for name, (config, _) in REFUSED.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy(root / "digits_cnn" / "1" / "model.onnx", root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(config)
    return root


def _serve(root: Path) -> ServerThread:
    return ServerThread(Settings(models=root, port=0, metrics_port=-1, workers=1))


def _reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(COMMITTED), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _infer(client: triton_http.InferenceServerClient, model: str, x: np.ndarray, name: str = "x",
           output: str = "logits") -> np.ndarray:
    tensor = triton_http.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy(output)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_triton_repository_is_served_then_split_into_blocks_and_chain(triton_repository: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    want = _reference(x)
    original = _sha(triton_repository / "digits_cnn" / "1" / "model.onnx")

    with _serve(triton_repository) as server:  # as it is: the full graph only, and the others refused
        http = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
        np.testing.assert_allclose(_infer(http, "digits_cnn", x), want, rtol=1e-5, atol=1e-5)
        assert not http.is_model_ready("digits_cnn.chain")
        index = {(m["name"], m["version"]): m for m in http.get_model_repository_index()}
        assert ("digits_cnn", "2") not in index  # version_policy: specific [1]
        for name, (_, reason) in REFUSED.items():
            assert index[(name, "1")]["state"] == "UNAVAILABLE" and index[(name, "1")]["reason"].startswith(reason)
        http.close()

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["split", "--triton", str(triton_repository)]) == 0
    assert "digits_cnn version 1: 5 blocks" in printed.getvalue()
    assert "ensemble_model: skipped: ensemble models are not served" in printed.getvalue()
    assert _sha(triton_repository / "digits_cnn" / "1" / "model.onnx") == original  # left as it is
    assert not (triton_repository / "digits_cnn" / "2" / "blocks").exists()  # a version not served

    with _serve(triton_repository) as server:
        http = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
        np.testing.assert_allclose(_infer(http, "digits_cnn", x), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_infer(http, "digits_cnn.chain", x), want, rtol=1e-5, atol=1e-5)
        stem = _infer(http, "digits_cnn.00_stem", x, output="00_stem_out")
        assert stem.shape == (3, 16, 16, 16)
        with pytest.raises(InferenceServerException, match=r"expects at most 16 rows \(max_batch_size\), got "
                                                            r"FP32 \[17,1,32,32\]"):
            _infer(http, "digits_cnn", np.zeros((17, 1, 32, 32), np.float32))
        http.close()
        with triton_grpc.InferenceServerClient(server.address) as client:
            config = client.get_model_config("digits_cnn").config
            assert config.max_batch_size == 16 and list(config.input[0].dims) == [1, 32, 32]
            assert config.dynamic_batching.max_queue_delay_microseconds == 200
            assert config.parameters["note"].string_value == "kept as written"
            assert client.get_model_config("digits_cnn.01_stage1").config.max_batch_size == 16
            with pytest.raises(InferenceServerException, match="has no version '2'"):
                client.get_model_metadata("digits_cnn", "2")


def test_config_io_must_match_the_onnx_file(triton_repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "wrong" / "1").mkdir(parents=True)
    shutil.copy(triton_repository / "digits_cnn" / "1" / "model.onnx", root / "wrong" / "1" / "model.onnx")
    (root / "wrong" / "config.pbtxt").write_text(CONFIG.replace('name: "digits_cnn"', "").replace(
        "dims: [ 1, 32, 32 ]", "dims: [ 3, 32, 32 ]"))
    (root / "ok" / "1").mkdir(parents=True)
    shutil.copy(triton_repository / "digits_cnn" / "1" / "model.onnx", root / "ok" / "1" / "model.onnx")
    (root / "ok" / "config.pbtxt").write_text('backend: "onnxruntime"\n')  # no batching, I/O from the file
    with _serve(root) as server, triton_grpc.InferenceServerClient(server.address) as client:
        (wrong,) = [m for m in client.get_model_repository_index().models if m.name == "wrong"]
        assert wrong.state == "UNAVAILABLE"
        assert wrong.reason == "config.pbtxt vs model.onnx: input 'x' declared FP32 [-1,3,32,32], the file has " \
            "FP32 [-1,1,32,32]"
        config = client.get_model_config("ok").config
        assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 1, 32, 32]
        assert client.is_model_ready("ok")
    # split --triton says the same before anything is written (it split such a model and exited 0).
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["split", "--triton", str(root)]) == 0
    assert "wrong: skipped: config.pbtxt vs model.onnx: input 'x' declared FP32 [-1,3,32,32], the file has " \
        "FP32 [-1,1,32,32]" in printed.getvalue()
    assert not (root / "wrong" / "1" / "blocks").exists() and (root / "ok" / "1" / "blocks").is_dir()


def test_split_triton_names_a_model_it_cannot_split_and_splits_the_others(triton_repository: Path, tmp_path: Path) -> None:
    """The first model split refused ended ``split --triton`` (exit 2, no model named, nothing written for the
    models after it); the server serves such a model whole, so it is skipped with its reason instead."""
    root = tmp_path / "repo"
    (root / "aa_plain" / "1").mkdir(parents=True)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 1, 32, 32])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 1, 32, 32])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]),
              str(root / "aa_plain" / "1" / "model.onnx"))
    (root / "aa_plain" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    (root / "ok" / "1").mkdir(parents=True)
    shutil.copy(triton_repository / "digits_cnn" / "1" / "model.onnx", root / "ok" / "1" / "model.onnx")
    (root / "ok" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["split", "--triton", str(root)]) == 0
    shown = printed.getvalue()
    assert "aa_plain: skipped: not split, served whole: the graph has no single-tensor cut" in shown, shown
    assert not (root / "aa_plain" / "1" / "blocks").exists() and (root / "ok" / "1" / "blocks").is_dir()


def test_a_graph_with_two_inputs_is_not_split_and_is_served_whole(tmp_path: Path) -> None:
    """What split's refusal of a two-input graph tells its user to do: a Triton model folder, served as it is."""
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "repo" / "masked"
    (folder / "1").mkdir(parents=True)
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["features"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["features", "mask"], ["out"])], "masked",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 8, 8])], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [ { name: "image" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] }, '
        '{ name: "mask" data_type: TYPE_FP32 dims: [ 4, 8, 8 ] } ]\n'
        'output [ { name: "out" data_type: TYPE_FP32 dims: [ 4, 8, 8 ] } ]\n')
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["split", "--triton", str(tmp_path / "repo")]) == 0
    assert "masked: skipped: not split, served whole: the graph has 2 inputs ('image', 'mask')" in printed.getvalue()
    rng = np.random.default_rng(1)
    image, mask = rng.standard_normal((2, 3, 8, 8), np.float32), rng.random((2, 4, 8, 8), np.float32)
    want = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": image, "mask": mask})[0]
    with _serve(tmp_path / "repo") as server:
        client = triton_grpc.InferenceServerClient(server.address)
        inputs = []
        for name, array in (("image", image), ("mask", mask)):
            inputs.append(triton_grpc.InferInput(name, list(array.shape), "FP32"))
            inputs[-1].set_data_from_numpy(array)
        np.testing.assert_allclose(client.infer("masked", inputs).as_numpy("out"), want, rtol=1e-6, atol=1e-6)
