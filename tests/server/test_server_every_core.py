"""A long run alone in the server takes every core; runs with company keep one thread each.

Sessions run ONNX Runtime on one intra-op thread, which serves many small requests best, but leaves a
lone client of a large model one core of the machine. So when a request is the only one in its
worker, its endpoint's runs are long and no other worker runs, its run goes to the graph's second
session with one thread per usable core (server/runtime.py ``on_every_core``, server/dataplane.py
``_spread``). These tests check that decision and that the answers do not change, never a timing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from server_harness import REPO_ROOT, ServerThread

from layerserve.server import composed, runtime, slots
from layerserve.server.busy_workers import WorkerBoard
from layerserve.server.settings import Settings, usable_cores

pytestmark = pytest.mark.skipif(usable_cores() < 2, reason="every core is one core here")

# The test model's runs take 10-50 ms on one core, depending on the machine: below the server's bound.
LONG_RUN_S = 0.002
CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ndynamic_batching { }\n'


def _long_cnn() -> onnx.ModelProto:
    """Two 3x3 convolutions at 112x112 (tens of milliseconds on one core), pooled into 10 logits."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "long_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weight("w1", 48, 3, 3, 3), weight("w2", 48, 48, 3, 3), weight("fc", 10, 48), weight("bias", 10)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def long_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long")
    (root / "long_cnn" / "1").mkdir(parents=True)
    onnx.save(_long_cnn(), str(root / "long_cnn" / "1" / "model.onnx"))
    (root / "long_cnn" / "config.pbtxt").write_text(CONFIG)
    return root


def _infer(client: triton.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("long_cnn", [tensor]).as_numpy("logits")


def test_a_lone_client_of_a_long_model_gets_every_core_with_the_same_answers(
    long_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spread: list[object] = []
    original = runtime.on_every_core

    def recording(fn, *args):
        spread.append(fn)
        return original(fn, *args)

    monkeypatch.setattr(runtime, "on_every_core", recording)
    monkeypatch.setattr(slots, "EVERY_CORE_RUN_S", LONG_RUN_S)
    x = np.random.default_rng(1).standard_normal((1, 3, 112, 112)).astype(np.float32)
    with ServerThread(Settings(models=long_repository, port=0, metrics_port=-1, workers=1)) as server, \
            triton.InferenceServerClient(server.address) as client:
        graph = server.running.dataplane.repository.models["long_cnn"]["1"].full
        first = _infer(client, x)  # unmeasured: one thread, and it measures the run long
        deadline = time.monotonic() + 60
        answers = []
        while graph._every_core is None and time.monotonic() < deadline:  # made in the background
            answers.append(_infer(client, x))
        assert graph._every_core is not None, "the every-core session was never made"
        assert graph._every_core.get_session_options().intra_op_num_threads == usable_cores()
        answers += [_infer(client, x) for _ in range(3)]
    # Every lone run after the first was marked for every core (before the session was made, it ran on its own).
    assert len(spread) == len(answers) >= 3
    for answer in answers:
        np.testing.assert_array_equal(answer, first)  # one thread or every core: the same bits


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_graph_whose_session_on_every_core_would_pack_too_much_keeps_one_thread(
    long_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the composed chain: one more session must not pack over composed.PACKABLE_MAX of weights in
    every worker (a VGG classifier: 276 MiB). Here the bound is set under the test model's classifier."""
    monkeypatch.setattr(slots, "EVERY_CORE_RUN_S", LONG_RUN_S)
    monkeypatch.setattr(composed, "PACKABLE_MAX", 1024)
    kept, logger = _Kept(), logging.getLogger("layerserve.server.runtime")
    logger.addHandler(kept)
    monkeypatch.setattr(logger, "level", logging.INFO)
    x = np.random.default_rng(2).standard_normal((1, 3, 112, 112)).astype(np.float32)
    try:
        with ServerThread(Settings(models=long_repository, port=0, metrics_port=-1, workers=1)) as server, \
                triton.InferenceServerClient(server.address) as client:
            graph = server.running.dataplane.repository.models["long_cnn"]["1"].full
            first = _infer(client, x)
            np.testing.assert_array_equal(_infer(client, x), first)  # spread: asks for the session
            assert graph._every_core_thread is not None
            graph._every_core_thread.join(60)
            np.testing.assert_array_equal(_infer(client, x), first)
            assert graph._every_core is None
    finally:
        logger.removeHandler(kept)
    [said] = [record for record in kept.records if "would pack a copy" in record.getMessage()]
    assert said.fields["graph"] == "model.onnx" and said.fields["packable_mib"] >= 0


def test_only_a_lone_long_run_with_every_other_worker_idle_is_spread(
    long_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision itself, on the server's DataPlane: alone in the worker, runs measured long, and no
    other worker running (the board); a second request in flight, or a busy worker, keeps one thread."""
    monkeypatch.setattr(slots, "EVERY_CORE_RUN_S", LONG_RUN_S)
    board = WorkerBoard(2, 2, multiprocessing.get_context("spawn"))
    settings = Settings(models=long_repository, port=0, metrics_port=-1, workers=1)
    with ServerThread(settings) as server, triton.InferenceServerClient(server.address) as client:
        plane = server.running.dataplane
        endpoint = plane.repository.endpoint("long_cnn")
        x = np.zeros((1, 3, 112, 112), np.float32)

        def fn(feeds):
            return feeds

        def spread_now(in_flight: int) -> bool:
            plane._in_flight += in_flight
            try:
                chosen = plane._spread(endpoint, fn)
            finally:
                plane._in_flight -= in_flight
            return isinstance(chosen, functools.partial) and chosen.func is runtime.on_every_core

        assert not spread_now(1)  # not run yet: not known to be long
        _infer(client, x)
        _infer(client, x)
        assert plane._run_slots(endpoint).worth_every_core
        assert spread_now(1)
        assert not spread_now(2)
        plane.board = board.for_worker(0)
        assert spread_now(1)
        other = board.for_worker(1)
        other.started()
        assert not spread_now(1)  # the other worker is running
        other.ended()
        assert not spread_now(1)  # ... or ran a moment ago
        time.sleep(0.1)
        assert spread_now(1)
        plane.board = None


def test_the_bound_keeps_short_runs_on_one_thread() -> None:
    """With the server's own bound, runs of a few milliseconds (where two threads measured 0.4-1.25x one)
    are never spread; runs of 100 ms (ResNet-50 at batch 1 on one core) are; fixed instances never."""
    from layerserve.server.slots import RunSlots

    short, long = RunSlots(), RunSlots()
    asyncio.run(_release_after(short, 0.004))
    asyncio.run(_release_after(long, 0.1))
    assert not short.worth_every_core and long.worth_every_core
    assert not RunSlots(fixed=1).worth_every_core


async def _release_after(run_slots, run_s: float) -> None:
    await run_slots.acquire()
    await run_slots.release(run_s)


def test_every_core_is_off_when_threads_or_instances_are_set() -> None:
    assert Settings().every_core_threads == usable_cores()
    assert Settings(intra_op_threads=2).every_core_threads == 0
    assert Settings(instances=1).every_core_threads == 0


def test_a_chain_given_every_core_runs_on_the_graphs_every_core_sessions(tmp_path: Path) -> None:
    """Small-batch chains run through bound chains (IO binding on each graph's own session); a chain run
    given every core must not, or the composed chain of a ResNet-50 kept one thread (served p50 1.6-1.7x
    the full graph's, which got every core)."""
    from layerserve.server import repository

    options = runtime.RuntimeOptions(optimized_dir=tmp_path, every_core_threads=2)
    model = repository.load_version("digits_cnn", REPO_ROOT / "models" / "digits_cnn" / "1", options)
    whole = model.block_chain.whole
    assert whole is not None
    spec = whole.inputs[0]
    shape = [1 if dim < 0 else dim for dim in spec.shape]
    x = {spec.name: np.random.default_rng(3).standard_normal(shape).astype(np.float32)}
    plain = model.run_chain(x)
    assert whole._every_core_thread is None  # a plain run never asks for it
    spread = runtime.on_every_core(model.run_chain, x)
    whole._every_core_thread.join(60)
    again = runtime.on_every_core(model.run_chain, x)
    assert whole._every_core is not None
    for answer in (spread, again):
        assert answer.keys() == plain.keys()
        for name, array in plain.items():
            np.testing.assert_array_equal(answer[name], array)
