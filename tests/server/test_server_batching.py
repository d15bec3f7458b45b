"""Dynamic batching: the batcher alone (transport-free) and 32 concurrent tritonclient clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from server_harness import ServerThread

from layerserve.server.batching import Batcher, BatchReport
from layerserve.server.errors import QueueFull
from layerserve.server.settings import Settings


def test_batcher_merges_respects_max_and_splits_rows_back() -> None:
    seen: list[int] = []

    def run(inputs):
        seen.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2.0, "n": np.repeat(len(inputs["x"]), len(inputs["x"]))}

    reports: list[BatchReport] = []

    async def main() -> list[dict[str, np.ndarray]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_size=8, max_queue_delay_us=0, max_queue_size=100,
                              on_batch=reports.append, label="t")
            requests = [np.full((rows, 3), float(i), np.float32) for i, rows in enumerate([3, 2, 4, 1, 5, 2, 1])]
            answers = await asyncio.gather(*(batcher.infer({"x": r}, len(r)) for r in requests))
            await batcher.stop()
            return list(zip(requests, answers, strict=True))

    for request, answer in asyncio.run(main()):
        np.testing.assert_array_equal(answer["y"], request * 2.0)
    # Requests queued together are merged in order, never split, never over 8 rows: 3+2 | 4+1 | 5+2+1.
    assert seen == [5, 5, 8]
    assert [r.requests for r in reports] == [2, 2, 3]


def test_batcher_bounds_its_queue_and_propagates_errors() -> None:
    def run(inputs):
        raise RuntimeError("model exploded")

    async def main() -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_size=4, max_queue_delay_us=0, max_queue_size=2, label="t")
            x = np.zeros((1, 1), np.float32)
            results = await asyncio.gather(*(batcher.infer({"x": x}, 1) for _ in range(4)), return_exceptions=True)
            await batcher.stop()
            return results

    results = asyncio.run(main())
    assert sum(isinstance(r, QueueFull) for r in results) == 2
    assert sum(isinstance(r, RuntimeError) and str(r) == "model exploded" for r in results) == 2


@pytest.fixture(scope="module")
def one_instance_server(tiny_repository: Path) -> Iterator[ServerThread]:
    """One fixed instance per endpoint, so concurrent requests queue behind a busy one and merge. (With auto
    instances a request the server finds alone may run at once on the event loop (test_a_lone_short_...); 32
    client threads sharing this process's GIL with the server then often arrive one at a time.)"""
    settings = Settings(models=tiny_repository, port=0, metrics_port=0, max_message_bytes=1 << 20, instances=1)
    with ServerThread(settings) as running:
        yield running


@pytest.mark.parametrize("model", ["tiny_cnn", "tiny_cnn.chain", "tiny_cnn.01_stage1"])
def test_32_concurrent_clients_get_exactly_their_rows(one_instance_server, tiny_repository: Path, model: str) -> None:
    server = one_instance_server
    folder = tiny_repository / "tiny_cnn" / "2"
    file, name, shape = {
        "tiny_cnn": ("model.onnx", "x", (1, 8, 8)),
        "tiny_cnn.chain": ("model.onnx", "x", (1, 8, 8)),
        "tiny_cnn.01_stage1": ("blocks/01_stage1.onnx", "h1", (4, 8, 8)),
    }[model]
    session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    clients, rounds = 32, 3
    barrier = threading.Barrier(clients)
    with triton.InferenceServerClient(server.address) as probe:
        before = probe.get_inference_statistics(model, "2").model_stats[0]

    def client(index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(index)
        pairs = []
        with triton.InferenceServerClient(server.address) as connection:
            barrier.wait()
            for _ in range(rounds):
                x = rng.standard_normal((1 + index % 3, *shape)).astype(np.float32)
                tensor = triton.InferInput(name, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = connection.infer(model, [tensor])
                pairs.append((x, result.as_numpy(result.get_response().outputs[0].name)))
        return pairs

    with ThreadPoolExecutor(clients) as pool:
        everything = [pair for pairs in pool.map(client, range(clients)) for pair in pairs]
    for x, got in everything:
        (want,) = session.run(None, {name: x})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with triton.InferenceServerClient(server.address) as probe:
        after = probe.get_inference_statistics(model, "2").model_stats[0]
    requests = clients * rounds
    assert after.inference_stats.success.count - before.inference_stats.success.count == requests
    assert after.inference_count - before.inference_count == sum(len(x) for x, _ in everything)
    # Merged: fewer runs than requests (the fixture's manifests ask for a 2 ms queue delay).
    assert after.execution_count - before.execution_count < requests


def test_an_idle_server_never_holds_a_lone_request_for_the_queue_delay() -> None:
    """The batcher's decision, not a clock: a lone request on a free instance is not delayable, whatever the
    delay; requests that queue behind a busy instance are, and are merged."""
    release = threading.Event()
    seen: list[int] = []

    def run(inputs):
        seen.append(len(inputs["x"]))
        release.wait(10)
        return {"y": inputs["x"] + 1.0}

    reports: list[BatchReport] = []

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            # A 60 s delay: were a lone request held for it, the test would hang, not pass.
            batcher = Batcher(run, pool, max_batch_size=64, max_queue_delay_us=60_000_000, max_queue_size=100,
                              on_batch=reports.append, label="t")
            one = np.zeros((1, 2), np.float32)
            release.set()
            await batcher.infer({"x": one}, 1)  # idle server, lone request
            release.clear()
            busy = asyncio.ensure_future(batcher.infer({"x": one}, 1))  # occupies the only instance
            await asyncio.sleep(0.05)
            waiting = [asyncio.ensure_future(batcher.infer({"x": one}, 1)) for _ in range(3)]
            full = asyncio.ensure_future(batcher.infer({"x": np.zeros((64, 2), np.float32)}, 64))
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(busy, *waiting, full)
            await batcher.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert [r.delayable for r in reports[:2]] == [False, False]
    # The three that queued behind the busy instance formed a batch under load: delayable, merged,
    # and the 64-row request that arrived after them filled a batch by itself and ran as it was.
    assert reports[2].delayable and reports[2].requests == 3
    assert seen == [1, 1, 3, 64]


def test_run_slots_follow_the_runs() -> None:
    """Auto instances: one run at a time while runs are short, up to ``most`` once they are long; fixed stays."""
    from layerserve.server.slots import LONG_RUN_S, RunSlots

    async def main() -> list[int]:
        slots, seen = RunSlots(None, most=3), []
        for run_s in (LONG_RUN_S / 10, LONG_RUN_S / 10, LONG_RUN_S * 50, LONG_RUN_S * 50):
            await slots.acquire()
            seen.append(slots.allowed)
            await slots.release(run_s)
        seen.append(slots.allowed)
        fixed = RunSlots(2, most=8)
        await fixed.acquire()
        await fixed.release(10.0)
        seen.append(fixed.allowed)
        return seen

    # short, short: 1; one long run lifts the mean (0.2 x 100 ms + 0.8 x 0.2 ms > 2 ms): 3
    assert asyncio.run(main()) == [1, 1, 1, 3, 3, 2]


def test_a_short_run_stays_short_on_a_busy_event_loop() -> None:
    """The slots see how long the run took where it ran, not how long a busy loop took to notice its result:
    a 0.1 ms run whose result waits behind 20 ms of other loop work keeps one run at a time (merging)."""
    from layerserve.server.slots import RunSlots

    def run(inputs):
        return {"y": inputs["x"] + 1.0}

    async def busy_loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            threading.Event().wait(0.02)  # the loop busy with other requests' work, blocking it
            await asyncio.sleep(0)

    async def main() -> int:
        slots = RunSlots(None, most=4)
        with ThreadPoolExecutor(4) as pool:
            batcher = Batcher(run, pool, max_batch_size=64, max_queue_delay_us=0, max_queue_size=100,
                              instances=slots, label="t")
            stop = asyncio.Event()
            noise = asyncio.ensure_future(busy_loop(stop))
            one = np.zeros((1, 2), np.float32)
            for _ in range(5):
                await batcher.infer({"x": one}, 1)
            stop.set()
            await noise
            await batcher.stop()
        return slots.allowed  # the decision under test: taken for long runs, it would be 4

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 1


def test_a_lone_short_request_runs_on_the_event_loop_and_concurrent_ones_still_merge() -> None:
    """The decision, by thread: alone (the server says so) with short measured runs, a request runs on the
    loop's own thread; unmeasured runs, or requests that are not alone, go to the worker threads and merge."""
    from layerserve.server.slots import RunSlots

    threads: list[int] = []
    rows_seen: list[int] = []

    def run(inputs):
        threads.append(threading.get_ident())
        rows_seen.append(len(inputs["x"]))
        return {"y": inputs["x"] + 1.0}

    alone = [True]

    async def main() -> int:
        # Thresholds no run can reach: every measured run is short, whatever the machine's speed, so the
        # decision depends only on whether runs were measured and whether the request is alone.
        slots = RunSlots(None, most=2, long_run_s=60.0, loop_run_s=60.0)
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_size=64, max_queue_delay_us=0, max_queue_size=100,
                              instances=slots, label="t", alone=lambda: alone[0])
            one = np.zeros((1, 2), np.float32)
            await batcher.infer({"x": one}, 1)  # runs not measured yet: a thread
            for _ in range(3):
                await batcher.infer({"x": one}, 1)  # measured short, alone: the loop
            alone[0] = False
            answers = await asyncio.gather(*(batcher.infer({"x": one + i}, 1) for i in range(4)))
            for i, answer in enumerate(answers):
                np.testing.assert_array_equal(answer["y"], one + i + 1.0)
            await batcher.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(asyncio.wait_for(main(), 30))
    assert [t == loop_thread for t in threads[:4]] == [False, True, True, True]
    # Not alone: worker threads, and the four queued together ran as one batch.
    assert all(t != loop_thread for t in threads[4:])
    assert rows_seen[4:] == [4]


def test_an_idle_batcher_keeps_no_inputs_of_the_last_batch() -> None:
    """Once answered, a batch's inputs belong to nobody: kept between requests, an idle worker held the last
    ResNet-50 batch of 64 (37 MiB) until the next request came."""
    import weakref

    def run(inputs):
        return {"y": inputs["x"] + 1.0}

    async def main() -> bool:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_size=64, max_queue_delay_us=0, max_queue_size=100, label="t")
            x = np.zeros((4, 2), np.float32)
            sent = weakref.ref(x)
            answer = await batcher.infer({"x": x}, 4)
            del x, answer
            for _ in range(5):
                await asyncio.sleep(0)  # the run's task and its callbacks finish
            alive = sent() is not None
            await batcher.stop()
        return alive

    assert not asyncio.run(asyncio.wait_for(main(), 30))


def test_with_every_core_taken_by_the_other_workers_runs_go_on_the_loop_one_at_a_time() -> None:
    """The decision, by thread: while the other worker runs (the board says so; two cores, two workers), a
    measured run goes on the loop's own thread and a long-running endpoint allows one run; once the other
    worker has been idle a moment, runs go to the worker threads again and long runs may go side by side."""
    import multiprocessing

    from layerserve.server.busy_workers import BUSY_AFTER_S, WorkerBoard
    from layerserve.server.slots import RunSlots

    board = WorkerBoard(2, 2, multiprocessing.get_context("spawn"))
    mine, other = board.for_worker(0), board.for_worker(1)
    threads: list[int] = []

    def run(inputs):
        threads.append(threading.get_ident())
        return {"y": inputs["x"] + 1.0}

    async def main() -> tuple[int, list[int]]:
        # Every measured run counts as long (so up to ``most`` at once) and as short enough for the loop.
        slots = RunSlots(None, most=2, long_run_s=0.0, board=mine)
        allowed = []
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(run, pool, max_batch_size=64, max_queue_delay_us=0, max_queue_size=100,
                              instances=slots, label="t")
            one = np.zeros((1, 2), np.float32)
            await batcher.infer({"x": one}, 1)  # not measured yet: a thread
            other.started()
            allowed.append(slots.allowed)
            for _ in range(2):
                np.testing.assert_array_equal((await batcher.infer({"x": one}, 1))["y"], one + 1.0)
            other.ended()
            allowed.append(slots.allowed)  # it ran a moment ago: under load, the gap before its next run
            await asyncio.sleep(BUSY_AFTER_S * 2)
            allowed.append(slots.allowed)
            await batcher.infer({"x": one}, 1)
            await batcher.stop()
        return threading.get_ident(), allowed

    loop_thread, allowed = asyncio.run(asyncio.wait_for(main(), 30))
    assert [t == loop_thread for t in threads] == [False, True, True, False]
    assert allowed == [1, 1, 2]
    assert list(board._counts) == [0, 0]  # every run that started ended


def test_stopping_while_a_batch_forms_gives_its_slot_back_to_the_board() -> None:
    """A batch forming under load holds a run slot while it waits for more requests; stopping then (at
    shutdown) gives the slot back, so the board does not count a run that never started."""
    import multiprocessing

    from layerserve.server.busy_workers import WorkerBoard
    from layerserve.server.slots import RunSlots

    board = WorkerBoard(2, 2, multiprocessing.get_context("spawn"))
    release_first = threading.Event()

    def run(inputs):
        if inputs["x"][0, 0] == 0.0:
            release_first.wait(10)
        return {"y": inputs["x"]}

    async def main() -> list[int]:
        slots = RunSlots(1, board=board.for_worker(0))
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_size=8, max_queue_delay_us=10_000_000, max_queue_size=10,
                              instances=slots, label="t")
            first = asyncio.ensure_future(batcher.infer({"x": np.zeros((1, 1), np.float32)}, 1))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 1), np.float32)}, 1))
            await asyncio.sleep(0.05)  # queued behind the first run: under load, so it will wait for company
            release_first.set()
            await first
            await asyncio.sleep(0.05)  # the second now holds the slot, waiting out its queue delay
            held = list(board._counts)
            await batcher.stop()
            second.cancel()
        return [*held, *board._counts]

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [1, 0, 0, 0]


def test_the_worker_board_is_shared_by_spawned_processes() -> None:
    """A worker sees another process's runs: the board lives in memory both map, not in a copy each."""
    import multiprocessing

    from layerserve.server.busy_workers import BUSY_AFTER_S, WorkerBoard

    context = multiprocessing.get_context("spawn")
    board = WorkerBoard(2, 2, context)
    mine = board.for_worker(0)
    started, finish = context.Event(), context.Event()
    worker = context.Process(target=_run_until, args=(board.for_worker(1), started, finish))
    worker.start()
    try:
        assert started.wait(60) and mine.cores_taken()
    finally:
        finish.set()
        worker.join(30)
    assert worker.exitcode == 0 and board._ended[1] > 0  # when its run ended, written where this process reads
    time.sleep(BUSY_AFTER_S * 2)
    assert not mine.cores_taken()
    # One core, or workers alone: nothing to contend with, so cores are never taken.
    lone = WorkerBoard(1, 2, context)
    assert not lone.cores_taken()
    one_core = WorkerBoard(2, 1, context)
    one_core.for_worker(1).started()
    assert not one_core.cores_taken()


def _run_until(board, started, finish) -> None:
    board.started()
    started.set()
    finish.wait(30)
    board.ended()
