"""Triton statistics summed over worker processes (server/statistics.py), through the tables themselves.

The served path (two workers, fresh connections, gRPC and HTTP) is in test_server_process.py.
"""

from __future__ import annotations

from pathlib import Path

from layerserve.server.statistics import BATCH_SLOTS, Duration, StatsTable

KEYS = [("m", "1"), ("m.chain", "1")]


def test_each_worker_reads_the_others_whatever_order_it_loaded_its_keys_in(tmp_path: Path) -> None:
    first, second = StatsTable(KEYS, tmp_path), StatsTable(KEYS[::-1], tmp_path)
    first.entry("m", "1").record_run(3, 2, 0.001, [0.0001, 0.0002])
    second.entry("m", "1").record_run(3, 1, 0.002, [0.0])
    second.entry("m", "1").record_run(5, 1, 0.002, [0.0])
    first.entry("m", "1").succeeded(0.01, now_ms=123)
    second.entry("m", "1").succeeded(0.02, now_ms=456)
    second.entry("m", "1").failed(0.5)
    second.entry("m.chain", "1").succeeded(0.003, now_ms=100)

    both = first.read()
    assert both == second.read()
    m = both[("m", "1")]
    assert (m.execution_count, m.inference_count, m.last_inference_ms) == (3, 11, 456)
    assert (m.success, m.fail) == (Duration(2, 30_000_000), Duration(1, 500_000_000))
    assert (m.queue, m.compute_infer) == (Duration(4, 300_000), Duration(4, 5_000_000))
    assert m.batches == {3: Duration(2, 3_000_000), 5: Duration(1, 2_000_000)}
    assert both[("m.chain", "1")].success == Duration(1, 3_000_000)


def test_a_worker_that_loads_later_is_counted_and_a_foreign_file_is_not(tmp_path: Path) -> None:
    first = StatsTable(KEYS, tmp_path)
    first.entry("m", "1").succeeded(0.001, now_ms=1)
    assert first.read()[("m", "1")].success.count == 1
    (tmp_path / "stats-0-junk.bin").write_bytes(b"not a table")
    later = StatsTable([("m", "1"), ("other", "2")], tmp_path)
    later.entry("m", "1").succeeded(0.001, now_ms=2)
    later.entry("other", "2").succeeded(0.001, now_ms=2)
    assert first.read()[("m", "1")].success.count == 2
    assert ("other", "2") not in first.read()  # a name this worker does not serve is not answered for
    assert not list(tmp_path.glob(".partial-*"))


def test_batch_sizes_are_bounded_while_the_totals_count_every_run() -> None:
    alone = StatsTable(KEYS)  # serving alone: in memory
    for rows in range(1, 2 * BATCH_SLOTS + 1):
        alone.entry("m", "1").record_run(rows, 1, 0.001, [0.0])
    m = alone.read()[("m", "1")]
    assert sorted(m.batches) == list(range(1, BATCH_SLOTS + 1))
    assert m.execution_count == 2 * BATCH_SLOTS
    assert m.inference_count == sum(range(1, 2 * BATCH_SLOTS + 1))
