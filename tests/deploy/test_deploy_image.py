"""deploy/Containerfile: hadolint, its structure (dockerfile-parse), its ENTRYPOINT/CMD and HEALTHCHECK run
here against the real server, and a real build where a container engine and the base image are at hand.

The base image comes from a container registry, which this project's machines cannot reach (only package
registries): the build test skips with that reason unless LAYERSERVE_TEST_PYTHON_IMAGE names a Python
3.11+ Debian image already in podman's local storage. It was run that way here with a stand-in made from
Debian's packages (python3.11, python3-venv, ca-certificates):

    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm rootfs
    tar -C rootfs -cf base.tar . && podman import base.tar localhost/python-standin:bookworm
    LAYERSERVE_TEST_PYTHON_IMAGE=localhost/python-standin:bookworm pytest tests/deploy -k builds

(behind a TLS-intercepting proxy, copy the host's CA bundle into rootfs and import with
``--change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt"`` so pip inside the build trusts it).
With buildah installed, the built image's own ENTRYPOINT and CMD then serve from the image (chroot
isolation, the host's network) and drain on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import kube
import numpy as np
import pytest
import tritonclient.grpc as triton
from dockerfile_parse import DockerfileParser
from tritonclient.utils import InferenceServerException

from layerserve.server.launcher import ServerProcess, free_port

CONTAINERFILE = kube.REPO / "deploy" / "Containerfile"
IMAGE_MODELS = "/opt/layerserve/models"


def _instructions() -> list[dict]:
    """The Containerfile's instructions (continuation lines joined), comments left out."""
    with open(CONTAINERFILE, "rb") as handle:
        parser = DockerfileParser(fileobj=handle)
        return [item for item in parser.structure if item["instruction"] != "COMMENT"]


def _final_stage() -> list[dict]:
    instructions = _instructions()
    last_from = max(i for i, item in enumerate(instructions) if item["instruction"] == "FROM")
    return instructions[last_from:]


def _one(stage: list[dict], instruction: str) -> str:
    values = [item["value"] for item in stage if item["instruction"] == instruction]
    assert len(values) == 1, (instruction, values)
    return values[0]


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).with_name("hadolint")
    command = [str(tool) if tool.exists() else shutil.which("hadolint") or "hadolint", "--no-color", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_hadolint_passes() -> None:
    result = _hadolint(CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_exits_non_zero_for_a_broken_containerfile(tmp_path: Path) -> None:
    text = CONTAINERFILE.read_text()
    broken = text.replace('ENTRYPOINT ["layerserve"]', "RUN apt-get install curl\nENTRYPOINT layerserve serve")
    assert broken != text
    (tmp_path / "Containerfile").write_text(broken)
    result = _hadolint(tmp_path / "Containerfile")
    assert result.returncode != 0
    for rule in ("DL3008", "DL3015", "DL3025"):  # unpinned apt, recommends, shell-form ENTRYPOINT
        assert rule in result.stdout, result.stdout


def test_final_stage_is_slim_non_root_and_serves_the_baked_models() -> None:
    default_base = next(item["value"] for item in _instructions() if item["instruction"] == "ARG"
                        and item["value"].startswith("PYTHON_IMAGE="))
    assert "python:3" in default_base and "-slim" in default_base
    stage = _final_stage()
    user = _one(stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    assert [item["instruction"] for item in stage].index("USER") > max(
        i for i, item in enumerate(stage) if item["instruction"] == "RUN")
    assert json.loads(_one(stage, "ENTRYPOINT")) == ["layerserve"]
    cmd = json.loads(_one(stage, "CMD"))
    assert cmd[0] == "serve" and cmd[cmd.index("--models") + 1] == IMAGE_MODELS
    assert any(item["value"].split() == ["models", IMAGE_MODELS] for item in stage if item["instruction"] == "COPY")


def test_only_serving_dependencies_are_installed() -> None:
    runs = " ".join(item["value"] for item in _instructions() if item["instruction"] == "RUN")
    assert "pip install /src;" in runs  # the project without extras: its dependencies are the serving ones
    assert "torch" not in runs and "[export" not in runs and "[dev" not in runs
    project = tomllib.loads((kube.REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.split("[")[0].split(">")[0].split("=")[0] in
                {"torch", "onnx", "onnxscript", "onnx-ir", "scikit-learn", "tritonclient", "pytest"}]
    # The CUDA variant swaps ONNX Runtime for its GPU build through a build argument.
    assert any(item["instruction"] == "ARG" and item["value"] == "ONNXRUNTIME=onnxruntime" for item in _instructions())


def test_build_context_excludes_everything_the_image_does_not_copy() -> None:
    ignore = (kube.REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # an allow-list: no .venv, bench/ or tests/ in the context
    copied = {item["value"].split()[0] for item in _instructions()
              if item["instruction"] == "COPY" and not item["value"].startswith("--from")}
    assert {f"!{name}" for name in copied} <= set(ignore)


class ImageCommand(ServerProcess):
    """ENTRYPOINT + CMD as written, with the image's paths, address and ports swapped for this machine's."""

    def command(self) -> list[str]:
        stage = _final_stage()
        argv = json.loads(_one(stage, "ENTRYPOINT")) + json.loads(_one(stage, "CMD"))
        swap = {IMAGE_MODELS: str(self.models), "0.0.0.0": self.host, "8001": str(self.port),
                "8000": str(self.http_port), "9091": str(self.metrics_port)}
        argv = [swap.get(arg, arg) for arg in argv]
        argv[0] = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or argv[0]
        return argv


def _healthcheck(address: str) -> int:
    value = _one(_final_stage(), "HEALTHCHECK")
    argv = json.loads(value[value.index("CMD") + len("CMD"):].strip())
    assert argv[0] == "python3" and "127.0.0.1:8001" in argv[-1]
    argv = [sys.executable, *argv[1:-1], argv[-1].replace("127.0.0.1:8001", address)]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_entrypoint_serves_and_the_healthcheck_tells_serving_from_gone(tmp_path: Path) -> None:
    server = ImageCommand(kube.REPO / "models", log_path=tmp_path / "image.log")
    with server:
        assert _healthcheck(server.address) == 0, server.log_tail()
    assert _healthcheck(server.address) == 1  # nothing listening: unhealthy


def _engine() -> str | None:
    return shutil.which("podman") or shutil.which("buildah")


def _local_base() -> tuple[str | None, str]:
    base = os.environ.get("LAYERSERVE_TEST_PYTHON_IMAGE") or next(
        item["value"].split("=", 1)[1] for item in _instructions()
        if item["instruction"] == "ARG" and item["value"].startswith("PYTHON_IMAGE="))
    engine = _engine()
    if engine is None:
        return None, "no container engine (podman or buildah) is installed"
    exists = subprocess.run([engine, "image", "exists", base] if engine.endswith("podman")
                            else [engine, "inspect", "--type", "image", base], capture_output=True, timeout=60)
    if exists.returncode != 0:
        return None, (f"base image {base} is not in local storage, and no container registry can be reached "
                      "from here; set LAYERSERVE_TEST_PYTHON_IMAGE to a local Python 3.11+ Debian image")
    return base, ""


@pytest.mark.slow
def test_image_builds_without_torch_and_runs_as_non_root(tmp_path: Path) -> None:
    base, reason = _local_base()
    if base is None:
        pytest.skip(reason)
    engine = _engine()
    tag = "localhost/layerserve-test:latest"
    # chroot isolation: RUN steps work without a container runtime's cgroup and rlimit privileges.
    build = [engine, "build", "--isolation", "chroot", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={base}",
             "-f", str(CONTAINERFILE), "-t", tag, str(kube.REPO)]
    result = subprocess.run(build, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    inspect = subprocess.run([engine, "inspect", "--type", "image", tag], capture_output=True, text=True, timeout=60)
    image = json.loads(inspect.stdout)[0]
    config = image["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["layerserve"]
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck")  # podman's place, then buildah's
    assert "grpc_health" in " ".join(healthcheck["Test"])
    container = subprocess.run([engine, "create", tag], capture_output=True, text=True, timeout=60).stdout.strip()
    try:
        listing = subprocess.run(f"{engine} export {container} | tar -t", shell=True, capture_output=True,
                                 text=True, timeout=600).stdout.splitlines()
    finally:
        subprocess.run([engine, "rm", container], capture_output=True, timeout=60)
    site = [path for path in listing if "/site-packages/" in path]
    assert any("/site-packages/onnxruntime/" in path for path in site)
    assert any("/site-packages/layerserve" in path for path in site)
    assert not any("/site-packages/torch/" in path for path in site)
    assert any(path.startswith("opt/layerserve/models/digits_cnn/1/") for path in listing)
    if shutil.which("buildah"):  # podman cannot start containers here; buildah's chroot isolation can
        _serve_from_image(shutil.which("buildah"), tag, tmp_path)


def _image_server_pids(port: int) -> list[int]:
    """The image's server processes, found by their command line (buildah does not forward SIGTERM)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # python3 /opt/layerserve/bin/layerserve serve ... --port PORT (not buildah's own exec helper)
        if b"python" in argv[0] and argv[1:2] == [b"/opt/layerserve/bin/layerserve"] and str(port).encode() in argv:
            pids.append(int(proc.name))
    return pids


def _serve_from_image(buildah: str, tag: str, tmp_path: Path) -> None:
    """The image's own ENTRYPOINT and CMD, run from the image (host network, a free port): ready and right."""
    container = subprocess.run([buildah, "from", tag], capture_output=True, text=True, timeout=120).stdout.strip()
    port = free_port()
    stage = _final_stage()
    swap = {"0.0.0.0": "127.0.0.1", "8001": str(port), "9091": "-1"}
    argv = [swap.get(arg, arg) for arg in json.loads(_one(stage, "ENTRYPOINT")) + json.loads(_one(stage, "CMD"))]
    with open(tmp_path / "image-run.log", "wb") as log:
        runner = subprocess.Popen([buildah, "run", "--isolation", "chroot", container, "--", *argv],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        images = np.load(kube.REPO / "models" / "digits_cnn" / "1" / "samples.npz")
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            for _ in range(120):
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_ready():
                        break
                time.sleep(0.5)
            tensor = triton.InferInput("x", [16, 1, 32, 32], "FP32")
            tensor.set_data_from_numpy(images["images"][:16])
            logits = client.infer("digits_cnn.chain", [tensor]).as_numpy("logits")
        assert (logits.argmax(axis=1) == images["labels"][:16]).mean() > 0.9
    finally:
        for pid in _image_server_pids(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            runner.wait(timeout=60)
        finally:
            if runner.poll() is None:
                runner.kill()
            subprocess.run([buildah, "rm", container], capture_output=True, timeout=60)
    assert runner.returncode == 0 and '"msg": "stopped"' in (tmp_path / "image-run.log").read_text()  # drained
