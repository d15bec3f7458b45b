"""TLS, mutual TLS and bearer tokens, end to end against the real server (``layerserve serve``
with --tls-cert/--tls-key, --tls-client-ca, --token-file and LAYERSERVE_TOKENS); the
certificates are made with the openssl binary for each run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from certificates import AVAILABLE as OPENSSL_AVAILABLE
from certificates import make as make_certificates
from client_support import MODELS, ServerProcess, samples

from layerserve.client import ConnectionSettings, LayerClient, ServerError

TOKEN = "s3cret"
pytestmark = pytest.mark.skipif(not OPENSSL_AVAILABLE, reason="needs the openssl binary")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_certificates(tmp_path_factory.mktemp("tls"))
    (folder / "tokens").write_text(f"{TOKEN}\n")
    return folder


@pytest.fixture(scope="module")
def one_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding only digits_cnn (a link to the committed one): three servers start faster."""
    root = tmp_path_factory.mktemp("models")
    (root / "digits_cnn").symlink_to(MODELS / "digits_cnn", target_is_directory=True)
    return root


def _serve(models: Path, flags: list[str], env: dict[str, str] | None = None,
           credentials: grpc.ChannelCredentials | None = None) -> Iterator[str]:
    server = ServerProcess(models, ["--metrics-port", "-1", "--log-format", "text", *flags], env=env,
                           credentials=credentials, metadata=(("authorization", f"Bearer {TOKEN}"),))
    with server:
        yield server.address


def _tls_flags(certificates: Path) -> list[str]:
    return ["--tls-cert", str(certificates / "server.pem"), "--tls-key", str(certificates / "server.key")]


def _client_credentials(certificates: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes(),
                                        (certificates / "client.key").read_bytes(),
                                        (certificates / "client.pem").read_bytes())


@pytest.fixture(scope="module")
def tls_server(one_model: Path, certificates: Path) -> Iterator[str]:
    credentials = grpc.ssl_channel_credentials((certificates / "ca.pem").read_bytes())
    yield from _serve(one_model, [*_tls_flags(certificates), "--token-file", str(certificates / "tokens")],
                      credentials=credentials)


@pytest.fixture(scope="module")
def mtls_server(one_model: Path, certificates: Path) -> Iterator[str]:
    flags = [*_tls_flags(certificates), "--tls-client-ca", str(certificates / "ca.pem")]
    yield from _serve(one_model, flags, env={"LAYERSERVE_TOKENS": TOKEN},
                      credentials=_client_credentials(certificates))


@pytest.fixture(scope="module")
def plain_server(one_model: Path) -> Iterator[str]:
    yield from _serve(one_model, [], env={"LAYERSERVE_TOKENS": TOKEN})


def _live(address: str, settings: ConnectionSettings) -> bool:
    with LayerClient(address, settings) as client:
        return client.is_server_live()


def test_tls_with_root_certificates_carries_the_token(tls_server: str, certificates: Path) -> None:
    settings = ConnectionSettings(root_certificates=certificates / "ca.pem", token=TOKEN, timeout=10)
    images, _ = samples("digits_cnn", 4)
    with LayerClient(tls_server, settings) as client:
        assert client.is_server_live()
        logits = client.chain("digits_cnn", images, where="server").output
        assert np.allclose(logits, client.infer_array("digits_cnn", images), atol=1e-5)
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
