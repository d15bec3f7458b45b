"""Access control on the real server: TLS, mutual TLS and bearer tokens (file and environment),
only the overall health service open without a token (--auth-health), reflection and unknown methods
refused without a token."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import certificates
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_harness import ServerThread

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import grpc_service_pb2_grpc as pb_grpc
from layerserve.proto.tensors import add_raw_input
from layerserve.server import security, settings
from layerserve.server.settings import Settings

TOKENS = ("first-token", "second-token")
X = np.ones((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not certificates.AVAILABLE:
        pytest.skip("needs the openssl binary")
    return certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# one token per line\n{TOKENS[0]}\n\n")
    return path


def _serve(tiny_repository: Path, **access: object) -> Iterator[ServerThread]:
    chosen = Settings(models=tiny_repository, port=0, metrics_port=-1, **access)
    with ServerThread(settings.validate(chosen)) as running:
        yield running


@pytest.fixture(scope="module")
def token_server(tiny_repository: Path, token_file: Path) -> Iterator[ServerThread]:
    yield from _serve(tiny_repository, token_file=token_file, tokens=TOKENS[1])


@pytest.fixture(scope="module")
def tls_server(tiny_repository: Path, certs: Path, token_file: Path) -> Iterator[ServerThread]:
    yield from _serve(tiny_repository, tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                      token_file=token_file, auth_health="all")


@pytest.fixture(scope="module")
def mtls_server(tiny_repository: Path, certs: Path) -> Iterator[ServerThread]:
    yield from _serve(tiny_repository, tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                      tls_client_ca=certs / "ca.pem")


def _infer(channel: grpc.Channel, metadata: tuple = ()) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="tiny_cnn")
    add_raw_input(request, "x", X)
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=10)
    return np.frombuffer(reply.raw_output_contents[0], np.float32)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_every_configured_token_is_accepted_and_others_are_unauthenticated(token_server: ServerThread) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        answers = [_infer(channel, _bearer(token)) for token in TOKENS]  # from the file, from the environment
        assert np.array_equal(answers[0], answers[1]) and answers[0].shape == (10,)
        assert _infer(channel, (("authorization", f"bearer {TOKENS[0]}"),)).shape == (10,)  # scheme is case-free
        for metadata in [(), _bearer("wrong"), _bearer(TOKENS[0] + "x"), _bearer(TOKENS[0][:-1]),
                         (("authorization", TOKENS[0]),), (("x-token", TOKENS[0]),)]:
            assert _code(lambda m=metadata: _infer(channel, m)) == grpc.StatusCode.UNAUTHENTICATED, metadata


def test_unauthenticated_callers_get_no_reflection_and_no_method_list(token_server: ServerThread) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        listing = [reflection_pb2.ServerReflectionRequest(list_services="")]
        assert _code(lambda: list(reflect(iter(listing), timeout=10))) == grpc.StatusCode.UNAUTHENTICATED
        services = list(reflect(iter(listing), metadata=_bearer(TOKENS[0]), timeout=10))
        assert services[0].list_services_response.service
        unknown = channel.unary_unary("/nope.Service/Method", request_serializer=None, response_deserializer=None)
        assert _code(lambda: unknown(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: unknown(b"", metadata=_bearer(TOKENS[0]), timeout=10)) == grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture(scope="module")
def open_health_server(tiny_repository: Path) -> Iterator[ServerThread]:
    yield from _serve(tiny_repository, tokens=TOKENS[1], auth_health="none")


def _health(channel: grpc.Channel, service: str, metadata: tuple = ()) -> object:
    """The status of ``service``, or the status code the Check RPC failed with."""
    try:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10).status
    except grpc.RpcError as error:
        return error.code()


def _first_watch(channel: grpc.Channel, service: str, metadata: tuple = ()) -> object:
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10)
    try:
        return next(stream).status
    except grpc.RpcError as error:
        return error.code()
    finally:
        stream.cancel()


def test_health_without_a_token_answers_only_the_overall_service(token_server: ServerThread) -> None:
    """Probes carry no token and ask for ""; per-model health would tell anyone which names exist."""
    serving, unauthenticated = health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(token_server.address) as channel:
        assert _health(channel, "") == serving
        assert _first_watch(channel, "") == serving
        for name in ("tiny_cnn", "nope", "inference.GRPCInferenceService"):
            assert _health(channel, name) == unauthenticated, name  # the same answer, known name or not
            assert _first_watch(channel, name) == unauthenticated, name
        assert _health(channel, "tiny_cnn", _bearer(TOKENS[0])) == serving
        assert _first_watch(channel, "tiny_cnn", _bearer(TOKENS[0])) == serving
        assert _health(channel, "nope", _bearer(TOKENS[0])) == grpc.StatusCode.NOT_FOUND


def test_auth_health_none_leaves_per_model_health_open(open_health_server: ServerThread) -> None:
    with grpc.insecure_channel(open_health_server.address) as channel:
        assert _health(channel, "tiny_cnn") == health_pb2.HealthCheckResponse.SERVING
        assert _health(channel, "broken_cnn") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(channel, "nope") == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: _infer(channel)) == grpc.StatusCode.UNAUTHENTICATED


def test_tls_with_token_and_auth_health(tls_server: ServerThread, certs: Path) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    with grpc.secure_channel(tls_server.address, credentials) as channel:
        assert _infer(channel, _bearer(TOKENS[0])).shape == (10,)
        assert _code(lambda: _infer(channel)) == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert _code(lambda: health.Check(check, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert health.Check(check, metadata=_bearer(TOKENS[0]), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(tls_server.address) as plain:  # no TLS handshake, no service
        assert _code(lambda: _infer(plain, _bearer(TOKENS[0]))) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    mtls_server: ServerThread, certs: Path, tmp_path: Path
) -> None:
    ca = (certs / "ca.pem").read_bytes()
    with_cert = grpc.ssl_channel_credentials(ca, (certs / "client.key").read_bytes(),
                                             (certs / "client.pem").read_bytes())
    with grpc.secure_channel(mtls_server.address, with_cert) as channel:
        assert _infer(channel).shape == (10,)
    with grpc.secure_channel(mtls_server.address, grpc.ssl_channel_credentials(ca)) as channel:
        assert _code(lambda: _infer(channel)) == grpc.StatusCode.UNAVAILABLE
    other = certificates.make(tmp_path)  # a client certificate from another CA
    stranger = grpc.ssl_channel_credentials(ca, (other / "client.key").read_bytes(), (other / "client.pem").read_bytes())
    with grpc.secure_channel(mtls_server.address, stranger) as channel:
        assert _code(lambda: _infer(channel)) == grpc.StatusCode.UNAVAILABLE


def test_access_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        settings.validate(Settings(tls_cert=tmp_path / "a.pem"))
    with pytest.raises(ValueError, match="needs tls_cert"):
        settings.validate(Settings(tls_client_ca=tmp_path / "ca.pem"))
    empty = tmp_path / "tokens"
    empty.write_text("# nothing but a comment\n\n")
    with pytest.raises(ValueError, match="none was found"):
        security.load_tokens(Settings(token_file=empty))
    chosen = settings.from_sources({}, {"LAYERSERVE_TOKENS": " a, b ,,", "LAYERSERVE_AUTH_HEALTH": "all"})
    assert security.load_tokens(chosen) == ["a", "b"] and chosen.auth_health == "all"
    assert "a, b" not in repr(chosen)  # tokens stay out of logs
    assert not security.TokenAuth(["a"]).allows((("authorization", "Bearer "),))


# ---------------------------------------------------------------- the same access over HTTP/REST

_REST_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "data": X.ravel().tolist()}]}).encode()


def _rest(url: str, token: str | None = None, body: bytes | None = None,
          context: ssl.SSLContext | None = None) -> int:
    """The HTTP status of a GET (or a POST of ``body``) to ``url``, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_rest_takes_the_same_tokens_and_leaves_only_the_probes_open(token_server: ServerThread) -> None:
    base = token_server.http_url
    infer = f"{base}/v2/models/tiny_cnn/infer"
    assert [_rest(infer, token, _REST_BODY) for token in TOKENS] == [200, 200]
    for token in (None, "wrong", TOKENS[0] + "x"):
        assert _rest(infer, token, _REST_BODY) == 401
    assert _rest(f"{base}/v2/models/nope/infer", None, _REST_BODY) == 401  # no token: no name is told apart
    assert _rest(f"{base}/v9/what", None) == 401 and _rest(f"{base}/v9/what", TOKENS[0]) == 404  # nor any path
    assert _rest(f"{base}/v2/health/live") == 200 and _rest(f"{base}/v2/health/ready") == 200
    assert _rest(f"{base}/v2/models/tiny_cnn/ready") == 401  # a named model's health needs a token
    assert _rest(f"{base}/v2/models/tiny_cnn/ready", TOKENS[0]) == 200
    assert _rest(f"{base}/v2", None) == 401 and _rest(f"{base}/v2", TOKENS[1]) == 200


def test_rest_over_tls_and_mutual_tls(tls_server: ServerThread, mtls_server: ServerThread, certs: Path) -> None:
    trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    https = tls_server.http_url.replace("http://", "https://")
    assert _rest(f"{https}/v2/models/tiny_cnn/infer", TOKENS[0], _REST_BODY, trusted) == 200
    assert _rest(f"{https}/v2/health/ready", None, None, trusted) == 401  # --auth-health all
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext HTTP to a TLS port: no answer
        urllib.request.urlopen(f"{tls_server.http_url}/v2/health/live", timeout=10)
    mutual = mtls_server.http_url.replace("http://", "https://")
    with_cert = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with_cert.load_cert_chain(certs / "client.pem", certs / "client.key")
    assert _rest(f"{mutual}/v2/models/tiny_cnn/infer", None, _REST_BODY, with_cert) == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        _rest(f"{mutual}/v2/models/tiny_cnn/infer", None, _REST_BODY, trusted)  # no client certificate
