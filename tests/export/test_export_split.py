"""Splitting the hand-built branching graph: every cut, explicit cuts, refusals, the chain check."""

from __future__ import annotations

from pathlib import Path

import branching_graph
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from layerserve.export.extract import extract
from layerserve.export.graph import SplitError, load_model
from layerserve.export.parity import ChainMismatch, chain_check, run_chain
from layerserve.export.split import split

X = np.random.default_rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)


def test_split_at_every_cut_reproduces_the_graph() -> None:
    model = load_model(branching_graph.branching_model())
    result = split(model, "cut")
    assert result.cuts == branching_graph.CUTS
    assert len(result.blocks) == len(branching_graph.CUTS) + 1
    report = chain_check(model.proto, result, X)
    assert report.max_abs_diff <= 1e-5
    (chained,) = run_chain(result, X)[-1]
    np.testing.assert_allclose(chained, branching_graph.reference(X), atol=1e-5)


def test_blocks_are_standalone_and_hold_only_what_they_use() -> None:
    result = split(load_model(branching_graph.branching_model()), "cut")
    for block in result.blocks:
        onnx.checker.check_model(block.proto, full_check=True)
        graph = block.proto.graph
        used = {name for node in graph.node for name in node.input}
        assert {t.name for t in graph.initializer} <= used
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch", (block.name, value.name)
    by_name = {b.source_outputs[0]: b.proto.graph for b in result.blocks}
    # The shared initializer W lands in both blocks that read it, the node-made K in both of its blocks.
    assert [t.name for t in by_name["d"].initializer] == ["W"]
    assert [t.name for t in by_name["g"].initializer] == ["W"]
    assert [n.op_type for n in by_name["e"].node] == ["Constant", "Add"]
    assert [n.op_type for n in by_name["h"].node] == ["Constant", "Mul"]


def test_boundary_tensors_are_renamed_after_the_block_that_makes_them() -> None:
    result = split(load_model(branching_graph.branching_model()), "cut")
    assert result.blocks[0].inputs == ["x"]
    assert result.blocks[-1].outputs == ["y"]
    for before, after in zip(result.blocks, result.blocks[1:], strict=False):
        assert before.outputs == [f"{before.name}_out"] == after.inputs
        assert [v.name for v in after.proto.graph.input] == after.inputs


@pytest.mark.parametrize("cut", branching_graph.CUTS)
def test_split_at_each_single_cut(cut: str) -> None:
    model = load_model(branching_graph.branching_model())
    result = split(model, at=[cut])
    assert [b.source_outputs for b in result.blocks] == [[cut], ["y"]]
    assert result.granularity == "at"
    assert chain_check(model.proto, result, X).max_abs_diff <= 1e-5


def test_split_refuses_a_non_cut_naming_the_crossing_tensors() -> None:
    with pytest.raises(SplitError, match=r"'c' is not a single-tensor cut: 'a' also crosses it"):
        split(load_model(branching_graph.branching_model()), at=["d", "c"])


def test_extract_refuses_inputs_that_do_not_bound_the_subgraph() -> None:
    model = load_model(branching_graph.branching_model())
    with pytest.raises(SplitError, match=r"do not bound .* also needed from outside: 'b'"):
        extract(model, ["c"], ["d"], "leaky")


def test_refuses_a_graph_with_two_inputs() -> None:
    with pytest.raises(SplitError, match=r"2 inputs \('x', 'x2'\)"):
        load_model(branching_graph.branching_model(two_inputs=True))


def test_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a protobuf \xff\xfe at all")
    with pytest.raises(SplitError, match="is not an ONNX model"):
        load_model(path)


def test_chain_check_names_the_first_block_that_diverges() -> None:
    model = load_model(branching_graph.branching_model())
    result = split(model, "cut")
    tampered = result.blocks[2].proto.graph  # the block reading `d`, holding the node-made constant K
    constant = next(n for n in tampered.node if n.op_type == "Constant")
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([0.51], np.float32), "K_value"))
    with pytest.raises(ChainMismatch, match=f"block '{result.blocks[2].name}' is the first to diverge"):
        chain_check(model.proto, result, X)


def test_refuses_control_flow() -> None:
    model = branching_graph.branching_model()
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["a"], ["z"])], "then", [],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
    )
    condition = onnx.helper.make_node("Constant", [], ["cond"], value=onnx.helper.make_tensor("c", 9, [], [True]))
    model.graph.node.extend([condition, onnx.helper.make_node("If", ["cond"], ["unused"], then_branch=branch,
                                                              else_branch=branch)])
    with pytest.raises(SplitError, match=r"control-flow nodes \(If\)"):
        load_model(model)


def test_layer_granularity_without_scopes_or_weighted_ops_uses_every_cut() -> None:
    model = load_model(branching_graph.branching_model())
    assert split(model, "layer").cuts == branching_graph.CUTS
