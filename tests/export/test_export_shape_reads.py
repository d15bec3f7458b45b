"""Shape reads rewritten (export/shape_reads.py): reads of fixed dimensions fold to constants in each way
exporters write them, a free batch never does; a read of the batch that only shapes one Reshape moves to
that Reshape's data; each rewritten graph answers exactly as before."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from layerserve.export.runtime import cpu_session
from layerserve.export.shape_reads import fold_fixed_shape_reads, rebase_batch_reads, simplified_if_same


def _graph(nodes: list[onnx.NodeProto], opset: int = 17, initializers: list[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """image [N, 3, 8, 8] -> Resize to the size ``nodes`` compute into 'size' (int64 [4]); Expand to it before
    opset 10, which has no Resize."""
    last = (helper.make_node("Resize", ["image", "", "", "size"], ["out"], mode="nearest") if opset >= 10
            else helper.make_node("Expand", ["image", "size"], ["out"]))
    nodes = [*nodes, last]
    graph = helper.make_graph(nodes, "reads", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def _same_answers(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    return np.array_equal(cpu_session(before.SerializeToString()).run(None, {"image": x})[0],
                          cpu_session(after.SerializeToString()).run(None, {"image": x})[0])


def test_gathered_height_and_width_fold_and_the_free_batch_does_not() -> None:
    proto = _graph([
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "front"], ["batch_channels"], axis=0),   # [N, 3]: N is free
        helper.make_node("Gather", ["shape", "back"], ["height_width"], axis=0),      # [8, 8]: fixed
        helper.make_node("Mul", ["height_width", "two"], ["doubled"]),
        helper.make_node("Concat", ["batch_channels", "doubled"], ["size"], axis=0),
    ], initializers=[_ints("front", [0, 1]), _ints("back", [2, 3]), _ints("two", [2])])
    folded, count = fold_fixed_shape_reads(proto)
    assert count == 1
    assert _ops(folded) == ["Shape", "Gather", "Constant", "Mul", "Concat", "Resize"]
    constant = next(node for node in folded.graph.node if node.op_type == "Constant")
    assert list(numpy_helper.to_array(constant.attribute[0].t)) == [8, 8]
    assert _same_answers(proto, folded)


def test_a_slice_of_the_shape_folds_with_inputs_and_with_attributes() -> None:
    new = _graph([
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Slice", ["shape", "start", "end"], ["height_width"]),
        helper.make_node("Concat", ["ones", "height_width"], ["size"], axis=0),
    ], initializers=[_ints("start", [-2]), _ints("end", [2**63 - 1]), _ints("ones", [1, 3])])
    old = _graph([
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Slice", ["shape"], ["height_width"], starts=[2], ends=[4], axes=[0]),
        helper.make_node("Concat", ["ones", "height_width"], ["size"], axis=0),
    ], opset=9, initializers=[_ints("ones", [1, 3])])
    for proto in (new, old):
        folded, count = fold_fixed_shape_reads(proto)
        assert count == 1 and "Shape" not in _ops(folded), _ops(folded)
        assert _same_answers(proto, folded)


def test_shape_with_start_and_end_folds_a_scalar_read() -> None:
    proto = _graph([
        helper.make_node("Shape", ["image"], ["spatial"], start=2),
        helper.make_node("Gather", ["spatial", "zero"], ["height"], axis=0),  # a scalar: index of rank 0
        helper.make_node("Unsqueeze", ["height", "axis0"], ["height1"]),
        helper.make_node("Concat", ["ones", "height1", "height1"], ["size"], axis=0),
    ], initializers=[numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"), _ints("axis0", [0]),
                     _ints("ones", [1, 3])])
    folded, count = fold_fixed_shape_reads(proto)
    assert count == 1 and _ops(folded)[0] == "Constant"
    assert numpy_helper.to_array(folded.graph.node[0].attribute[0].t).shape == ()
    assert _same_answers(proto, folded)


def test_nothing_to_fold_leaves_the_graph_as_it_is() -> None:
    proto = _graph([
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "front"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "rest"], ["size"], axis=0),
    ], initializers=[_ints("front", [0]), _ints("rest", [3, 8, 8])])
    assert fold_fixed_shape_reads(proto) == (proto, 0)
    assert simplified_if_same(proto, (1, 2)) == (proto, 0, 0)


def _batch_read(extra: list[onnx.NodeProto] = (), outputs: tuple[str, ...] = ("out",)) -> onnx.ModelProto:
    """``b = image.shape[0]`` read first, two layers, then ``relu2.reshape(b, -1)``; ``extra`` nodes after."""
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Relu", ["image"], ["relu1"]),
        helper.make_node("Sigmoid", ["relu1"], ["relu2"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["relu2", "target"], ["out"]),
        *extra,
    ]
    graph = helper.make_graph(
        nodes, "batch_read", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT if name == "out" else TensorProto.INT64, None)
         for name in outputs],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"), _ints("axis0", [0]), _ints("minus_one", [-1])])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_batch_read_that_only_shapes_a_reshape_moves_to_its_data() -> None:
    proto = _batch_read()
    moved, count = rebase_batch_reads(proto)
    assert count == 1
    shape = next(node for node in moved.graph.node if node.op_type == "Shape")
    assert list(shape.input) == ["relu2"]
    order = [node.output[0] for node in moved.graph.node]
    assert order.index("relu2") < order.index("shape") < order.index("out")  # still topologically sorted
    assert _same_answers(proto, moved)
    assert simplified_if_same(proto, (1, 3))[1:] == (0, 1)


def test_a_batch_read_used_for_anything_else_stays() -> None:
    # The batch also leaves the graph, or feeds an operator that is not shape arithmetic: nothing moves.
    assert rebase_batch_reads(_batch_read(outputs=("out", "batch1")))[1] == 0
    expanded = _batch_read([helper.make_node("ConstantOfShape", ["batch1"], ["zeros"])], outputs=("out", "zeros"))
    assert rebase_batch_reads(expanded)[1] == 0


def test_a_batch_read_that_indexes_a_flattened_tensor_moves_to_where_the_rows_are_first() -> None:
    """timm's ConvNeXt head exported by dynamo: ``Shape(image, start=0, end=1)`` read first, then
    ``Range(0, batch) * C + offsets`` as the indices of a Gather from the pooled features flattened to
    [-1] (``as_strided``). The read moves to the pooled features [N, C, 1, 1], the nearest tensor behind
    the flattened one whose first dimension is the batch, and every layer before it can be a block."""
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"], start=0, end=1),
        helper.make_node("Squeeze", ["shape"], ["batch"]),
        helper.make_node("Relu", ["image"], ["relu1"]),
        helper.make_node("Sigmoid", ["relu1"], ["relu2"]),
        helper.make_node("ReduceMean", ["relu2", "spatial"], ["pooled"], keepdims=1),
        helper.make_node("Reshape", ["pooled", "minus_one"], ["flat"]),
        helper.make_node("Range", ["zero", "batch", "one"], ["rows"]),
        helper.make_node("Mul", ["rows", "channels"], ["starts"]),
        helper.make_node("Unsqueeze", ["starts", "axis1"], ["starts1"]),
        helper.make_node("Add", ["starts1", "offsets"], ["indices"]),
        helper.make_node("Gather", ["flat", "indices"], ["out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "as_strided", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
         numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
         numpy_helper.from_array(np.array(3, dtype=np.int64), "channels"),
         _ints("spatial", [2, 3]), _ints("minus_one", [-1]), _ints("axis1", [1]), _ints("offsets", [0, 1, 2])])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    moved, count = rebase_batch_reads(proto)
    assert count == 1
    assert list(next(node for node in moved.graph.node if node.op_type == "Shape").input) == ["pooled"]
    order = [node.output[0] for node in moved.graph.node]
    assert order.index("pooled") < order.index("shape") < order.index("out")
    assert _same_answers(proto, moved)


def test_a_batch_read_that_shapes_several_tensors_is_copied_to_each() -> None:
    """timm's CoaT (TorchScript): ``B = x.shape[0]`` read once at the top, ``reshape(B, ...)`` at the end of
    every stage. The one read tied every stage to the input (91 % of the FLOPs in one block); each reshape
    now reads the batch from its own data, and no node reads the input's shape any more."""
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
        helper.make_node("Relu", ["image"], ["stage1"]),
        helper.make_node("Reshape", ["stage1", "target"], ["flat1"]),
        helper.make_node("Sigmoid", ["flat1"], ["stage2"]),
        helper.make_node("Reshape", ["stage2", "target"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "shared_read", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"), _ints("axis0", [0]), _ints("minus_one", [-1])],
        # Typed as ONNX Runtime types an export (export/foreign.py): the batch is known past the first reshape.
        value_info=[helper.make_tensor_value_info("flat1", TensorProto.FLOAT, ["N", 192])])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    moved, count = rebase_batch_reads(proto)
    assert count == 2
    assert sorted(node.input[0] for node in moved.graph.node if node.op_type == "Shape") == ["stage1", "stage2"]
    order = [node.output[0] for node in moved.graph.node]
    reshapes = [node for node in moved.graph.node if node.op_type == "Reshape"]
    for reshape in reshapes:  # each after its own data's read, the two reads apart
        read = next(node for node in moved.graph.node if node.op_type == "Shape" and node.input[0] == reshape.input[0])
        assert order.index(reshape.input[0]) < order.index(read.output[0]) < order.index(reshape.output[0])
    assert order.index("flat1") < order.index(next(n.output[0] for n in moved.graph.node
                                                   if n.op_type == "Shape" and n.input[0] == "stage2"))
    assert _same_answers(proto, moved)
    assert simplified_if_same(proto, (1, 3))[1:] == (0, 2)
