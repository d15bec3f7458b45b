"""bench/fuzz.py and bench/soak.py, briefly, against real servers over the committed models."""

from __future__ import annotations

import json
from pathlib import Path

from bench import fuzz, soak

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_fuzz_counts_statuses_and_checks_answers(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    assert fuzz.main(["--models", str(MODELS), "--requests", "90", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["requests"] == 90 and sum(result["status_codes"].values()) == 90
    assert "INVALID_ARGUMENT" in result["status_codes"]
    assert result["unacceptable"] == [] and result["final_valid_requests_right"] and result["server_alive"]


def test_soak_reports_errors_answers_and_resident_memory(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    # Seconds, not minutes: the figures mean nothing here, only that they are measured and reported.
    code = soak.main(["--minutes", "0.05", "--peak-seconds", "1", "--max-growth", "1", "--hostile", "0.1",
                      "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0, result
    assert result["errors"] == 0 and result["wrong_answers"] == 0 and result["ok"] > 0
    assert result["rss_kib_start"] > 0 and result["rss_samples"] and result["metrics_samples"]
    assert result["hostile"] > 0 and result["hostile_unexpected"] == 0
    assert set(result["hostile_codes"]) == {"NOT_FOUND", "INVALID_ARGUMENT"}

