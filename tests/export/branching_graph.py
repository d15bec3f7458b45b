"""A hand-built branching ONNX graph for the splitter's tests.

    x -> Relu -> a ─┬─ Mul(W) -> b ─┐
                    └─ Sigmoid -> c ─┴─ Add -> d -> Add(K) -> e ─┬─ Relu -> f1 ───┐
                                                                 └─ Mul(W) -> f2 ─┴─ Concat -> g -> Mul(K) -> h -> Tanh -> y

``W`` is one initializer read on both sides of the cuts at d and e; ``K`` is made by a
``Constant`` node and read on both sides of the cuts at e and g. The single-tensor
cuts are a, d, e, g and h; b, c, f1 and f2 each have a sibling branch beside them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CUTS = ["a", "d", "e", "g", "h"]
NOT_CUTS = {"b": ["a"], "c": ["a"], "f1": ["e"], "f2": ["e"]}


def branching_model(two_inputs: bool = False) -> onnx.ModelProto:
    """The graph above, x float32 [batch, 2, 3, 3] -> y float32 [batch, 4, 3, 3]."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((1, 2, 1, 1)).astype(np.float32), "W")
    constant = helper.make_tensor("K_value", TensorProto.FLOAT, [1], [0.5])
    nodes = [
        helper.make_node("Constant", [], ["K"], name="make_K", value=constant),
        helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
        helper.make_node("Mul", ["a", "W"], ["b"], name="mul_b"),
        helper.make_node("Sigmoid", ["a"], ["c"], name="sigmoid_c"),
        helper.make_node("Add", ["b", "c"], ["d"], name="add_d"),
        helper.make_node("Add", ["d", "K"], ["e"], name="add_e"),
        helper.make_node("Relu", ["e"], ["f1"], name="relu_f1"),
        helper.make_node("Mul", ["e", "W"], ["f2"], name="mul_f2"),
        helper.make_node("Concat", ["f1", "f2"], ["g"], name="concat_g", axis=1),
        helper.make_node("Mul", ["g", "K"], ["h"], name="mul_h"),
        helper.make_node("Tanh", ["h"], ["y"], name="tanh_y"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 3])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["batch", 2, 3, 3]))
        nodes[1] = helper.make_node("Add", ["x", "x2"], ["a"], name="add_a")
    graph = helper.make_graph(
        nodes,
        "branching",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 3, 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(x: np.ndarray) -> np.ndarray:
    """The graph's function in numpy, to check ONNX Runtime against."""
    w = numpy_helper.to_array(branching_model().graph.initializer[0])
    a = np.maximum(x, 0)
    d = a * w + 1 / (1 + np.exp(-a))
    e = d + 0.5
    g = np.concatenate([np.maximum(e, 0), e * w], axis=1)
    return np.tanh(g * 0.5)
