"""bench.run_stats: the statistics of a measured cell leave out its warm-up, and unknown variants are refused."""

from __future__ import annotations

import pytest

from bench.run_stats import VARIANTS, main, statistics_between


def test_a_cell_counts_only_what_came_after_the_warm_up() -> None:
    before = {"inferences": 10, "executions": 8, "queue": (8_000, 8), "run": (80_000_000, 8), "batches": {1: 7, 3: 1}}
    after = {"inferences": 30, "executions": 26, "queue": (26_000, 26), "run": (80_000_000 + 18 * 300_000, 26),
             "batches": {1: 23, 3: 1, 2: 2}}
    assert statistics_between(before, after) == {
        "inferences": 20, "executions": 18, "queue_us": 1.0, "run_us": 300.0, "runs_by_batch_size": {"1": 16, "2": 2}}
    assert statistics_between(None, after)["run_us"] == round((80_000_000 + 18 * 300_000) / 26 / 1e3, 1)


def test_an_unknown_variant_is_refused_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--variants", "one_worker,turbo", "digits_cnn"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "'one_worker,turbo'" in error and all(name in error for name in VARIANTS)
