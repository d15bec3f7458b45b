"""Graphs as converters and exporters other than ours leave them: nodes out of topological order (old
converters), fixed output sizes an exporter recorded for its own example input while height and width
are free (HuggingFace optimum), every dimension past the batch free, the batch moved past the first axis
(timm's VGG: an AdaptiveAvgPool2d that upsamples, exported by dynamo); and model names taken from a
HuggingFace id. Each is split, or refused in one line that says what to do."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from layerserve.cli.main import main
from layerserve.client import LayerClient
from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest
from layerserve.server.launcher import ServerProcess


def _nodes(final: str = "y") -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="/stem/conv/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/stem/relu/Relu"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="/stem/pool/MaxPool"),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="/body/conv/Conv"),
        helper.make_node("Relu", ["c2"], [final], name="/body/relu/Relu"),
    ]


def _graph(path: Path, nodes: list[onnx.NodeProto], input_dims: list, output_dims: list) -> Path:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_dims)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _split(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["split", *args])
    return code, out.getvalue() + err.getvalue()


def _assert_served(models: Path, name: str, x: np.ndarray, want: np.ndarray) -> None:
    """``name`` served from ``models`` answers ``want`` for ``x``, whole and as the server's chain."""
    with ServerProcess(models, extra_args=["--metrics-port", "-1", "--workers", "1"]) as server, \
            LayerClient(server.address) as client:
        np.testing.assert_allclose(client.infer_array(name, x), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(client.chain(name, x, where="server").output, want, rtol=1e-5, atol=1e-6)


def test_nodes_out_of_topological_order_are_sorted_and_split(tmp_path: Path) -> None:
    """Some old converters listed nodes in any order; ONNX Runtime sorts them itself, so split does too
    (before, the cut search read the list as ordered and found no cut)."""
    source = _graph(tmp_path / "reversed.onnx", _nodes()[::-1], [1, 3, 16, 16], [1, 8, 8, 8])
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "reversed"))
    assert code == 0, shown
    assert "nodes put in topological order" in shown
    assert [b.name for b in read_manifest(tmp_path / "models" / "reversed" / "1").blocks] == ["00_stem", "01_body"]


def test_a_paddle_export_with_weights_in_constant_nodes_and_minus_one_dims_splits(tmp_path: Path) -> None:
    """PaddlePaddle's exporter (RapidOCR's models) keeps every weight in a Constant node and writes -1 for a free
    batch. Before, -1 was taken for a size ("declares [-1,8,24,96] but computes [1,8,24,96]") and, with no
    initializers, every block showed 0 parameters and the weights were stored in each block and the full graph."""
    source = _graph(tmp_path / "paddle.onnx", _nodes(), [1, 3, 16, 16], [1, 8, 8, 8])
    proto = onnx.load(str(source))
    constants = [helper.make_node("Constant", [], [t.name], value=t, name=f"{t.name}_const") for t in proto.graph.initializer]
    nodes = [*constants, *proto.graph.node]
    del proto.graph.initializer[:], proto.graph.node[:]
    proto.graph.node.extend(nodes)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = -1
    onnx.save(proto, str(source))
    out = tmp_path / "models" / "paddle"
    code, shown = _split(str(source), "--out", str(out))
    assert code == 0, shown
    assert "2 dimensions declared -1 read as free" in shown
    assert "2 weight tensors held in Constant nodes made initializers" in shown
    manifest = read_manifest(out / "1")
    assert [(b.name, b.parameters) for b in manifest.blocks] == [("00_stem", 8 * 3 * 3 * 3), ("01_body", 8 * 8 * 3 * 3)]
    assert [d.dim_value for d in onnx.load(str(out / "1" / "model.onnx"), load_external_data=False)
            .graph.input[0].type.tensor_type.shape.dim][1:] == [3, 16, 16]
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = cpu_session(source.read_bytes()).run(None, {"x": x})[0]
    _assert_served(tmp_path / "models", "paddle", x, want)


def test_a_qdq_graph_with_int8_activations_splits_exactly_or_is_refused_saying_how_to_quantize(tmp_path: Path) -> None:
    """On a CPU without VNNI, ONNX Runtime runs a QDQ graph with INT8 activations through fused integer
    operators that differ from what its blocks compute by 10 % of the output's scale. The chain check compared
    the blocks with a copy of the graph that outputs every cut, which ONNX Runtime does not fuse, and
    passed: the served chain then differed from the served model. Now the split either reproduces the file as
    ONNX Runtime runs it (a CPU with VNNI) or is refused naming UINT8 activations, which split exactly."""
    import foreign_graphs

    source = foreign_graphs.qdq_int8_activations(tmp_path / "qdq_s8.onnx")
    out = tmp_path / "models" / "qdq_s8"
    code, shown = _split(str(source), "--out", str(out))
    if code != 0:
        assert code == 2 and "activation_type=QuantType.QUInt8" in shown and "Traceback" not in shown, shown
        assert len(shown.strip().splitlines()) == 1 and not out.exists()
        return
    manifest = read_manifest(out / "1")
    x = foreign_graphs.example_input(source, 2)[1]
    want = cpu_session(str(source)).run(None, {manifest.inputs[0].name: x})[0]
    values = {manifest.inputs[0].name: x}
    for block in manifest.blocks:
        session = cpu_session(str(out / "1" / block.file.path))
        values.update(zip([o.name for o in session.get_outputs()],
                          session.run(None, {i.name: values[i.name] for i in session.get_inputs()}), strict=True))
    np.testing.assert_allclose(values[manifest.outputs[0].name], want, rtol=0, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_fixed_output_sizes_recorded_for_another_image_size_are_recomputed(tmp_path: Path) -> None:
    """optimum exports with free height and width but writes the outputs' sizes for its own 64x64 example;
    split at another size must declare what the graph computes there, or the server refuses the model."""
    source = _graph(tmp_path / "stale.onnx", _nodes(), ["batch", 3, "height", "width"], ["batch", 8, 16, 16])
    out = tmp_path / "models" / "stale"
    code, shown = _split(str(source), "--out", str(out), "--input-shape", "3,40,48")
    assert code == 0, shown
    manifest = read_manifest(out / "1")
    assert list(manifest.outputs[0].shape) == [-1, 8, 20, 24]
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 48)).astype(np.float32)
    want = cpu_session(str(source)).run(None, {"x": x})[0]
    with ServerProcess(tmp_path / "models", extra_args=["--metrics-port", "-1", "--workers", "1"]) as server, \
            LayerClient(server.address) as client:
        np.testing.assert_array_equal(client.infer_array("stale", x), want)
        np.testing.assert_array_equal(client.chain("stale", x, where="server").output, want)


def test_every_free_dimension_gets_a_possible_suggestion(tmp_path: Path) -> None:
    source = _graph(tmp_path / "free.onnx", _nodes(), ["batch", "channels", "height", "width"],
                    ["batch", 8, "h", "w"])
    code, shown = _split(str(source), "--out", str(tmp_path / "m"))
    assert code == 2 and "(e.g. --input-shape 3,224,224)" in shown, shown


@pytest.mark.parametrize("name", ["microsoft/resnet-50", "../escaped"])
def test_a_name_that_is_not_the_out_folder_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    """The server names a model after its folder: a different --name wrote elsewhere than --out (a
    HuggingFace id, with its '/', even outside it) while printing --out."""
    source = _graph(tmp_path / "small.onnx", _nodes(), [1, 3, 16, 16], [1, 8, 8, 8])
    out = tmp_path / "repo" / "models" / "small"
    code, shown = _split(str(source), "--out", str(out), "--name", name)
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert "differs from the --out folder's name 'small'" in shown
    assert f"--out {out.parent / name.replace('/', '_').lstrip('.')}" in shown
    assert not any(path.is_dir() for path in tmp_path.rglob("*"))
    assert _split(str(source), "--out", str(out), "--name", "small")[0] == 0


def _upsampling_pool(path: Path, how: str) -> Path:
    """timm's VGG head at small inputs: AdaptiveAvgPool2d(7) on a 3x3 map, which dynamo lowers to a
    Transpose that moves the batch to the third axis, a GatherND and sums."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.fc1 = nn.Conv2d(8, 16, 7)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fc1(self.pool(torch.relu(self.stem(x)))).flatten(1))

    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if how == "dynamo":
            torch.onnx.export(Net().eval(), (torch.randn(2, 3, 12, 12),), str(path), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
        else:
            torch.onnx.export(Net().eval(), (torch.randn(1, 3, 12, 12),), str(path))
    return path


@pytest.mark.parametrize("how", ["dynamo", "default"])
def test_a_batch_moved_past_the_first_axis_stays_free(tmp_path: Path, how: str) -> None:
    """Typing the tensors ONNX cannot type wrote one probe's size where a Transpose had put the batch, so ONNX
    Runtime declared the pool's output and the model's of one row, and the server refused the model."""
    source = _upsampling_pool(tmp_path / f"up_{how}.onnx", how)
    out = tmp_path / "models" / "up"
    code, shown = _split(str(source), "--out", str(out))
    assert code == 0, shown
    manifest = read_manifest(out / "1")
    assert {int(block.outputs[0].shape[0]) for block in manifest.blocks} == {-1}
    x = np.random.default_rng(2).standard_normal((3, 3, 12, 12)).astype(np.float32)
    original = cpu_session(str(source))
    want = np.concatenate([original.run(None, {original.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(3)])
    with ServerProcess(tmp_path / "models", extra_args=["--metrics-port", "-1", "--workers", "1"]) as server, \
            LayerClient(server.address) as client:
        np.testing.assert_allclose(client.infer_array("up", x), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(client.chain("up", x, where="server").output, want, rtol=1e-5, atol=1e-6)


def test_a_wrong_chain_of_a_model_with_tiny_outputs_is_caught() -> None:
    """An untrained model's logits can be 1e-4 in size (timm's EfficientNet): 1e-4 of max(1, |output|) let a
    chain giving zeros pass; the output's own size catches it, while float32 rounding stays far inside."""
    from layerserve.export.graph import load_model
    from layerserve.export.parity import ChainMismatch, chain_check
    from layerserve.export.split import split

    nodes = [*_nodes("pre"), helper.make_node("Mul", ["pre", "tiny"], ["y"], name="/scale/Mul")]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    weights.append(numpy_helper.from_array(np.array(1e-5, np.float32), "tiny"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], weights)
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    result = split(model, "cut")
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert chain_check(model.proto, result, x).max_abs_diff == 0
    last = result.blocks[-1].proto.graph
    scale = next(t for t in last.initializer if t.name == "tiny")
    scale.CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "tiny"))  # the chain now answers zeros
    with pytest.raises(ChainMismatch, match="output 'y' is at most"):
        chain_check(model.proto, result, x)


@pytest.mark.parametrize("batch", ["batch", 1], ids=["dynamic", "fixed"])
def test_rows_that_change_each_others_answers_are_never_merged(tmp_path: Path, batch: object) -> None:
    """Dynamic quantization (``quantize_dynamic``, optimum's ``onnxruntime quantize``) takes one scale over the
    whole batch, so a row's answer depends on the rows beside it. A graph fixed at one row is not made
    dynamic (the check fed one row twice and missed it); a dynamic one stays dynamic, but the server is told
    never to merge requests, so one client's rows never change another's answers."""
    from foreign_graphs import quantized_dynamically

    source = _graph(tmp_path / "float.onnx", _nodes(), [batch, 3, 16, 16], [batch, 8, 8, 8])
    quantized = quantized_dynamically(source, tmp_path / "quantized.onnx")
    out = tmp_path / "models" / "dq"
    code, shown = _split(str(quantized), "--out", str(out))
    assert code == 0, shown
    serving = read_manifest(out / "1").serving
    if batch == 1:
        assert "fixed at 1" in shown and "differ from 1 row at a time" in shown, shown
        assert (serving.max_batch_size, serving.dynamic_batching) == (0, False)
    else:
        assert "DynamicQuantizeLinear takes one scale over the whole batch" in shown, shown
        assert (serving.max_batch_size, serving.dynamic_batching) == (64, False)


def _with_external_weights(folder: Path, location: str = "model.onnx_data") -> Path:
    """The two-stage graph with its weights in a file beside it, as optimum and large exports write them."""
    folder.mkdir(parents=True, exist_ok=True)
    source = _graph(folder / "inline.onnx", _nodes(), ["batch", 3, 16, 16], ["batch", 8, 8, 8])
    proto = onnx.load(str(source))
    source.unlink()
    onnx.save(proto, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return folder / "model.onnx"


def test_a_hugging_face_cache_snapshot_with_linked_weights_splits(tmp_path: Path) -> None:
    """The hub cache keeps files in blobs/ and links them from snapshots/<rev>/: onnx.load refused the linked
    weights file (ONNX Runtime runs it), and split called the file 'not an ONNX model'."""
    real = _with_external_weights(tmp_path / "blobs")
    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for name in ("model.onnx", "model.onnx_data"):
        (snapshot / name).symlink_to(Path("..", "..", "blobs", name))
    code, shown = _split(str(snapshot / "model.onnx"), "--out", str(tmp_path / "models" / "linked"))
    assert code == 0, shown
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = cpu_session(onnx.load(str(real)).SerializeToString()).run(None, {"x": x})[0]
    _assert_served(tmp_path / "models", "linked", x, want)


@pytest.mark.parametrize(("location", "says"), [
    ("../elsewhere/weights.bin", "is stored at '../elsewhere/weights.bin', which is not a file in the model's folder"),
    ("/etc/weights.bin", "is stored at '/etc/weights.bin', which is not a file in the model's folder"),
    ("missing.bin", "is stored in 'missing.bin', which is not beside the model (copy it into"),
])
def test_external_weights_outside_the_models_folder_or_missing_are_refused_in_one_line(
        tmp_path: Path, location: str, says: str) -> None:
    source = _with_external_weights(tmp_path / "model")
    proto = onnx.load(str(source), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "model"))
    assert code != 0 and says in shown and "weight 'w1'" in shown, shown
    assert "Traceback" not in shown and len(shown.strip().splitlines()) == 1, shown


def test_a_dynamo_upsample_exported_at_batch_one_is_made_dynamic(tmp_path: Path) -> None:
    """dynamo writes ``F.interpolate(size=skip.shape[-2:])`` as ``Resize(sizes=[1, C, H, W])`` (smp's U-Nets):
    only Reshape targets were rewritten, so such a graph stayed fixed at one row. Each Resize's sizes now take
    the batch from its own input."""
    import torch
    from torch import nn
    from torch.nn import functional

    class TinyUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.middle = nn.Conv2d(8, 8, 3, padding=1)
            self.up = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = torch.relu(self.down(x))
            deep = torch.relu(self.middle(skip))
            size = x.shape[-2:]  # as smp's decoder sizes each upsample to the skip it meets
            return self.up(torch.cat([functional.interpolate(deep, size=size, mode="nearest"),
                                      functional.interpolate(skip, size=size, mode="nearest")], dim=1))

    torch.manual_seed(0)
    source = tmp_path / "unet.onnx"
    torch.onnx.export(TinyUNet().eval(), (torch.randn(1, 3, 16, 16),), str(source), dynamo=True,
                      input_names=["image"], output_names=["mask"], external_data=False)
    proto = onnx.load(str(source))
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    sizes = [constants.get(node.input[3]) if len(node.input) > 3 else None
             for node in proto.graph.node if node.op_type == "Resize"]
    assert sizes and all(size is not None and int(size[0]) == 1 for size in sizes), sizes  # what dynamo writes
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "unet"))
    assert code == 0, shown
    assert "batch made dynamic (fixed at 1 in the graph; 2 Resize sizes rewritten; checked row by row)" in shown, shown
    assert read_manifest(tmp_path / "models" / "unet" / "1").inputs[0].shape[0] == -1
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    session = cpu_session(proto.SerializeToString())
    want = np.concatenate([session.run(None, {"image": x[row:row + 1]})[0] for row in range(3)])
    _assert_served(tmp_path / "models", "unet", x, want)


@pytest.mark.parametrize(("made", "says"), [
    ("saved_model", "is a TensorFlow SavedModel; split takes an ONNX file: convert it with python -m tf2onnx.convert"),
    ("model.keras", "is not an ONNX model; it looks like a Keras model: convert it with tf2onnx"),
    ("model.pth", "is not an ONNX model; it looks like a PyTorch file: export the model with `layerserve export"),
])
def test_another_frameworks_model_is_refused_saying_how_to_convert_it(tmp_path: Path, made: str, says: str) -> None:
    """A SavedModel folder was 'no such file'; a .keras file 'not an ONNX model (DecodeError: ...)'."""
    if made == "saved_model":
        (tmp_path / made).mkdir()
        (tmp_path / made / "saved_model.pb").write_bytes(b"\x08\x01")
    else:
        (tmp_path / made).write_bytes(b"PK\x03\x04 not protobuf \xff\xfe")
    code, shown = _split(str(tmp_path / made), "--out", str(tmp_path / "models" / "m"))
    assert code == 2 and says in shown and len(shown.strip().splitlines()) == 1, shown


def test_a_cut_named_as_the_layer_points_at_the_tensors_that_carry_that_name(tmp_path: Path) -> None:
    """tf2onnx names a Keras layer's output ``model/block_13_expand_relu/Relu6:0``; ``--at block_13_expand_relu``
    said only that no tensor has that name."""
    nodes = _nodes()
    for node in nodes:
        node.output[0] = {"r1": "model/stem_relu/Relu:0"}.get(node.output[0], node.output[0])
        for index, name in enumerate(node.input):
            node.input[index] = {"r1": "model/stem_relu/Relu:0"}.get(name, name)
    source = _graph(tmp_path / "keras_like.onnx", nodes, [1, 3, 16, 16], [1, 8, 8, 8])
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "k"), "--at", "stem_relu")
    assert code == 2, shown
    assert "no tensor named 'stem_relu'; tensors whose names contain it: 'model/stem_relu/Relu:0'" in shown, shown
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "k"), "--at", "model/stem_relu/Relu:0")
    assert code == 0, shown


def test_onnx_runtimes_kernel_warnings_stay_out_of_splits_output(tmp_path: Path) -> None:
    """tf2onnx writes Keras' UpSampling2D as a Resize with ``tf_half_pixel_for_nn``, deprecated since opset 13:
    ONNX Runtime's default logger printed a coloured warning through split's table at each session made (and
    through the server's JSON log). ONNX Runtime writes it to the process's stderr itself, so split runs apart."""
    import subprocess
    import sys

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c1", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="tf_half_pixel_for_nn"),
        helper.make_node("Conv", ["up", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    weights.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    graph = helper.make_graph(nodes, "upsampling", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16, 16])], weights)
    source = tmp_path / "upsampling.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    run = subprocess.run([sys.executable, "-c", "from layerserve.cli.main import main; raise SystemExit(main())",
                          "split", str(source), "--out", str(tmp_path / "models" / "upsampling")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "W:onnxruntime" not in run.stdout + run.stderr, run.stderr


def _stamped(path: Path, producer: str = "", metadata: dict[str, str] | None = None) -> Path:
    """``path`` rewritten as another exporter leaves it: its producer name and metadata."""
    proto = onnx.load(str(path))
    proto.producer_name = producer
    onnx.helper.set_model_props(proto, metadata or {})
    onnx.save(proto, str(path))
    return path


def test_an_ultralytics_export_is_preprocessed_and_labelled_as_its_metadata_says(tmp_path: Path) -> None:
    """Ultralytics' models take RGB in [0, 1] without ImageNet's mean and std, and name their classes in the
    file's metadata: split recorded torchvision's preprocessing and no labels."""
    names = "{0: 'person', 1: 'bicycle', 2: 'car'}"
    source = _stamped(_graph(tmp_path / "yolo.onnx", _nodes(), [1, 3, 16, 16], [1, 8, 8, 8]), "pytorch",
                      {"author": "Ultralytics", "task": "classify", "imgsz": "[16, 16]", "names": names})
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "yolo"))
    assert code == 0, shown
    assert "preprocessing: resize 16, centre crop 16x16, RGB, mean 0,0,0, std 1,1,1" in shown, shown
    manifest = read_manifest(tmp_path / "models" / "yolo" / "1")
    assert list(manifest.labels) == ["person", "bicycle", "car"]
    assert any("from the Ultralytics metadata" in note for note in manifest.provenance.notes)
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "tuned"), "--mean", "0.5,0.5,0.5")
    assert code == 0 and "mean 0.5,0.5,0.5, std 1,1,1" in shown, shown  # the flag left out keeps the convention
    assert list(read_manifest(tmp_path / "models" / "tuned" / "1").labels) == ["person", "bicycle", "car"]


def _channels_last(path: Path) -> Path:
    """The two-stage graph behind a Transpose from [N, H, W, 3], as tf2onnx writes a Keras model."""
    nodes = [helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2]), *_nodes()]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, ["n", 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_a_keras_export_is_preprocessed_alike_in_either_layout_and_takes_mean_and_std(tmp_path: Path) -> None:
    """tf2onnx's channels-last export recorded no preprocessing and refused --mean/--std; the same model exported
    with --inputs-as-nchw recorded torchvision's ImageNet normalisation, so one picture got two answers."""
    last = _stamped(_channels_last(tmp_path / "keras_nhwc.onnx"), "tf2onnx")
    first = _stamped(_graph(tmp_path / "keras_nchw.onnx", _nodes(), ["n", 3, 16, 16], ["n", 8, 8, 8]), "tf2onnx")
    recorded = []
    for source in (last, first):
        code, shown = _split(str(source), "--out", str(tmp_path / "models" / source.stem))
        assert code == 0, shown
        recorded.append(read_manifest(tmp_path / "models" / source.stem / "1").preprocessing)
    assert recorded[0] == recorded[1]
    assert (recorded[0].resize, recorded[0].crop_height, list(recorded[0].mean), list(recorded[0].std)) == \
        (0, 16, [0, 0, 0], [1, 1, 1])
    code, shown = _split(str(last), "--out", str(tmp_path / "models" / "scaled"), "--mean", "0.5,0.5,0.5",
                         "--std", "0.5,0.5,0.5")
    assert code == 0, shown
    assert "preprocessing: resize to 16x16 (no crop), RGB, mean 0.5,0.5,0.5, std 0.5,0.5,0.5" in shown, shown


def test_a_tflite_int8_model_through_tf2onnx_says_its_pixels_go_in_as_0_to_255(tmp_path: Path) -> None:
    """``tf2onnx --tflite`` of a full-integer TFLite model takes UINT8 pixels, which the client sends as their
    0-255 values. Split printed "pictures go in [0, 1] with no mean or std; name the model's with --mean/--std"
    and "mean 0,0,0, std 1,1,1", neither of which applies to it."""
    nodes = [helper.make_node("Cast", ["pixels"], ["x_float"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["x_float"], ["x"], perm=[0, 3, 1, 2]), *_nodes()]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])], weights)
    source = tmp_path / "tflite_int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    _stamped(source, "tf2onnx")
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "tflite_int8"))
    assert code == 0, shown
    assert "taking integer pixels, so pictures go in as their 0-255 values" in shown, shown
    assert "preprocessing: resize to 16x16 (no crop), RGB, pixel values 0-255 as they are" in shown, shown
    assert "--mean/--std" not in shown and "[0, 1]" not in shown, shown


def test_a_graph_with_onnxruntime_extensions_pre_processing_is_refused_saying_what_to_split(tmp_path: Path) -> None:
    """``add_pre_post_processing_to_model`` puts onnxruntime-extensions' operators (DecodeImage, ...) in the graph,
    and may leave it taking one picture [h, w, 3] with no batch. Split said only "DecodeImage(-1) is not a
    registered function/op", and for [h, w, 3] suggested "--input-shape 224,3"."""
    nodes = [helper.make_node("DecodeImage", ["image"], ["decoded"], domain="com.microsoft.extensions"),
             helper.make_node("Cast", ["decoded"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["num_bytes"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["h", "w", 3])])
    decoding = tmp_path / "decoding.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft.extensions", 1)]), str(decoding))
    code, shown = _split(str(decoding), "--out", str(tmp_path / "models" / "decoding"))
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert "operators of domain 'com.microsoft.extensions' (DecodeImage)" in shown and "custom-op library" in shown, shown

    nodes = [helper.make_node("Transpose", ["pixels"], ["chw"], perm=[2, 0, 1]),
             helper.make_node("Unsqueeze", ["chw", "axes"], ["x"]), *_nodes()]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    weights.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["h", "w", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, "h2", "w2"])], weights)
    unbatched = tmp_path / "unbatched.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(unbatched))
    code, shown = _split(str(unbatched), "--out", str(tmp_path / "models" / "unbatched"))
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert "one picture with no batch dimension" in shown and "split the model before that pre-processing" in shown, shown


def _flattening_net():  # noqa: ANN202 - a torch module, imported late
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Dropout(0.2))
            self.fc = nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):  # noqa: ANN001, ANN202
            x = self.features(x)
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    return Net().eval(), torch.randn(1, 3, 16, 16)


@pytest.mark.parametrize("how", ["torchscript without constant folding", "dynamo without optimize"])
def test_an_unfolded_flatten_at_batch_one_is_made_dynamic(tmp_path: Path, how: str) -> None:
    """Without constant folding the exporters build ``x.view(1, -1)``'s target from constants: TorchScript as
    Concat(Unsqueeze(Constant 1), Unsqueeze(Constant -1)), dynamo as Concat of ``value_ints`` Constants. Split
    knew only a target stored as one constant, so the model was served fixed at one row."""
    import warnings

    import torch

    net, x = _flattening_net()
    source = tmp_path / "unfolded.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if how.startswith("torchscript"):
            torch.onnx.export(net, x, str(source), dynamo=False, do_constant_folding=False, input_names=["x"])
        else:
            torch.onnx.export(net, (x,), str(source), dynamo=True, optimize=False, input_names=["x"])
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "unfolded"))
    assert code == 0, shown
    assert "batch made dynamic" in shown and "1 Reshape target shape rewritten" in shown, shown
    rows = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    session = cpu_session(str(source))  # the dynamo exporter may keep the weights beside it, in unfolded.onnx.data
    want = np.concatenate([session.run(None, {"x": row[None]})[0] for row in rows])
    _assert_served(tmp_path / "models", "unfolded", rows, want)


def test_a_graph_exported_in_training_mode_is_refused_saying_how_to_export(tmp_path: Path) -> None:
    """``training=TrainingMode.TRAINING`` (or PRESERVE on a module in train mode) keeps Dropout active and
    BatchNormalization on batch statistics. Split said "the chain of blocks does not reproduce the full graph:
    max |diff| 0.444 ... block '07_features_7' is the first to diverge"."""
    import warnings

    import torch

    net, x = _flattening_net()
    net.train()
    source = tmp_path / "training.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, x, str(source), dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False)
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "training"))
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert "exported in training mode (BatchNormalization with training_mode=1, Dropout with training_mode true)" in shown
    assert "model.eval()" in shown


def test_a_float64_cnn_is_refused_in_one_line_saying_to_export_it_in_float32(tmp_path: Path) -> None:
    """``model.double()`` exported: ONNX Runtime's CPU provider has no float64 Conv. Split ended in a traceback
    from the chain check's session."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape) * 0.2, name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    graph = helper.make_graph(_nodes(), "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 8, 8, 8])], weights)
    source = tmp_path / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "double"))
    assert code == 2 and len(shown.strip().splitlines()) == 1 and "Traceback" not in shown, shown
    assert "ONNX Runtime cannot run the graph" in shown and "export the model in float32" in shown, shown


def test_a_graph_exported_without_its_weights_is_refused_saying_to_export_them(tmp_path: Path) -> None:
    """``export_params=False`` makes every weight a graph input with no value; split said only "splitting needs
    exactly one image input"."""
    graph = helper.make_graph(_nodes(), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16]),
                                              helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 3, 3, 3]),
                                              helper.make_tensor_value_info("w2", TensorProto.FLOAT, [8, 8, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])])
    source = tmp_path / "no_params.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "no_params"))
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert "3 inputs ('x', 'w1', 'w2'): 2 of them are layer weights without values" in shown, shown
    assert "export_params=True" in shown


def test_inner_shapes_a_file_declares_wrongly_are_worked_out_again(tmp_path: Path) -> None:
    """jax2onnx 0.17 declares NHWC shapes in ``value_info`` for tensors its Flax ResNet computes in NCHW; ONNX
    Runtime ignores them and runs the file, and split refused it: "block '01_conv' does not run on what the
    blocks before it give (... Incompatible dimensions)"."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="/stem/conv/Conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="/stem/relu/Relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="/block/conv/Conv"),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="/block/Add"),
             helper.make_node("MaxPool", ["s"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="/block/pool/MaxPool")]
    source = _graph(tmp_path / "stale.onnx", nodes, ["n", 3, 16, 16], ["n", 8, 8, 8])
    proto = onnx.load(str(source))
    proto.graph.value_info.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, ["n", 16, 16, 8]))
    onnx.save(proto, str(source))
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    want = cpu_session(str(source)).run(None, {"x": x})[0]
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "stale"))
    assert code == 0, shown
    manifest = read_manifest(tmp_path / "models" / "stale" / "1")
    assert [list(b.outputs[0].shape) for b in manifest.blocks] == [[-1, 8, 16, 16], [-1, 8, 8, 8]]
    _assert_served(tmp_path / "models", "stale", x, want)


def test_a_graph_onnx_runtime_cannot_load_is_refused_as_such_not_as_a_block(tmp_path: Path) -> None:
    """jax2onnx at opset 17 gives ReduceMean its axes as an input (opset 18's form); ONNX Runtime refuses the file,
    and split blamed the block that met it: "block '01_body' is not a valid ONNX model"."""
    nodes = [*_nodes("r2"), helper.make_node("ReduceMean", ["r2", "axes"], ["y"], keepdims=1, name="/head/ReduceMean")]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    weights.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 1, 1])], weights)
    source = tmp_path / "axes_input.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "axes_input"))
    assert code == 2 and len(shown.strip().splitlines()) == 1, shown
    assert shown.startswith("layerserve split: ONNX Runtime cannot run the graph:") and "ReduceMean" in shown, shown


def test_blocks_of_a_keras_export_are_named_after_its_layers(tmp_path: Path) -> None:
    """tf2onnx names nodes ``<model>/<layer>/<op>``: blocks were named after op types (``01_conv``), and the
    NHWC-to-NCHW Transpose before the first layer was a block of its own."""
    source = _channels_last(tmp_path / "keras.onnx")
    proto = onnx.load(str(source))
    layer_of = {"Transpose": "stem_conv/Conv2D__6", "Conv": None, "Relu": None, "MaxPool": "pool/MaxPool"}
    convs = iter(["stem_conv/Conv2D", "block_1_conv/Conv2D"])
    relus = iter(["stem_relu/Relu", "block_1_relu/Relu"])
    for node in proto.graph.node:
        layer = layer_of[node.op_type] or next(convs if node.op_type == "Conv" else relus)
        node.name = f"StatefulPartitionedCall/my_model/{layer}"
    onnx.save(proto, str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "keras"))
    assert code == 0, shown
    names = [block.name for block in read_manifest(tmp_path / "models" / "keras" / "1").blocks]
    # The leading Transpose joins the first layer: a block of its own was a hop for nothing.
    assert names == ["00_stem_conv", "01_block_1_conv"], names


def test_a_block_holding_most_of_the_flops_is_noted(tmp_path: Path) -> None:
    """A skip from the stem over the whole body leaves no cut inside it: the split went quietly coarse."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="/stem/conv/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/body/relu/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="/body/conv/Conv"),
        helper.make_node("MaxPool", ["c2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="/body/pool/MaxPool"),
        helper.make_node("MaxPool", ["c1"], ["skip"], kernel_shape=[2, 2], strides=[2, 2], name="/skip/MaxPool"),
        helper.make_node("Concat", ["p2", "skip"], ["y"], axis=1, name="/Concat"),
    ]
    source = _graph(tmp_path / "skip.onnx", nodes, [1, 3, 16, 16], [1, 16, 8, 8])
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "skip"))
    assert code == 0, shown
    notes = read_manifest(tmp_path / "models" / "skip" / "1").provenance.notes
    assert any(note.startswith("block ") and "% of the FLOPs: no single tensor separates its layers" in note
               for note in notes), notes


def test_a_block_that_is_one_heavy_layer_is_not_called_coarse(tmp_path: Path) -> None:
    """A 1-D CNN whose second Conv holds 92 % of the FLOPs was told "no single tensor separates its layers (a
    skip connection or a branch crosses every point inside it)" of a block holding that Conv alone."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (4, 1, 3)), ("w2", (64, 4, 7)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1], name="/stem/Conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="/stem/Relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[3, 3], name="/wide/Conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 500])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64, 500])], weights)
    source = tmp_path / "signal.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "signal"))
    assert code == 0, shown
    manifest = read_manifest(tmp_path / "models" / "signal" / "1")
    assert [b.name for b in manifest.blocks] == ["00_stem", "01_wide"]
    assert manifest.blocks[1].flops > 0.9 * sum(b.flops for b in manifest.blocks)
    assert not any("of the FLOPs" in note for note in manifest.provenance.notes), manifest.provenance.notes

    # jax2onnx reads the batch for a flatten: Reshape(y, Concat(Shape(y)[0:1], [-1])) joins nothing.
    nodes[-1] = helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[3, 3], name="/wide/Conv")
    nodes += [helper.make_node("Shape", ["c2"], ["s"], name="/wide/Shape"),
              helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="/wide/Slice"),
              helper.make_node("Concat", ["n", "minus_one"], ["target"], axis=0, name="/wide/Concat"),
              helper.make_node("Reshape", ["c2", "target"], ["y"], name="/wide/Reshape")]
    weights += [numpy_helper.from_array(np.array([v], np.int64), name)
                for name, v in (("zero", 0), ("one", 1), ("minus_one", -1))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 500])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64 * 500])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "flattened"))
    assert code == 0, shown
    notes = read_manifest(tmp_path / "models" / "flattened" / "1").provenance.notes
    assert not any("of the FLOPs" in note for note in notes), notes


def test_a_free_size_is_suggested_and_checked_from_the_exporters_metadata(tmp_path: Path) -> None:
    """An Ultralytics export with dynamic=True: split asked for --input-shape and suggested 224 for a model
    exported at 640, and a size its stride does not divide ended in ONNX Runtime's shape-merge error."""
    metadata = {"author": "Ultralytics", "task": "detect", "imgsz": "[32, 32]", "stride": "8"}
    source = _stamped(_graph(tmp_path / "yolo.onnx", _nodes(), ["batch", 3, "height", "width"],
                             ["batch", 8, "h2", "w2"]), "pytorch", metadata)
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "yolo"))
    assert code == 0 and "free height and width pinned to the size the exporter recorded (32x32" in shown, shown
    assert read_manifest(tmp_path / "models" / "yolo" / "1").inputs[0].shape == [-1, 3, 32, 32]
    free_channels = _stamped(_graph(tmp_path / "free.onnx", _nodes(), ["batch", "c", "height", "width"],
                                    ["batch", 8, "h2", "w2"]), "pytorch", metadata)
    code, shown = _split(str(free_channels), "--out", str(tmp_path / "models" / "free"))
    assert code == 2 and "(e.g. --input-shape 3,32,32)" in shown, shown
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "yolo"), "--input-shape", "3,20,20")
    assert code == 2 and "the graph's metadata says stride 8, so height and width must be multiples of 8" in shown
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "yolo"), "--input-shape", "3,16,24")
    assert code == 0, shown


@pytest.mark.parametrize("producer", ["tf2onnx", "pytorch"])
def test_a_graph_that_scales_its_own_input_by_1_over_255_takes_0_255_pixels(tmp_path: Path, producer: str) -> None:
    """Keras' EfficientNet starts with Rescaling(1/255): the recorded [0, 1] pixels reached it 255 times too small."""
    nodes = [helper.make_node("Mul", ["x_nhwc", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["x"], perm=[0, 3, 1, 2]), *_nodes()]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)))]
    weights.append(numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, ["n", 16, 16, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])], weights)
    source = tmp_path / "rescaling.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    _stamped(source, producer)
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "rescaling"))
    assert code == 0, shown
    assert "the graph scales its input by 0.00392157 itself" in shown, shown
    recorded = read_manifest(tmp_path / "models" / "rescaling" / "1").preprocessing
    assert list(recorded.mean) == [0, 0, 0] and np.allclose(list(recorded.std), [1 / 255] * 3)


def test_names_a_tool_prefixed_still_give_the_modules(tmp_path: Path) -> None:
    """ONNX Runtime's saved optimized graph of an FP16 model names nodes ``InsertedPrecisionFreeCast_/layer1/...``:
    only the head's unprefixed names gave scopes, and the whole trunk became one block."""
    nodes = _nodes()
    for node in nodes[:-1]:
        node.name = "InsertedPrecisionFreeCast_" + node.name
    source = _graph(tmp_path / "prefixed.onnx", nodes, ["n", 3, 16, 16], ["n", 8, 8, 8])
    code, shown = _split(str(source), "--out", str(tmp_path / "models" / "prefixed"))
    assert code == 0, shown
    assert [b.name for b in read_manifest(tmp_path / "models" / "prefixed" / "1").blocks] == ["00_stem", "01_body"]
    for node in nodes[:-1]:  # names no module path can be read from, but for the last node's
        node.name = f"node_{id(node)}"
    code, shown = _split(str(_graph(tmp_path / "few.onnx", nodes, ["n", 3, 16, 16], ["n", 8, 8, 8])),
                         "--out", str(tmp_path / "models" / "few"))
    assert code == 0, shown
    assert len(read_manifest(tmp_path / "models" / "few" / "1").blocks) == 2  # one per layer, not one block


def test_onnx_runtimes_channel_blocked_tensors_are_never_cuts(tmp_path: Path) -> None:
    """A graph saved after ORT_ENABLE_ALL runs its convolutions in NCHWc (channels blocked and padded): cut there,
    a block's output was declared [N, 24, 16, 16] and held a blocked [N, 32, 16, 16]."""
    import onnxruntime as ort

    from layerserve.export.graph import load_model
    from layerserve.export.split import split

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["y"]),
    ]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
               for name, shape in (("w1", (16, 3, 3, 3)), ("w2", (24, 16, 3, 3)), ("w3", (24, 24, 3, 3)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 24, 16, 16])], weights)
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(plain))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "all.onnx")
    ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
    saved = onnx.load(str(tmp_path / "all.onnx"))
    if not any(node.domain == "com.microsoft.nchwc" for node in saved.graph.node):
        pytest.skip("ONNX Runtime wrote no NCHWc layout on this CPU")
    model = load_model(saved)
    producers = {output: node for node in model.proto.graph.node for output in node.output}
    for cut in split(model, "cut").cuts:
        producer = producers[cut]
        assert producer.domain != "com.microsoft.nchwc" or producer.op_type == "ReorderOutput", (cut, producer)
    assert any("channel-blocked layout (NCHWc" in note for note in model.notes)
