"""The ServingRuntime's container, run here as a kubelet would run it.

Its command and args are read from deploy/kserve/servingruntime.yaml, not retyped: only the pod's
environment is swapped for this machine's (a copy of models/ for the storage initializer's
/mnt/models, 127.0.0.1 for 0.0.0.0, free ports for the container ports). Readiness is the manifest's
gRPC probe on the kubelet's schedule; then unmodified tritonclient talks to it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import kube
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from layerserve.server import cpus
from layerserve.server.launcher import ServerProcess

STORAGE_MOUNT = "/mnt/models"  # where KServe's storage initializer puts an InferenceService's storageUri


def _container() -> dict:
    return kube.runtime_named("layerserve")["spec"]["containers"][0]


def probe_once(address: str, probe: dict) -> bool:
    """One kubelet gRPC probe: grpc.health.v1.Health/Check(service) within timeoutSeconds, SERVING or fail."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                timeout=probe.get("timeoutSeconds", 1),
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


class KubeletRun(ServerProcess):
    """The runtime container's command line, ready when its readiness probe passes on the kubelet's schedule."""

    def __init__(self, container: dict, models: Path, log_path: Path) -> None:
        super().__init__(models, log_path=log_path)
        self.container = container
        self.probe_attempts = 0

    def command(self) -> list[str]:
        grpc_port, metrics_port = (str(p["containerPort"]) for p in self.container["ports"])
        swap = {STORAGE_MOUNT: str(self.models), "0.0.0.0": self.host, grpc_port: str(self.port),
                metrics_port: str(self.metrics_port)}
        argv = [swap.get(arg, arg) for arg in [*self.container["command"], *self.container["args"]]]
        # The image puts `layerserve` on PATH; here it is this virtualenv's console script.
        argv[0] = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or argv[0]
        return argv

    def wait_ready(self) -> None:
        """initialDelaySeconds, then a probe every periodSeconds; ready at the first success, or
        RuntimeError after failureThreshold more failures (the budget the acceptance gives)."""
        probe = self.container["readinessProbe"]
        assert probe["grpc"]["port"] == self.container["ports"][0]["containerPort"]
        time.sleep(probe.get("initialDelaySeconds", 0))
        for attempt in range(1, probe.get("failureThreshold", 3) + 2):
            self.probe_attempts = attempt
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            if probe_once(self.address, probe):
                return
            time.sleep(probe.get("periodSeconds", 10))
        self.stop()
        raise RuntimeError(f"not SERVING after {self.probe_attempts} probes:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("mnt-models")
    shutil.copytree(kube.REPO / "models", models, dirs_exist_ok=True)
    log = tmp_path_factory.mktemp("logs") / "kserve-container.log"
    with KubeletRun(_container(), models, log) as running:
        yield running


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _infer(client: triton.InferenceServerClient, name: str, input_name: str, x: np.ndarray,
           output: str) -> np.ndarray:
    tensor = triton.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(name, [tensor]).as_numpy(output)


def test_ready_within_the_readiness_budget_and_live(pod: KubeletRun) -> None:
    probe = _container()["readinessProbe"]
    assert 1 <= pod.probe_attempts <= probe["failureThreshold"] + 1
    assert probe_once(pod.address, _container()["livenessProbe"])


def test_start_up_log_records_the_counted_cores(pod: KubeletRun) -> None:
    lines = [json.loads(line) for line in pod.log_path.read_text().splitlines() if line.startswith("{")]
    cores = cpus.usable_cores()
    started = [line for line in lines if line["msg"] in ("workers started", "serving")]
    assert started, lines
    assert {(line["usable_cores"], line["usable_cores_from"]) for line in started} == {(cores.count, cores.source)}
    if cores.count > 1:  # --workers auto: one process per counted core
        assert [line["workers"] for line in lines if line["msg"] == "workers started"] == [cores.count]


def test_tritonclient_gets_right_answers_from_the_model_a_block_and_the_chain(pod: KubeletRun) -> None:
    folder = kube.REPO / "models" / "digits_cnn" / "1"
    samples = np.load(folder / "samples.npz")
    x, labels = samples["images"][:32], samples["labels"][:32]
    with triton.InferenceServerClient(pod.address) as client:
        assert client.is_server_ready() and client.is_model_ready("digits_cnn.chain")
        full = _infer(client, "digits_cnn", "x", x, "logits")
        np.testing.assert_allclose(full, _reference(folder / "model.onnx", x), rtol=1e-5, atol=1e-5)
        assert (full.argmax(axis=1) == labels).mean() > 0.9
        stem = _infer(client, "digits_cnn.00_stem", "x", x, "00_stem_out")
        np.testing.assert_allclose(stem, _reference(folder / "blocks" / "00_stem.onnx", x), rtol=1e-5, atol=1e-5)
        chain = _infer(client, "digits_cnn.chain", "x", x, "logits")
        np.testing.assert_allclose(chain, full, rtol=1e-4, atol=1e-4)
        with pytest.raises(InferenceServerException) as refused:
            _infer(client, "digits_cnn", "x", np.zeros((2, 1, 28, 28), np.float32), "logits")
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expects FP32 [-1,1,32,32], got FP32 [2,1,28,28]" in refused.value.message()


def test_metrics_are_where_the_prometheus_annotations_point(pod: KubeletRun) -> None:
    annotations = kube.runtime_named("layerserve")["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(_container()["ports"][1]["containerPort"])
    url = f"http://{pod.host}:{pod.metrics_port}{annotations['prometheus.kserve.io/path']}"
    with triton.InferenceServerClient(pod.address) as client:
        _infer(client, "digits_cnn", "x", np.zeros((1, 1, 32, 32), np.float32), "logits")
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    # The series the KEDA query in inferenceservice-digits-resnet.yaml sums.
    counted = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "layerserve_requests_total"
               and sample.labels == {"rpc": "ModelInfer", "model": "digits_cnn", "code": "OK"}]
    assert counted and counted[0] >= 1, text
