"""The benchmark suite's pieces against a real server: counts and structure only, never timings."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import report, run
from bench.inprocess import InProcess
from bench.machine import CpuTicks, cpu_ticks, machine_info, process_cpu_s, stolen_share
from bench.payloads import COMMITTED, infer_request, manifest, model_input
from bench.served import client_chain, served
from layerserve.server.launcher import ServerProcess

MODEL = "digits_cnn"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(COMMITTED, ["--log-level", "WARNING", *run.MAIN_FLAGS]) as running:
        yield running


@pytest.fixture(scope="module")
def inprocess() -> InProcess:
    return InProcess(COMMITTED)


def test_loadgen_against_a_real_server(server: ServerProcess) -> None:
    _, spec = manifest(COMMITTED, MODEL)
    x = model_input(spec, 4)
    cell = served(server.address, MODEL, x, 4, 0.5, 0.1, server.process.pid)
    result = cell.result
    assert result.requests > 0 and result.errors == 0
    assert result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.response_bytes > 4 * 10 * 4  # 4 rows of 10 FP32 logits, plus the message around them
    assert cell.bytes_moved == len(infer_request(MODEL, x).SerializeToString()) + result.response_bytes
    assert result.client_cpu_s > 0 and cell.server_cpu_s > 0


def test_unknown_model_counts_errors_not_latencies(server: ServerProcess) -> None:
    _, spec = manifest(COMMITTED, MODEL)
    with pytest.raises(Exception, match="NOT_FOUND"):  # loadgen's connect call already fails
        served(server.address, "no_such_model", model_input(spec, 1), 1, 0.2, 0.0)


def test_client_chain_moves_the_activations(server: ServerProcess, inprocess: InProcess) -> None:
    _, spec = manifest(COMMITTED, MODEL)
    x = model_input(spec, 2)
    blocks = [(b.name, [s.name for s in b.inputs]) for b in inprocess.blocks(MODEL)]
    client = client_chain(server.address, blocks, x, 0.3, 0.0)
    chain = served(server.address, f"{MODEL}.chain", x, 1, 0.3, 0.0)
    assert client.result.requests > 0 and client.result.errors == 0
    # Every block boundary crosses the wire twice; the server chain sends the input and gets logits.
    activations = sum(a.nbytes for feeds in inprocess.block_inputs(MODEL, x)[1:] for a in feeds.values())
    assert client.bytes_moved > chain.bytes_moved + 2 * activations


def test_inprocess_runs_the_server_endpoints(inprocess: InProcess) -> None:
    _, spec = manifest(COMMITTED, MODEL)
    x = model_input(spec, 3)
    times = inprocess.time_runs(f"{MODEL}.chain", x, 0.0, min_runs=5)
    assert len(times) >= 5 and all(t > 0 for t in times)
    feeds = inprocess.block_inputs(MODEL, x)
    assert len(feeds) == len(inprocess.blocks(MODEL))
    assert all(next(iter(f.values())).shape[0] == 3 for f in feeds)


def test_one_tiny_suite_run_writes_the_report(tmp_path: Path) -> None:
    plan = run.Plan(batches=(1,), cell_s={1: 0.2}, warmup_s={1: 0.05}, min_runs={1: 3},
                    client_chain_batches=(1,), sweep_s=0.2, compare_s=0.2)
    data = run.measure_model(MODEL, plan, repeats=1, kserve=False, profile=False, out=tmp_path)
    results = {"machine": machine_info(), "repeats": 1, "quick": True, "served_flags": run.MAIN_FLAGS,
               "models": {MODEL: data}, "wall_s": 0.0}
    summary = report.write(results, tmp_path)
    for records in data["cells"].values():
        for record in records:
            assert record.get("errors", 0) == 0 and (record.get("requests") or record.get("runs")) > 0
    assert set(summary["models"][MODEL]["served_vs_inprocess"]) == {"full/b1", "block/b1", "chain/b1"}
    assert sorted(summary["models"][MODEL]["sweep"]) == run.SWEEP
    goals = {g["goal"]: g for g in summary["goals"]}
    assert goals["per-request overhead at batch 1 <= 300 us p50"]["measured"] is not None
    text = (tmp_path / "results.md").read_text()
    assert "## Goals" in text and "### Concurrency sweep" in text
    assert (tmp_path / "latency.png").stat().st_size > 0 and (tmp_path / "throughput.png").stat().st_size > 0


def test_machine_info_and_process_cpu() -> None:
    info = machine_info()
    assert info["logical_cores"] and info["versions"]["onnxruntime"] != "not installed"
    import os

    assert process_cpu_s(os.getpid()) > 0


def test_stolen_share_reads_the_hypervisors_part_of_the_machines_cpu_time() -> None:
    assert stolen_share(CpuTicks(steal=10, total=1000), CpuTicks(steal=40, total=1200)) == 0.15
    assert math.isnan(stolen_share(CpuTicks(5, 500), CpuTicks(5, 500)))  # no time passed: no share to give
    before = cpu_ticks()
    sum(i * i for i in range(300_000))
    after = cpu_ticks()
    assert after.total >= before.total > 0 and after.steal >= before.steal >= 0


@pytest.mark.slow
def test_foreign_bench_splits_both_exports_and_compares_served_with_in_process(tmp_path: Path) -> None:
    from bench import foreign

    out = tmp_path / "foreign"
    assert foreign.main(["--model", "digits_cnn", "--repeats", "1", "--seconds", "0.3", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["split_s"]) == {"dynamo", "torchscript"}
    assert all(cell["median"] > 0 for cell in report["split_s"].values())
    assert any(note.startswith("batch made dynamic") for note in report["notes"]["torchscript"])
    assert set(report["served_over_inprocess"]) == {"b1_c1", "b1_c2", "b16_c1", "b16_c2"}
    assert all(cell["median"] > 0 for cell in report["served_over_inprocess"].values())


@pytest.mark.slow
def test_grid_measures_every_cell_with_fresh_servers_each_repeat_in_alternating_order(monkeypatch) -> None:
    """Every cell for the defaults, a variant, the floor and the transport alone. A repeat samples a server start too: new
    processes every repeat, measured in the opposite order every other repeat (so none always goes first)."""
    from bench import grid

    pids: list[int] = []
    order: list[str] = []
    served = grid.served

    def recording(address, model, inputs, concurrency, duration, warmup, server_pid=None):
        pids.append(server_pid)
        return served(address, model, inputs, concurrency, duration, warmup, server_pid)

    monkeypatch.setattr(grid, "served", recording)
    monkeypatch.setattr(grid, "log", lambda line: order.append(line.split(" b1 c1 ")[0].strip())
                        if " b1 c1 p50 " in line else None)
    found = grid.measure("digits_cnn", 2, 0.2, {"one instance": ["--instances", "1"]}, kserve=False)
    labels = ["layerserve (defaults)", "layerserve (one instance)", grid.FLOOR, grid.TRANSPORT]
    assert order == labels + labels[::-1]
    starts = pids[::3]  # each server's three cells share its pid: c1, c16, b64
    assert len(starts) == 8 and len(set(starts)) == 8, pids
    assert set(found["cells"]) == set(labels)
    for cells in found["cells"].values():
        assert set(cells) == set(grid.CELLS) and all(len(values) == 2 and min(values) > 0 for values in cells.values())
    assert len(found["inprocess"]["b1"]) == 2 and min(found["inprocess"]["b1"]) > 0
    assert set(found["chain_over_full"]) == set(labels[:2])
    assert all(len(by_batch["b64"]) == 2 and min(by_batch["b64"]) > 0 for by_batch in found["chain_over_full"].values())
    assert set(found["stolen"]) == {grid.INPROCESS, *labels}
    assert set(found["stolen"][grid.INPROCESS]) == {"b1", "b64"}
    assert all(set(found["stolen"][label]) == set(grid.CELLS) for label in labels)
    assert all(len(shares) == 2 and all(0 <= share <= 1 for share in shares)
               for by_cell in found["stolen"].values() for shares in by_cell.values())
    ceilings = grid.transport_ceilings(found)
    assert set(ceilings) == {"one_process_8_threads", "b64_c4"}
    assert all(len(values) == 2 and min(values) > 0 for values in ceilings.values())
    assert max(ceilings["b64_c4"]) < 1  # T / (T + P)
    text = grid.markdown({"models": {"digits_cnn": found}})
    assert "| layerserve (defaults) |" in text and "CPU time the hypervisor took" in text
    assert "What the transport alone leaves of in-process throughput" in text


@pytest.mark.slow
def test_memory_row_compares_the_server_with_one_ort_process() -> None:
    from bench import memory

    report = memory.measure(COMMITTED, "digits_cnn", 0.3, settle_s=0.5)
    assert report["ort_process_mib"]["adds"] > 0 and report["server_mib"]["idle"] > report["server_mib"]["empty"]
    assert report["server_mib"]["peak"] >= report["server_mib"]["idle"] > 0
    by_process = report["server_mib"]["settled_by_process"]
    assert len(by_process) >= 2 and sum(by_process.values()) == report["server_mib"]["settled"]  # parent, workers
    assert isinstance(report["server_mib"]["janitor_trims"], list)
    assert "server / ORT:" in memory.markdown(report)


def test_python_overhead_runs_the_servicer_and_undoes_its_stubs() -> None:
    from bench import python_overhead
    from layerserve.server import dataplane, runtime

    run, quiet = runtime.Graph.run, dataplane.QUIET_S
    values = python_overhead.measure(MODEL, rounds=2, calls=20)
    assert len(values) == 2 and all(value > 0 for value in values)
    assert (runtime.Graph.run, dataplane.QUIET_S) == (run, quiet)


def test_python_overhead_batched_path_goes_through_the_batcher_and_a_worker_thread() -> None:
    """The batched path is the loaded server's: never counted alone, so every run goes through the batching
    task to an ONNX Runtime worker thread, one row per run; the stubs are undone and the threads stopped."""
    from bench import python_overhead
    from layerserve.server import batching, dataplane, runtime

    run, quiet = runtime.Graph.run, dataplane.QUIET_S
    planes, executors = [], []
    original_init, original_call_on = dataplane.DataPlane.__init__, batching.call_on

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        planes.append(self)

    async def call_on(executor, fn, *args):
        executors.append(executor)
        return await original_call_on(executor, fn, *args)

    dataplane.DataPlane.__init__, batching.call_on = init, call_on
    try:
        values = python_overhead.measure(MODEL, rounds=2, calls=20, path="batched")
    finally:
        dataplane.DataPlane.__init__, batching.call_on = original_init, original_call_on
    assert len(values) == 2 and all(value > 0 for value in values)
    assert (runtime.Graph.run, dataplane.QUIET_S) == (run, quiet)
    (stats,) = [stats for stats in planes[0].stats.read().values() if stats.execution_count]
    assert stats.execution_count == stats.inference_count == 42  # 2 warm-up + 2 x 20, one row per run
    assert len(executors) == 42 and all(executor is planes[0].executor is not None for executor in executors)
    assert planes[0].executor._shutdown


def test_python_overhead_refuses_a_bad_instances_value_in_one_line(capsys) -> None:
    from bench import python_overhead

    with pytest.raises(SystemExit) as exit_info:
        python_overhead.main(["--instances", "two"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "expected auto or a whole number >= 0, got 'two'" in error and "Traceback" not in error
    with pytest.raises(SystemExit) as exit_info:
        python_overhead.main(["--model", "nope"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'nope'" in error and "digits_cnn" in error and "Traceback" not in error


def test_chain_seams_times_the_servers_own_sessions_for_both_chains(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import chain_seams

    report = chain_seams.measure("digits_cnn", [1, 4], {1: 3, 4: 3})
    assert report["blocks"] == 5 and report["native_seams"] == [0, 1, 2]
    for row in report["batches"].values():
        assert row["full_ms"] > 0 and row["plain_over_full"] > 0 and row["native_over_full"] > 0
        assert row["composed_over_full"] > 0 and len(row["composed_blocks_ms"]) == 1
        assert len(row["plain_blocks_ms"]) == len(row["native_blocks_ms"]) == 5
    assert chain_seams.main(["--batches", "2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "native seams [0, 1, 2]" in out and "| composed " in out
