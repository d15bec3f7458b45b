"""Chains at small batches run with their tensors bound in advance, and answer exactly as plain chains."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from layerserve.server import bound_chains, chains, repository, runtime

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits_cnn" / "1"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> repository.ModelVersion:
    optimized = tmp_path_factory.mktemp("optimized")  # native seams too, as the server loads them
    loaded = repository.load_version("digits_cnn", DIGITS, runtime.RuntimeOptions("cpu", optimized_dir=optimized))
    assert loaded.ready and loaded.block_chain.native, loaded.reason
    return loaded


def _plain(model: repository.ModelVersion, x: np.ndarray, start: int = 0, stop: int | None = None, keep=()):
    chain = model.block_chain
    graphs = chain.graphs(start, len(chain.blocks) if stop is None else stop, keep)
    outputs, kept = runtime.chain(graphs, {graphs[0].inputs[0].name: x}, [k - start for k in keep])
    return outputs, {start + k: v for k, v in kept.items()}


@pytest.mark.parametrize(("rows", "keep"), [(1, ()), (3, (1,)), (8, (0, 2, 3)), (9, ())])
def test_a_bound_chain_answers_bit_for_bit_as_the_plain_one(model, rows: int, keep: tuple[int, ...]) -> None:
    rng = np.random.default_rng(rows)
    for _ in range(3):  # the first call binds, the next ones reuse the buffers with new inputs
        x = rng.standard_normal((rows, 1, 32, 32)).astype(np.float32)
        got, got_kept = model.block_chain.run({"x": x}, keep=keep)
        want, want_kept = _plain(model, x, keep=keep)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        assert got_kept.keys() == want_kept.keys()
        if rows <= bound_chains.MAX_ROWS:  # the served chain, native seams and all, ran bound
            assert isinstance(list(model.block_chain.bound._local.cache.values())[-1], bound_chains.BoundChain)
        for index in want_kept:
            assert all(np.array_equal(got_kept[index][k], want_kept[index][k]) for k in want_kept[index])


def test_answers_are_the_callers_not_the_reused_buffers(model) -> None:
    first, _ = model.block_chain.run({"x": np.ones((1, 1, 32, 32), np.float32)})
    before = first["logits"].copy()
    model.block_chain.run({"x": np.zeros((1, 1, 32, 32), np.float32)})
    assert np.array_equal(first["logits"], before)


def test_a_thread_keeps_a_few_shapes_and_large_batches_run_plain(model) -> None:
    chain = chains.BlockChain(model.blocks)  # its own, empty cache
    for rows in range(1, bound_chains.MAX_ROWS + 1):
        chain.run({"x": np.zeros((rows, 1, 32, 32), np.float32)})
    assert len(chain.bound._local.cache) == bound_chains.SHAPES_PER_THREAD
    assert all(isinstance(bound, bound_chains.BoundChain) for bound in chain.bound._local.cache.values())
    assert not bound_chains.small_batch({"x": np.zeros((bound_chains.MAX_ROWS + 1, 1, 32, 32))})


def test_threads_running_at_once_get_their_own_answers(model) -> None:
    inputs = [np.random.default_rng(i).standard_normal((2, 1, 32, 32)).astype(np.float32) for i in range(4)]
    wants = [_plain(model, x)[0]["logits"] for x in inputs]
    failures: list[str] = []

    def work(index: int) -> None:
        for _ in range(200):
            got = model.block_chain.run({"x": inputs[index]})[0]["logits"]
            if not np.array_equal(got, wants[index]):
                failures.append(f"thread {index}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_a_shape_whose_tensors_exceed_the_budget_runs_plain(model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bound_chains, "MAX_BYTES", 1024)
    chain = chains.BlockChain(model.blocks)
    x = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)
    for _ in range(2):
        got = chain.run({"x": x})[0]["logits"]
        assert np.array_equal(got, _plain(model, x)[0]["logits"])
    assert list(chain.bound._local.cache.values()) == [None]


def test_outputs_sized_by_the_data_run_plain(tmp_path: Path) -> None:
    """A block whose output length follows the values (NonZero, as in a detector's NMS) cannot be bound."""
    import onnx
    from onnx import TensorProto, helper

    def save(name: str, node: onnx.NodeProto, x: list, y: list, y_type: int = TensorProto.FLOAT) -> Path:
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, x)],
                                  [helper.make_tensor_value_info(node.output[0], y_type, y)])
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        return path

    relu = save("relu", helper.make_node("Relu", ["x"], ["h"]), ["N", 4], ["N", 4])
    nonzero = save("nonzero", helper.make_node("NonZero", ["h"], ["where"]), ["N", 4], [2, "K"], TensorProto.INT64)
    graphs = [runtime.Graph(path, runtime.RuntimeOptions()) for path in (relu, nonzero)]
    chain = chains.BlockChain(graphs)
    for x in ([[1, -1, 2, 0]], [[1, 2, 3, 4]], [[-1, -1, -1, 5]]):
        got = chain.run({"x": np.array(x, np.float32)})[0]["where"]
        assert np.array_equal(got, np.array(np.nonzero(np.maximum(np.array(x), 0))))


def test_a_bound_run_that_fails_is_answered_plain_and_the_shape_stays_plain(model, monkeypatch) -> None:
    chain = chains.BlockChain(model.blocks)
    x = np.random.default_rng(4).standard_normal((1, 1, 32, 32)).astype(np.float32)
    chain.run({"x": x})  # binds this shape

    def refuse(self, feeds, keep):
        raise RuntimeError("ONNX Runtime refused the binding")

    monkeypatch.setattr(bound_chains.BoundChain, "run", refuse)
    assert np.array_equal(chain.run({"x": x})[0]["logits"], _plain(model, x)[0]["logits"])
    assert list(chain.bound._local.cache.values()) == [None]
