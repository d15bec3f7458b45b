"""KServe's ModelServer as a benchmark peer, in a virtual environment of its own.

KServe pins its own FastAPI/uvicorn/grpc stack, so it never shares layerserve's
environment: ``ensure_venv()`` creates ``bench/.venv-kserve`` once (about 30 s)
and ``KServePeer`` runs ``kserve_onnx.py`` from it on free loopback ports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from layerserve.server.launcher import ServerProcess, free_port

KSERVE_VERSION = "0.21.0"
VENV = Path(__file__).resolve().parent.parent / ".venv-kserve"
SCRIPT = Path(__file__).resolve().parent / "kserve_onnx.py"


def ensure_venv(venv: Path = VENV) -> Path:
    """Create (once) a venv with kserve, onnxruntime and numpy; returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / f".kserve-{KSERVE_VERSION}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"kserve=={KSERVE_VERSION}", "onnxruntime", "numpy"],
            check=True,
        )
        stamp.touch()
    return python


class KServePeer(ServerProcess):
    """``with KServePeer(model_file, name) as peer: peer.address`` — KServe serving one ONNX file."""

    def __init__(self, model_file: Path, name: str, tuned: bool = False, ready_timeout: float = 90.0) -> None:
        super().__init__(Path(model_file).parent, ready_timeout=ready_timeout)
        self.model_file = Path(model_file)
        self.name = name
        self.tuned = tuned
        self.python = ensure_venv()
        self.http_port = free_port()

    def command(self) -> list[str]:
        return [
            str(self.python), str(SCRIPT),
            "--model-file", str(self.model_file),
            "--name", self.name,
            "--grpc-port", str(self.port),
            "--http-port", str(self.http_port),
            *(["--tuned"] if self.tuned else []),
        ]
