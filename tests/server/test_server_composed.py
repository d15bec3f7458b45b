"""Composing graphs into one (server/composed.py): each graph's own names stay apart, the seams join by
name, old IR versions and unnamed nodes compose, a node holding a subgraph is refused, and the weights a
session of it could pack are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from layerserve.server import composed


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _first(folder: Path) -> Path:
    """x -> MatMul(W) -> t -> Relu -> seam; its weight and inner tensor named as the second graph's are."""
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["t"], name="n0"), helper.make_node("Relu", ["t"], ["seam"])],
        "first", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("seam", TensorProto.FLOAT, ["n", 3])], [weight])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), folder / "first.onnx")


def _second(folder: Path) -> Path:
    """seam -> MatMul(W) -> t -> Add(x) -> out, at IR version 3: its weight is also listed as an input, and
    it reads the chain's own input ``x`` again."""
    weight = numpy_helper.from_array(np.full((3, 2), 0.5, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["seam", "W"], ["t"], name="n0"), helper.make_node("Add", ["t", "x"], ["out"])],
        "second", [helper.make_tensor_value_info("seam", TensorProto.FLOAT, ["n", 3]),
                   helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
                   helper.make_tensor_value_info("W", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    return _save(model, folder / "second.onnx")


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {spec.name: feeds[spec.name] for spec in session.get_inputs()}),
                    strict=True))


def test_composed_graphs_answer_as_the_graphs_run_in_turn(tmp_path: Path) -> None:
    first, second = _first(tmp_path), _second(tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    want = _run(second, {"x": x, **_run(first, {"x": x})})
    made = composed.compose([first, second])
    assert made.parent == tmp_path and made == composed.composed_path([first, second])
    loaded = onnx.load(str(made))
    graph = loaded.graph
    assert loaded.ir_version >= 4 and [value.name for value in graph.input] == ["x"]  # W is a weight, not an input
    assert [value.name for value in graph.output] == ["out"]
    assert {tensor.name for tensor in graph.initializer} == {"layerserve.block0/W", "layerserve.block1/W"}
    assert [node.name for node in graph.node] == ["layerserve.block0/n0", "", "layerserve.block1/n0", ""]
    got = _run(made, {"x": x})
    assert got.keys() == want.keys() and np.array_equal(got["out"], want["out"])
    stamp = made.stat().st_mtime_ns
    assert composed.compose([first, second]) == made and made.stat().st_mtime_ns == stamp  # made once


def test_a_node_holding_a_subgraph_is_refused(tmp_path: Path) -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["seam"], ["picked"])], "branch", [],
                               [helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["n", 3])])
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["seam"], ["top"], keepdims=0),
         helper.make_node("Cast", ["top"], ["flag"], to=TensorProto.BOOL),
         helper.make_node("If", ["flag"], ["out"], name="gate", then_branch=branch, else_branch=branch)],
        "gated", [helper.make_tensor_value_info("seam", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3])])
    gated = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "gated.onnx")
    with pytest.raises(ValueError, match="node 'gate' \\(If\\) holds a subgraph"):
        composed.compose([_first(tmp_path), gated])
    with pytest.raises(ValueError, match="two or more graphs in one folder"):
        composed.compose([_first(tmp_path)])


def test_graphs_all_at_ir_version_3_keep_their_weights_listed_as_inputs(tmp_path: Path) -> None:
    first = onnx.load(str(_first(tmp_path)))
    first.ir_version = 3
    first.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 3]))
    first.opset_import[0].version = 8
    old, second = _save(first, tmp_path / "old.onnx"), _second(tmp_path)
    made = composed.compose([old, second])
    loaded = onnx.load(str(made))
    assert loaded.ir_version == 3
    assert [value.name for value in loaded.graph.input] == ["x", "layerserve.block0/W", "layerserve.block1/W"]
    assert {opset.domain: opset.version for opset in loaded.opset_import} == {"": 8}
    x = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    want = _run(second, {"x": x, **_run(old, {"x": x})})
    assert np.array_equal(_run(made, {"x": x})["out"], want["out"])


def test_packable_bytes_counts_each_weight_read_outside_the_in_place_kernels_once(tmp_path: Path) -> None:
    weights = [numpy_helper.from_array(np.zeros((4, 3), np.float32), "fc"),  # 48 bytes, read twice
               numpy_helper.from_array(np.zeros((5, 2), np.int8), "quantized"),  # 10 bytes
               numpy_helper.from_array(np.zeros((64, 8, 3, 3), np.float32), "blocked"),  # in place: not counted
               numpy_helper.from_array(np.zeros((7,), np.float16), "unread")]  # read by no node
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "blocked"], ["c"], domain="com.microsoft.nchwc"),
         helper.make_node("MatMul", ["c", "fc"], ["m"]), helper.make_node("Add", ["m", "fc"], ["a"]),
         helper.make_node("MatMulInteger", ["a", "quantized"], ["out"])],
        "counted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.INT32, None)], weights)
    path = _save(helper.make_model(graph), tmp_path / "counted.onnx")
    assert composed.packable_bytes(path) == 48 + 10
