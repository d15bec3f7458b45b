"""TLS, mutual TLS and bearer tokens, end to end over real gRPC channels.

layerserve's server has no TLS or token options, so these tests stand up a gRPC
server of their own (``grpc.ssl_server_credentials``) whose ServerLive answers
only when the ``authorization`` metadata holds the expected bearer token; the
certificates are made with the openssl binary for each run.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from client_support import free_port

from layerserve.client import ConnectionSettings, LayerClient, ServerError
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc

TOKEN = "s3cret"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificate(folder: Path, name: str, san: str) -> None:
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "1", "-subj", "/CN=layerserve-test-ca", cwd=folder)
    _certificate(folder, "server", "DNS:localhost,IP:127.0.0.1")
    _certificate(folder, "client", "DNS:client")
    return folder


class _TokenChecking(pb_grpc.GRPCInferenceServiceServicer):
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        return pb.ServerLiveResponse(live=True)


def _serve(credentials: grpc.ServerCredentials | None) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_TokenChecking(), server)
    address = f"127.0.0.1:{free_port()}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    server.start()
    yield address
    server.stop(0)


@pytest.fixture(scope="module")
def tls_server(certificates: Path) -> Iterator[str]:
    pair = ((certificates / "server.key").read_bytes(), (certificates / "server.pem").read_bytes())
    yield from _serve(grpc.ssl_server_credentials([pair]))


@pytest.fixture(scope="module")
def mtls_server(certificates: Path) -> Iterator[str]:
    pair = ((certificates / "server.key").read_bytes(), (certificates / "server.pem").read_bytes())
    ca = (certificates / "ca.pem").read_bytes()
    yield from _serve(grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True))


@pytest.fixture(scope="module")
def plain_server() -> Iterator[str]:
    yield from _serve(None)


def _live(address: str, settings: ConnectionSettings) -> bool:
    with LayerClient(address, settings) as client:
        return client.is_server_live()


def test_tls_with_root_certificates_carries_the_token(tls_server: str, certificates: Path) -> None:
    assert _live(tls_server, ConnectionSettings(root_certificates=certificates / "ca.pem", token=TOKEN, timeout=10))
    with pytest.raises(ServerError) as caught:
        _live(tls_server, ConnectionSettings(root_certificates=certificates / "ca.pem", token="wrong", timeout=10))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and "bearer" in caught.value.message


def test_tls_refuses_an_untrusted_server(tls_server: str, certificates: Path) -> None:
    with pytest.raises(ServerError) as caught:  # the system roots do not know our test CA
        _live(tls_server, ConnectionSettings(tls=True, token=TOKEN, timeout=5))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_the_client_certificate(mtls_server: str, certificates: Path) -> None:
    ca = certificates / "ca.pem"
    settings = ConnectionSettings(
        root_certificates=ca, certificate_chain=certificates / "client.pem", private_key=certificates / "client.key",
        token=TOKEN, timeout=10,
    )
    assert _live(mtls_server, settings)
    with pytest.raises(ServerError):
        _live(mtls_server, ConnectionSettings(root_certificates=ca, token=TOKEN, timeout=5))
    with pytest.raises(ValueError, match="both"):
        _live(mtls_server, ConnectionSettings(root_certificates=ca, certificate_chain=certificates / "client.pem"))


def test_insecure_channel_sends_the_token_as_metadata(plain_server: str) -> None:
    assert _live(plain_server, ConnectionSettings(token=TOKEN, timeout=10))
    with pytest.raises(ServerError) as caught:
        _live(plain_server, ConnectionSettings(timeout=10))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
