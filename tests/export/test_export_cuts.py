"""Single-tensor cut finding and the refusals for tensors that are not cuts."""

from __future__ import annotations

import branching_graph
import pytest

from layerserve.export.cuts import crossing_tensors, require_cuts, single_tensor_cuts
from layerserve.export.graph import SplitError, load_model


def test_finds_every_single_tensor_cut_of_a_branching_graph() -> None:
    model = load_model(branching_graph.branching_model())
    assert [v.name for v in single_tensor_cuts(model)] == branching_graph.CUTS


@pytest.mark.parametrize("name", sorted(branching_graph.NOT_CUTS))
def test_crossing_tensors_name_the_branch_beside(name: str) -> None:
    model = load_model(branching_graph.branching_model())
    assert crossing_tensors(model, model.value(name)) == branching_graph.NOT_CUTS[name]


@pytest.mark.parametrize("name", branching_graph.CUTS)
def test_cuts_have_no_crossing_tensors(name: str) -> None:
    model = load_model(branching_graph.branching_model())
    assert crossing_tensors(model, model.value(name)) == []


def test_requested_non_cut_is_refused_naming_the_crossing_tensor() -> None:
    model = load_model(branching_graph.branching_model())
    with pytest.raises(SplitError, match=r"'f2' is not a single-tensor cut: 'e' also crosses it"):
        require_cuts(model, ["d", "f2"])


def test_unknown_and_constant_tensors_are_refused() -> None:
    model = load_model(branching_graph.branching_model())
    with pytest.raises(SplitError, match="no tensor named 'nope'"):
        require_cuts(model, ["nope"])
    with pytest.raises(SplitError, match="'K' does not depend on the graph input"):
        require_cuts(model, ["K"])
    with pytest.raises(SplitError, match="graph input or output"):
        require_cuts(model, ["y"])


def test_requested_cuts_come_back_in_graph_order() -> None:
    model = load_model(branching_graph.branching_model())
    assert [v.name for v in require_cuts(model, ["g", "a", "e"])] == ["a", "e", "g"]
