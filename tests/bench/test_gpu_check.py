"""make gpu-check's report script, run for real: on the CPU provider everywhere, on CUDA where it loads."""

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_check(device: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    command = [
        sys.executable, "-m", "bench.gpu_check", "--device", device, "--models", str(REPO / "models"),
        "--batches", "1,8", "--repeats", "2", "--duration", "0.3", "--out", str(out),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(out.read_text()) if out.exists() else {}
    return result, report


def test_gpu_check_report_on_the_cpu_provider(tmp_path: Path) -> None:
    result, report = _run_check("cpu", tmp_path / "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["cuda"] is False and report["failures"] == []
    for name in ("digits_cnn", "digits_resnet"):
        served = report["served"][name]
        assert served["providers"] == ["CPUExecutionProvider"]
        for endpoint in (name, f"{name}.chain"):
            assert served[endpoint]["top1_identical"] and served[endpoint]["max_rel_logit_diff"] <= 1e-3
        assert set(report["chain_timings"][name]["batches"]) == {"1", "8"}
        cell = report["served_throughput"][name]["cpu"]["batch1_c16"]
        assert cell["errors"] == 0 and cell["requests_per_s"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in onnxruntime.get_available_providers(), reason="no CUDA execution provider"
)
def test_gpu_check_report_on_cuda(tmp_path: Path) -> None:
    result, report = _run_check("cuda", tmp_path / "report.json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["cuda"] is True, report["failures"]
    for name, served in report["served"].items():
        assert "CUDAExecutionProvider" in served["providers"], name
