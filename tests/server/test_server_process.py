"""The server as a process: `layerserve serve`, SIGTERM drain, SO_REUSEPORT workers, no torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from layerserve.server.launcher import free_port


def start_server(repository: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "layerserve.cli.main", "serve", "--models", str(repository),
               "--port", str(port), "--log-format", "text", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}:\n{process.stdout.read()}")
            try:
                if probe.is_server_ready():
                    return process, port
            except InferenceServerException:
                time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become ready")


def one_request(port: int, rows: int = 1) -> np.ndarray:
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as connection:
        tensor = triton.InferInput("x", [rows, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.ones((rows, 1, 8, 8), np.float32))
        return connection.infer("tiny_cnn", [tensor]).as_numpy("logits")


def test_sigterm_drains_in_flight_requests(tiny_repository: Path) -> None:
    # A 1.5 s queue delay keeps the requests in flight when SIGTERM arrives.
    process, port = start_server(tiny_repository, "--metrics-port", "-1", "--max-queue-delay-us", "1500000")
    results: list[object] = []

    def worker() -> None:
        try:
            results.append(one_request(port))
        except Exception as error:  # noqa: BLE001 - reported through results
            results.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.7)
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert len(results) == 8
    assert all(isinstance(r, np.ndarray) and r.shape == (1, 10) for r in results), results
    assert "draining" in output and "stopped" in output
    with pytest.raises(InferenceServerException):
        one_request(port)


def test_workers_share_the_port_and_sum_metrics(tiny_repository: Path) -> None:
    metrics_port = free_port()
    process, port = start_server(tiny_repository, "--workers", "2", "--metrics-port", str(metrics_port))
    try:
        for rows in range(1, 7):
            assert one_request(port, rows).shape == (rows, 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        ok = [line for line in text.splitlines()
              if line.startswith('layerserve_requests_total{code="OK",model="tiny_cnn",rpc="ModelInfer"}')]
        assert ok and float(ok[0].rsplit(" ", 1)[1]) == 6
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("model loaded") >= 4  # two versions of tiny_cnn in each of two workers


def test_workers_die_with_a_killed_parent(tiny_repository: Path) -> None:
    process, port = start_server(tiny_repository, "--workers", "2", "--metrics-port", "-1")
    assert one_request(port).shape == (1, 10)
    process.kill()  # SIGKILL: no drain, no chance to forward a signal
    process.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # orphaned workers would keep answering on the port
        try:
            one_request(port)
        except InferenceServerException:
            break
        time.sleep(0.2)
    with pytest.raises(InferenceServerException):
        one_request(port)


def test_cuda_refused_with_reason_when_not_loadable(tiny_repository: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider present: refusal cannot be shown here")
    command = [sys.executable, "-m", "layerserve.cli.main", "serve", "--models", str(tiny_repository),
               "--port", str(free_port()), "--metrics-port", "-1", "--device", "cuda", "--log-format", "text"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and "CUDAExecutionProvider" not in done.stderr.split("offers only")[1]


def test_serving_imports_neither_torch_nor_export() -> None:
    code = (
        "import sys, layerserve.server.app, layerserve.server.cli;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'layerserve.export'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ}, timeout=60)
