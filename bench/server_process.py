"""Start a layerserve server as a child process on a free loopback port and wait until it is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``with ServerProcess(models) as server: server.address`` — a real server, stopped on exit.

    Waits (up to ``ready_timeout`` seconds) for ServerReady; raises RuntimeError with the
    server's log tail if it exits or never gets ready.
    """

    def __init__(
        self,
        models: Path,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.models = Path(models)
        self.extra_args = list(extra_args or [])
        self.host = host
        self.port = free_port(host)
        self.metrics_port = free_port(host)
        self.ready_timeout = ready_timeout
        self.env = env
        self.address = f"{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "layerserve.cli.main", "serve",
            "--models", str(self.models),
            "--host", self.host,
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            *self.extra_args,
        ]

    def __enter__(self) -> ServerProcess:
        import tempfile

        log = tempfile.NamedTemporaryFile(prefix="layerserve-", suffix=".log", delete=False)
        self.log_path = Path(log.name)
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})}
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {self.ready_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
