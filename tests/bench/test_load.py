"""``make load``: a short real Locust run against real servers (counts only, never timings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import load
from bench.peers import kserve_peer
from layerserve.server.launcher import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["full", "block", "chain", "client_chain"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(REPO_ROOT / "models", ["--log-level", "WARNING"]) as running:
        yield running


def test_every_target_answers_without_failures(server: ServerProcess, tmp_path: Path) -> None:
    code = load.main(["--server", server.address, "--targets", ",".join(TARGETS), "--users", "4",
                      "--duration", "5s", "--out", str(tmp_path)])
    rows = {row.name: row for row in load.read_stats(tmp_path / "stats.json")}
    assert code == 0
    assert sorted(rows) == sorted(TARGETS)
    for row in rows.values():
        assert row.requests > 0 and row.failures == 0, row
    # A client chain moves every block's activations; the server chain returns only the logits.
    assert rows["client_chain"].avg_bytes > rows["chain"].avg_bytes
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "stats_stats.csv").stat().st_size > 0


def test_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    code = load.main(["--targets", "chain", "--users", "2", "--duration", "2s", "--out", str(tmp_path)])
    (row,) = load.read_stats(tmp_path / "stats.json")
    assert code == 0 and row.name == "chain" and row.requests > 0 and row.failures == 0


def test_unknown_model_fails_the_run(server: ServerProcess, tmp_path: Path) -> None:
    code = load.main(["--server", server.address, "--model", "no_such_model", "--targets", "full",
                      "--users", "1", "--duration", "2s", "--out", str(tmp_path)])
    assert code != 0
    assert all(row.requests == 0 for row in load.read_stats(tmp_path / "stats.json"))


def test_any_oip_server_kserve_full(tmp_path: Path) -> None:
    with kserve_peer.KServePeer(REPO_ROOT / "models" / "digits_cnn" / "1" / "model.onnx", "digits_cnn") as peer:
        code = load.main(["--server", peer.address, "--targets", "full", "--users", "2", "--duration", "3s",
                          "--out", str(tmp_path)])
    (row,) = load.read_stats(tmp_path / "stats.json")
    assert code == 0 and row.requests > 0 and row.failures == 0


def test_parse_duration() -> None:
    assert load.parse_duration("20s") == 20 and load.parse_duration("1h30m") == 5400 and load.parse_duration("7") == 7
    with pytest.raises(ValueError):
        load.parse_duration("20 seconds")
