"""Run ``layerserve serve`` as a child process on a free loopback port, ready when it says so.

Tests, benchmarks and load runs all need a real server they can start, wait for and
stop; this is the one implementation. Readiness is the protocol's own ServerReady,
and stopping is SIGTERM first (the graceful drain) and SIGKILL only after a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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


# A port reported free can be taken before the server binds it: outgoing connections draw their local
# ports from the same ephemeral range. The server then exits at once saying so (server/ports.py), and is
# started again on ports picked afresh, this many times at most.
PORT_RETRIES = 3
_PORT_IN_USE = re.compile(r"port (\d+) is in use by")


class ServerProcess:
    """``with ServerProcess(models) as server: server.address`` — a real server, stopped on exit.

    ``extra_args`` are appended to the command line (a repeated flag overrides an earlier
    one). ``__enter__`` waits up to ``ready_timeout`` seconds for ServerReady and raises
    RuntimeError with the server's log tail if it exits or never gets ready. A server started
    with TLS or tokens is polled with ``credentials`` (a secure channel) and ``metadata``
    (e.g. ``(("authorization", "Bearer <token>"),)``).
    """

    def __init__(
        self,
        models: Path,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        ready_timeout: float = 60.0,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.models = Path(models)
        self.extra_args = list(extra_args)
        self.host = host
        self._pick_ports()
        self.ready_timeout = ready_timeout
        self.env = env
        self.log_path = log_path
        self.credentials = credentials
        self.metadata = tuple(metadata)
        self.process: subprocess.Popen[bytes] | None = None
        self._own_log: Path | None = None

    def _pick_ports(self) -> None:
        self.port = free_port(self.host)
        self.metrics_port = free_port(self.host)
        self.http_port = free_port(self.host)
        self.address = f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The command line that starts the server (subclasses start peers the same way)."""
        return [
            sys.executable, "-m", "layerserve.cli.main", "serve",
            "--models", str(self.models),
            "--host", self.host,
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--http-port", str(self.http_port),
            *self.extra_args,
        ]

    @property
    def http_url(self) -> str:
        """The HTTP/REST endpoint's base URL (``http://127.0.0.1:PORT``)."""
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> ServerProcess:
        """Start the process and wait until it is ready; again on fresh ports (``address`` changes) if one
        it was given was taken before it could bind it (PORT_RETRIES)."""
        if self.log_path is None:  # a log of its own, removed when the ``with`` block ends (2,594 were left in /tmp)
            handle, name = tempfile.mkstemp(prefix="layerserve-", suffix=".log")
            os.close(handle)
            self.log_path = self._own_log = Path(name)
        retries = PORT_RETRIES
        while True:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})},
                )
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                if not retries or not self._lost_a_picked_port():
                    raise
                retries -= 1
                self._pick_ports()

    def _lost_a_picked_port(self) -> bool:
        """Whether the process exited because a port this picked (not one the caller gave) was taken."""
        if self.process is None or self.process.poll() is None:
            return False
        taken = _PORT_IN_USE.search(self.log_tail())
        return (taken is not None and int(taken[1]) in (self.port, self.metrics_port, self.http_port)
                and taken[1] not in self.extra_args)

    def wait_ready(self) -> None:
        """Poll ServerReady until it says yes; RuntimeError (with the log) on exit or timeout."""
        deadline = time.monotonic() + self.ready_timeout
        if self.credentials is None:
            channel = grpc.insecure_channel(self.address)
        else:
            channel = grpc.secure_channel(self.address, self.credentials)
        with channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if stub.ServerReady(pb.ServerReadyRequest(), timeout=1, metadata=self.metadata).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"server not ready after {self.ready_timeout}s:\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the server wrote."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
        if self._own_log is not None:  # read after stop() inside the block (shutdown lines), gone after it
            self._own_log.unlink(missing_ok=True)
            self.log_path = self._own_log = None
