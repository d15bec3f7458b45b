"""Hostile input against the real server: every malformed request gets a proper status (never
UNKNOWN or INTERNAL) with a bounded message, every OK answer equals in-process ONNX Runtime, and after
each one a valid request still gets the right answer; names of up to 1 MB and random bytes in every
string field leave /metrics within a fixed size. bench/fuzz.py holds the strategies and runs 10,000."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import struct
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import ServerThread

from bench.fuzz import (
    MAX_DETAILS_BYTES,
    Prober,
    Reference,
    acceptable,
    chain_requests,
    garbage_payloads,
    infer_requests,
    outputs_match,
    string_field_payloads,
)
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.server.settings import Settings

# Bounded for CI: the module runs in well under a minute on two shared cores.
BOUNDED = settings(max_examples=120, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def reference(tiny_repository: Path) -> Reference:
    return Reference.load(tiny_repository, skip=frozenset({"broken_cnn"}))


@pytest.fixture(scope="module")
def hostile_server(tiny_repository: Path) -> Iterator[ServerThread]:
    settings_ = Settings(models=tiny_repository, port=0, metrics_port=0, max_message_bytes=2 << 20)
    with ServerThread(settings_) as running:
        yield running


@pytest.fixture(scope="module")
def prober(hostile_server: ServerThread, reference: Reference) -> Iterator[Prober]:
    with grpc.insecure_channel(hostile_server.address) as channel:
        yield Prober(channel, reference)


def _judge(prober: Prober, outcome, label: str) -> None:
    assert acceptable(outcome), f"{label}: {outcome.code.name} {outcome.details!r} wrong_answer={outcome.wrong_answer}"
    assert prober.still_right("tiny_cnn"), f"a valid request failed after {label}"


@BOUNDED
@given(data=st.data())
def test_malformed_infer_requests_get_proper_statuses(prober: Prober, reference: Reference, data) -> None:
    request = data.draw(infer_requests(reference))
    _judge(prober, prober.infer(request), "ModelInfer")


@settings(BOUNDED, max_examples=60)
@given(data=st.data())
def test_malformed_chain_requests_get_proper_statuses(prober: Prober, reference: Reference, data) -> None:
    request = data.draw(chain_requests(reference))
    _judge(prober, prober.chain(request), "Chain")


# /metrics of this test process (every in-thread server's metrics, all label sets of their served names).
METRICS_MAX_BYTES = 256 * 1024


@settings(BOUNDED, max_examples=80)
@given(data=st.data())
def test_huge_names_and_random_bytes_in_every_string_field(prober: Prober, reference: Reference, data) -> None:
    outcome = prober.raw(data.draw(string_field_payloads(reference)))
    assert len(outcome.details.encode()) <= MAX_DETAILS_BYTES, outcome.details[:200]
    _judge(prober, outcome, "string field")


def test_a_megabyte_name_is_not_found_with_a_cut_message(prober: Prober) -> None:
    outcome = prober.raw(("/inference.GRPCInferenceService/ModelMetadata",
                          pb.ModelMetadataRequest(name="n" * 1_000_000).SerializeToString()))
    assert outcome.code == grpc.StatusCode.NOT_FOUND
    assert outcome.details.startswith("unknown model 'nnnn") and "...(+999920 chars)" in outcome.details


def test_metrics_stay_bounded_after_hostile_names(hostile_server: ServerThread) -> None:
    """After the names above, every model label is a served name or "", every rpc label one of ours."""
    import urllib.request

    from layerserve.server import metrics

    with urllib.request.urlopen(f"http://127.0.0.1:{hostile_server.running.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    assert len(text) <= METRICS_MAX_BYTES, len(text)
    models = set(re.findall(r'model="([^"]*)"', text))
    allowed = metrics.allowed_model_labels() | {""}
    assert models <= allowed, models - allowed
    rpcs = set(re.findall(r'rpc="([^"]*)"', text))
    ours = {*pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name,
            *lpb.DESCRIPTOR.services_by_name["LayerService"].methods_by_name, "unknown"}
    ours |= {f"http.{name}" for name in ours}  # REST reports its routes under the same names (server/rest.py)
    assert rpcs <= ours, rpcs - ours


@settings(BOUNDED, max_examples=60)
@given(data=st.data())
def test_undecodable_bytes_are_invalid_argument(prober: Prober, reference: Reference, data) -> None:
    payload = data.draw(garbage_payloads(reference))
    outcome = prober.garbage(payload)
    _judge(prober, outcome, "garbage bytes")


def test_garbage_payload_names_the_message_type(prober: Prober) -> None:
    outcome = prober.garbage(b"\xff\xff\xff\xff")
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details.startswith("ModelInfer request is not a valid ModelInferRequest: ")


def test_huge_declared_shape_is_refused_before_allocating(prober: Prober, hostile_server: ServerThread) -> None:
    """1 TiB declared (raw and typed) against a few bytes: refused, and the server process (this
    one: the server runs on a thread) never allocates anything near that size."""
    raw = pb.ModelInferRequest(model_name="tiny_cnn")
    raw.inputs.add(name="x", datatype="FP32", shape=[2**34, 1, 8, 8])
    raw.raw_input_contents.append(b"\0" * 256)
    typed = pb.ModelInferRequest(model_name="tiny_cnn")
    typed.inputs.add(name="x", datatype="FP32", shape=[2**34, 1, 8, 8]).contents.fp32_contents.extend([0.0] * 64)
    tracemalloc.start()
    try:
        outcomes = [prober.infer(raw), prober.infer(typed)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [o.code for o in outcomes] == [grpc.StatusCode.INVALID_ARGUMENT] * 2, outcomes
    assert "= 4398046511104 bytes, but its raw contents hold 256 bytes" in outcomes[0].details
    assert "= 1099511627776 elements, but fp32_contents holds 64" in outcomes[1].details
    assert peak < 64 << 20, f"peak traced allocation {peak} bytes"
    assert prober.still_right("tiny_cnn")


def test_deeper_than_numpy_and_out_of_range_typed_values_are_invalid_argument(prober: Prober) -> None:
    deep = pb.ModelInferRequest(model_name="tiny_cnn")
    deep.inputs.add(name="x", datatype="FP32", shape=[1] * 70)
    deep.raw_input_contents.append(b"\0" * 4)
    narrow = pb.ModelInferRequest(model_name="tiny_cnn")
    narrow.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    assert prober.infer(deep).details == "tiny_cnn input 'x' has rank 70; at most 64 dimensions are supported"
    outcome = prober.infer(narrow)
    assert (outcome.code, outcome.details) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tiny_cnn input 'x' is INT8 but int_contents holds values outside [-128, 127]")


# ---------------------------------------------------------------- raw HTTP/2 from a socket

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK 'literal header field without indexing, new name', no Huffman coding (RFC 7541 6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _grpc_stream(address: str, message: bytes) -> bytes:
    headers = b"".join(_literal(k, v) for k, v in [
        (":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", address), ("content-type", "application/grpc"), ("te", "trailers")])
    return (_PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x4, 1, headers)
            + _frame(0x0, 0x1, 1, message))


def _frames_back(sock: socket.socket, wait_s: float) -> list[tuple[int, int]]:
    """(type, stream) of every frame the server sends until stream 1 ends or ``wait_s`` passes quietly."""
    data = b""
    sock.settimeout(wait_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if _ends_stream_1(data):
                break
    except TimeoutError:
        pass
    frames, offset = [], 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        frames.append((data[offset + 3], int.from_bytes(data[offset + 5 : offset + 9], "big") & 0x7FFFFFFF))
        offset += 9 + length
    return frames


def _ends_stream_1(data: bytes) -> bool:
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags, stream = data[offset + 3], data[offset + 4], int.from_bytes(data[offset + 5 : offset + 9], "big")
        if stream == 1 and (kind == 0x3 or (kind == 0x1 and flags & 0x1)):
            return True
        offset += 9 + length
    return False


@pytest.mark.parametrize(("message", "answered"), [
    (b"\x00" + struct.pack(">I", 12) + b"\xff" * 12, True),  # a whole gRPC frame of garbage protobuf
    (b"\x01" + struct.pack(">I", 4) + b"abcd", True),  # 'compressed' with no compression negotiated
    (b"\x00" + struct.pack(">I", 1000) + b"x" * 10, False),  # the frame declares 1000 bytes, the stream ends at 10
    (b"\x00\x00\x00", False),  # not even a whole gRPC frame header
], ids=["garbage-message", "bogus-compression", "truncated-message", "truncated-header"])
def test_raw_http2_streams_never_get_an_answer_message_and_the_server_keeps_serving(
    hostile_server: ServerThread, prober: Prober, message: bytes, answered: bool
) -> None:
    """Whole frames are answered with an error status (trailers or RST_STREAM on stream 1); a
    truncated one is never answered with a message (gRPC leaves that stream to the client's own
    connection); either way the server keeps serving others while the hostile connection is open."""
    with socket.create_connection(("127.0.0.1", hostile_server.running.port), timeout=10) as sock:
        sock.sendall(_grpc_stream(hostile_server.address, message))
        frames = _frames_back(sock, wait_s=10 if answered else 2)
        assert (0x0, 1) not in frames, f"a response message came back: {frames}"
        if answered:
            assert any(stream == 1 and kind in (0x1, 0x3) for kind, stream in frames), frames
        assert prober.still_right("tiny_cnn")


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4,
                                  _PREFACE + b"\xff" * 64])
def test_non_grpc_bytes_on_the_port_close_that_connection_only(
    hostile_server: ServerThread, prober: Prober, junk: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", hostile_server.running.port), timeout=10) as sock:
        sock.sendall(junk)
        sock.settimeout(10)
        closed = False
        try:
            while sock.recv(65536):
                pass
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    assert closed, "the server kept a connection open that spoke no HTTP/2"
    assert prober.still_right("tiny_cnn")


# ---------------------------------------------------------------- the same requests over HTTP/REST


def _rest_body(request: pb.ModelInferRequest) -> tuple[bytes, dict[str, str]]:
    """The REST twin of a drawn ModelInfer request: raw contents as binary tensor data (their declared and
    real sizes alike), typed contents as JSON ``data``."""
    tensors, chunks = [], []
    for index, tensor in enumerate(request.inputs):
        entry: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if index < len(request.raw_input_contents):
            entry["parameters"] = {"binary_data_size": len(request.raw_input_contents[index])}
            chunks.append(request.raw_input_contents[index])
        else:
            entry["data"] = [v for name in ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                                            "uint64_contents", "fp32_contents", "fp64_contents")
                             for v in getattr(tensor.contents, name)]
        tensors.append(entry)
    header = json.dumps({"inputs": tensors, "outputs": [{"name": o.name} for o in request.outputs]},
                        allow_nan=False).encode() if _finite(tensors) else b'{"inputs": "NaN"}'
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def _finite(tensors: list[dict]) -> bool:
    return all(isinstance(v, bool) or math.isfinite(v) for t in tensors for v in t.get("data", []))


@settings(BOUNDED, max_examples=80)
@given(data=st.data())
def test_malformed_rest_requests_get_proper_statuses(hostile_server: ServerThread, reference: Reference,
                                                     data) -> None:
    request = data.draw(infer_requests(reference))
    body, headers = _rest_body(request)
    port = int(hostile_server.http_url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        path = "/v2/models/" + urllib.parse.quote(request.model_name or "-", safe="") + "/infer"
        connection.request("POST", path, body, headers)
        reply = connection.getresponse()
        answer = reply.read()
        assert reply.status in (200, 400, 404, 413, 503), (reply.status, answer[:300])
        if reply.status != 200:
            assert len(answer) <= MAX_DETAILS_BYTES + 64 and "error" in json.loads(answer), answer[:300]
        valid, want = reference.valid_request("tiny_cnn")
        body, headers = _rest_body(valid)
        connection.request("POST", "/v2/models/tiny_cnn/infer", body, headers)
        reply = connection.getresponse()
        got = json.loads(reply.read())["outputs"][0]
        assert reply.status == 200 and got["name"] == "logits"
        assert outputs_match({"logits": np.array(got["data"], np.float32).reshape(got["shape"])}, want)
    finally:
        connection.close()
