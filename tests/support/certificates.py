"""A throwaway CA, server and client certificates made with the openssl binary (EC P-256, one day)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

AVAILABLE = shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificate(folder: Path, name: str, san: str) -> None:
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)


def make(folder: Path) -> Path:
    """``folder`` with ca.pem, server.pem/.key (localhost, 127.0.0.1) and client.pem/.key."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=layerserve-test-ca", cwd=folder)
    _certificate(folder, "server", "DNS:localhost,IP:127.0.0.1")
    _certificate(folder, "client", "DNS:client")
    return folder
