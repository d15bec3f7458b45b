"""Hostile input: malformed ModelInfer / Chain requests and garbage bytes against a real server.

The strategies here generate what a careless or hostile client sends: random and
unicode names, unknown datatypes, wrong ranks, negative and huge dimensions, raw
byte lengths that disagree with the shape, missing, extra and duplicate inputs,
empty batches, NaN/Inf, typed and raw contents mixed, unknown parameters, and
undecodable or truncated protobuf bytes, names of up to 1 MB and random bytes in
every string field of every request that has one. ``check`` sends one and
classifies the answer: a client mistake must get a proper status (never UNKNOWN
or INTERNAL) with a message of at most MAX_DETAILS_BYTES, and an OK answer must
equal in-process ONNX Runtime on the same inputs; the server's ``/metrics`` must
stay under METRICS_MAX_BYTES however many names were tried.
tests/server/test_server_hostile.py runs a bounded number; this script runs many::

    python -m bench.fuzz --requests 10000            # against models/ on a server it starts
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.output import emit
from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import layerserve_pb2 as lpb
from layerserve.proto import names
from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.proto.tensors import CONTENTS_FIELD, DATATYPES, decode_input
from layerserve.server.errors import MAX_MESSAGE_BYTES

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CHAIN = "/layerserve.v1.LayerService/Chain"
# Codes that are never a right answer to a client's mistake.
FORBIDDEN = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
TIMEOUT_S = 30.0
# No status message may be longer (the server cuts echoes; gRPC clients refuse trailers over 16 KiB).
MAX_DETAILS_BYTES = MAX_MESSAGE_BYTES
# /metrics of a server of models/ (two models, 14 served names) after any number of hostile names.
METRICS_MAX_BYTES = 512 * 1024
MAX_NAME_CHARS = 1_000_000
# Every RPC of ours whose request has string fields: (method, request type).
STRING_METHODS = [
    (MODEL_INFER, pb.ModelInferRequest),
    (CHAIN, lpb.ChainRequest),
    ("/inference.GRPCInferenceService/ModelReady", pb.ModelReadyRequest),
    ("/inference.GRPCInferenceService/ModelMetadata", pb.ModelMetadataRequest),
    ("/inference.GRPCInferenceService/ModelStatistics", pb.ModelStatisticsRequest),
    ("/layerserve.v1.LayerService/ListBlocks", lpb.ListBlocksRequest),
]


@dataclass
class Reference:
    """In-process ONNX Runtime sessions for every served name of a repository's latest versions."""

    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    blocks: dict[str, list[ort.InferenceSession]] = field(default_factory=dict)
    inputs: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # name -> (input, shape)
    versions: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, repository: Path, skip: frozenset[str] = frozenset()) -> Reference:
        reference = cls()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        for model in sorted(p for p in Path(repository).iterdir() if p.is_dir() and p.name not in skip):
            folders = version_folders(model)
            reference.versions[model.name] = [f.name for f in folders]
            folder = folders[-1]
            manifest = read_manifest(folder)

            def session(path: str, folder: Path = folder) -> ort.InferenceSession:
                return ort.InferenceSession(str(folder / path), options, providers=["CPUExecutionProvider"])

            reference.sessions[model.name] = reference.sessions[names.chain_name(model.name)] = session(
                manifest.full_model.path
            )
            first = manifest.inputs[0]
            reference.inputs[model.name] = reference.inputs[names.chain_name(model.name)] = (first.name, tuple(first.shape))
            chain = []
            for block in manifest.blocks:
                reference.sessions[names.block_name(model.name, block.name)] = session(block.file.path)
                chain.append(reference.sessions[names.block_name(model.name, block.name)])
                spec = block.inputs[0]
                reference.inputs[names.block_name(model.name, block.name)] = (spec.name, tuple(spec.shape))
            reference.blocks[model.name] = chain
        return reference

    def names(self) -> list[str]:
        return sorted(self.sessions)

    def expected(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[name]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    def valid_request(self, name: str, rows: int = 2, seed: int = 0) -> tuple[pb.ModelInferRequest, dict]:
        """A correct request for ``name`` and the outputs ONNX Runtime gives for it."""
        tensor, shape = self.inputs[name]
        array = np.random.default_rng(seed).standard_normal((rows, *shape[1:])).astype(np.float32)
        request = pb.ModelInferRequest(model_name=name)
        request.inputs.add(name=tensor, datatype="FP32", shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
        return request, self.expected(name, {tensor: array})


def outputs_match(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    """Same names, shapes and values (NaN where ONNX Runtime has NaN)."""
    if got.keys() != want.keys():
        return False
    return all(
        got[k].shape == want[k].shape and np.allclose(got[k], want[k], rtol=1e-4, atol=1e-5, equal_nan=True)
        for k in want
    )


def decode_response(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        t.name: np.frombuffer(raw, DATATYPES[t.datatype]).reshape(tuple(t.shape))
        for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


# ---------------------------------------------------------------- strategies

_SPECIALS = (0.0, math.nan, math.inf, -math.inf, 3.4e38, -0.0, 1e-45)
_DATATYPES = sorted(DATATYPES) + ["BYTES", "FP8", "", "fp32", "FP32 "]


def _dimension() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(-2, 70),
        st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63)]),
        st.integers(-(2**63), 2**63 - 1),
    )


@st.composite
def _tensor(draw: st.DrawFn, names: list[str], shapes: list[tuple[int, ...]], fit: bool = False) -> dict:
    """One input tensor's declaration and payload, often almost right."""
    if fit:  # the right name, datatype and shape: some of these are valid, some one step off
        name, datatype, base = names[0], "FP32", shapes[0]
        shape = [draw(st.integers(0, 4)), *base[1:]]
        mode = draw(st.sampled_from(["exact", "exact", "exact", "typed", "off_by_some"]))
    else:
        name = draw(st.one_of(st.sampled_from(names), st.text(max_size=8)))
        datatype = draw(st.one_of(st.sampled_from(["FP32"] * 4 + _DATATYPES), st.text(max_size=6)))
        base = draw(st.sampled_from(shapes))
        shape = draw(_shape(base))
        mode = draw(st.sampled_from(["exact", "exact", "random", "typed", "both", "none", "off_by_some"]))
    seed = draw(st.integers(0, 2**32 - 1))
    special = draw(st.sampled_from(_SPECIALS))
    return {"name": name, "datatype": datatype, "shape": shape, "mode": mode, "seed": seed, "special": special,
            "bytes": draw(st.binary(max_size=300)), "delta": draw(st.integers(-9, 9).filter(bool))}


def _shape(base: tuple[int, ...]) -> st.SearchStrategy[list[int]]:
    return st.one_of(
            st.integers(-1, 70).map(lambda rows, base=base: [rows, *base[1:]]),
            st.lists(_dimension(), max_size=8),
            st.lists(st.integers(0, 3), min_size=65, max_size=70),  # deeper than numpy allows
            st.just([*base[1:]]),  # batch dimension left out
    )


def _payload(tensor: dict) -> tuple[bytes | None, list | None]:
    """(raw bytes, typed values) for a tensor description; sizes capped so nothing here is huge."""
    with np.errstate(all="ignore"):  # casting NaN/Inf to integers is part of the point
        return _values(tensor)


def _values(tensor: dict) -> tuple[bytes | None, list | None]:
    dtype = DATATYPES.get(tensor["datatype"], np.dtype("<f4"))
    count = math.prod(tensor["shape"]) if all(d >= 0 for d in tensor["shape"]) else -1
    small = 0 <= count <= 65536
    rng = np.random.default_rng(tensor["seed"])
    values = rng.standard_normal(count if small else 8) * 3
    if values.size:
        values[rng.integers(0, values.size, max(1, values.size // 8))] = tensor["special"]
    values = np.nan_to_num(values, nan=0.0, posinf=1e3, neginf=-1e3) if dtype.kind != "f" else values
    array = values.astype(dtype) if dtype.kind == "f" else (values * 50).astype(np.int64).astype(dtype, copy=False)
    mode = tensor["mode"]
    if mode == "exact":
        return array.tobytes(), None
    if mode == "off_by_some":
        data = array.tobytes()
        return (data[: tensor["delta"]] if tensor["delta"] < 0 else data + b"\0" * tensor["delta"]), None
    if mode == "random":
        return tensor["bytes"], None
    typed = (values * 1000).astype(np.int64).tolist() if dtype.kind in "iub" else values.tolist()
    if mode == "typed":
        return None, typed
    if mode == "both":
        return array.tobytes(), typed
    return None, None


def _set_typed(message: pb.ModelInferRequest.InferInputTensor, datatype: str, values: list, mix: bool) -> None:
    field_name = CONTENTS_FIELD.get(datatype, "fp32_contents")
    target = getattr(message.contents, field_name)
    if field_name == "bool_contents":
        target.extend(bool(v) for v in values)
    elif field_name.startswith("uint"):
        bits = 64 if field_name == "uint64_contents" else 32
        target.extend(abs(int(v)) % (1 << bits) for v in values)
    elif field_name.startswith("int"):
        bits = 64 if field_name == "int64_contents" else 32
        target.extend(max(min(int(v), (1 << (bits - 1)) - 1), -(1 << (bits - 1))) for v in values)
    else:
        target.extend(float(v) for v in values)
    if mix:  # a second, contradicting contents field
        message.contents.int_contents.extend([1, 2, 3])


@st.composite
def infer_requests(draw: st.DrawFn, reference: Reference) -> pb.ModelInferRequest:
    """A ModelInferRequest that is usually wrong in one or several ways."""
    names = reference.names()
    model = draw(st.one_of(st.sampled_from(names), st.text(max_size=12), st.sampled_from([n.upper() for n in names])))
    request = pb.ModelInferRequest(model_name=model, id=draw(st.text(max_size=4)))
    # Some requests are right but for their values (NaN, Inf, huge): their answers are checked.
    clean = model in reference.inputs and draw(st.integers(0, 3)) == 0
    if not clean:
        request.model_version = draw(st.one_of(st.just(""), st.sampled_from(["1", "2", "3", "0", "-1", "01"]),
                                               st.text(max_size=4)))
    spec_names = sorted({spec[0] for spec in reference.inputs.values()})
    shapes = sorted({spec[1] for spec in reference.inputs.values()})
    if model in reference.inputs and (clean or draw(st.booleans())):
        own_name, own_shape = reference.inputs[model]
        tensors = [draw(_tensor([own_name], [own_shape], fit=True))]
        if not clean:
            tensors += draw(st.lists(_tensor(spec_names, shapes), max_size=1))  # sometimes one too many
    else:
        tensors = draw(st.lists(_tensor(spec_names, shapes), max_size=3))
    mix = draw(st.booleans())
    raws: list[bytes] = []
    for tensor in tensors:
        message = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        raw, typed = _payload(tensor)
        if typed is not None:
            _set_typed(message, tensor["datatype"], typed, mix and tensor["mode"] == "typed")
        raws.append(raw if raw is not None else b"")
        if draw(st.booleans()):
            message.parameters[draw(st.text(max_size=6))].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    if any(t["mode"] in ("exact", "random", "both", "off_by_some") for t in tensors):
        request.raw_input_contents.extend(raws)
        if not clean and draw(st.integers(0, 9)) == 0:
            request.raw_input_contents.append(b"\0" * 4)  # one raw content too many
    for output in [] if clean else draw(st.lists(st.one_of(st.sampled_from(["logits", "h1", "h2"]), st.text(max_size=6)),
                                max_size=2)):
        request.outputs.add(name=output)
    if draw(st.booleans()):
        request.parameters[draw(st.text(max_size=8))].string_param = draw(st.text(max_size=8))
    return request


@st.composite
def chain_requests(draw: st.DrawFn, reference: Reference) -> lpb.ChainRequest:
    """A Chain request with a random range, kept blocks and a (usually malformed) inner request."""
    inner = draw(infer_requests(reference))
    models = sorted(reference.blocks)
    request = lpb.ChainRequest(
        model_name=draw(st.one_of(st.sampled_from(models), st.text(max_size=8))),
        model_version=inner.model_version,
        start=draw(st.integers(-2, 6)),
        keep=draw(st.lists(st.integers(-2, 6), max_size=3)),
        request=inner,
    )
    if draw(st.booleans()):
        request.stop = draw(st.integers(-2, 6))
    return request


@st.composite
def garbage_payloads(draw: st.DrawFn, reference: Reference) -> bytes:
    """Bytes that are not a ModelInferRequest: random, truncated or bit-flipped serializations."""
    valid = draw(infer_requests(reference)).SerializeToString()
    kind = draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=400))
    if kind == "truncated" and valid:
        return valid[: draw(st.integers(0, len(valid) - 1))]
    data = bytearray(valid or b"\x0a")
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def string_paths(descriptor: Descriptor, depth: int = 3) -> list[tuple[int, ...]]:
    """Field-number paths to every string field of ``descriptor`` (through nested messages and map
    entries, ``depth`` levels down)."""
    paths: list[tuple[int, ...]] = []
    for spec in descriptor.fields:
        if spec.type == FieldDescriptor.TYPE_STRING:
            paths.append((spec.number,))
        elif spec.type == FieldDescriptor.TYPE_MESSAGE and depth > 1:
            paths += [(spec.number, *rest) for rest in string_paths(spec.message_type, depth - 1)]
    return paths


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_string(serialized: bytes, path: tuple[int, ...], value: bytes) -> bytes:
    """``serialized`` with ``value`` (any bytes) as the string at ``path``: appended on the wire, so it
    overrides a singular field and adds an element (or map entry) to a repeated one."""
    payload = _length_delimited(path[-1], value)
    for number in reversed(path[:-1]):
        payload = _length_delimited(number, payload)
    return serialized + payload


def _name_text(draw: st.DrawFn) -> str:
    """Mostly short names; sometimes up to MAX_NAME_CHARS characters (a repeated unicode seed)."""
    size = draw(st.one_of(st.integers(0, 40), st.integers(1_000, MAX_NAME_CHARS)))
    seed = draw(st.text(min_size=1, max_size=8))
    return (seed * (size // len(seed) + 1))[:size]


@st.composite
def string_field_payloads(draw: st.DrawFn, reference: Reference) -> tuple[str, bytes]:
    """(method, request bytes) with one string field holding a huge name, random text or random bytes
    (usually not UTF-8, which protobuf refuses to parse)."""
    method, message_type = draw(st.sampled_from(STRING_METHODS))
    if message_type is pb.ModelInferRequest:
        base = draw(infer_requests(reference)).SerializeToString()
    elif message_type is lpb.ChainRequest:
        base = draw(chain_requests(reference)).SerializeToString()
    else:
        base = message_type(**{message_type.DESCRIPTOR.fields[0].name: draw(st.sampled_from(reference.names()))}
                            ).SerializeToString()
    path = draw(st.sampled_from(string_paths(message_type.DESCRIPTOR)))
    value = draw(st.one_of(st.builds(lambda t: t.encode(), st.text(max_size=64)),
                           st.binary(min_size=1, max_size=256),
                           st.just(None)))
    if value is None:
        value = _name_text(draw).encode()
    return method, with_string(base, path, value)


# ---------------------------------------------------------------- sending and judging


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    wrong_answer: bool = False


class Prober:
    """Sends hostile requests over one channel and judges each answer against ``reference``."""

    def __init__(self, channel: grpc.Channel, reference: Reference) -> None:
        self.reference = reference
        self._channel = channel
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._infer = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._chain = channel.unary_unary(CHAIN, request_serializer=None, response_deserializer=None)

    def _send(self, call: grpc.UnaryUnaryMultiCallable, payload: bytes) -> tuple[bytes | None, Outcome]:
        try:
            return call(payload, timeout=TIMEOUT_S), Outcome(grpc.StatusCode.OK, "")
        except grpc.RpcError as error:
            return None, Outcome(error.code(), error.details() or "")

    def infer(self, request: pb.ModelInferRequest) -> Outcome:
        reply, outcome = self._send(self._infer, request.SerializeToString())
        if reply is not None:
            outcome.wrong_answer = not self._right(request, pb.ModelInferResponse.FromString(reply))
        return outcome

    def _right(self, request: pb.ModelInferRequest, response: pb.ModelInferResponse) -> bool:
        name = response.model_name
        versions = self.reference.versions.get(name.split(".")[0], [])
        if name not in self.reference.sessions or (versions and response.model_version != versions[-1]):
            return True  # an older version: the reference holds the latest only
        raw = request.raw_input_contents
        inputs = {t.name: decode_input(t, raw[i] if raw else None) for i, t in enumerate(request.inputs)}
        want = self.reference.expected(name, inputs)
        asked = [o.name for o in request.outputs]
        return outputs_match(decode_response(response), {k: want[k] for k in asked} if asked else want)

    def chain(self, request: lpb.ChainRequest) -> Outcome:
        reply, outcome = self._send(self._chain, request.SerializeToString())
        if reply is not None:
            outcome.wrong_answer = not self._chain_right(request, lpb.ChainResponse.FromString(reply))
        return outcome

    def _chain_right(self, request: lpb.ChainRequest, response: lpb.ChainResponse) -> bool:
        blocks = self.reference.blocks.get(request.model_name)
        versions = self.reference.versions.get(request.model_name, [])
        if blocks is None or response.response.model_version != versions[-1]:
            return True
        inner = request.request
        raw = inner.raw_input_contents
        feeds = {t.name: decode_input(t, raw[i] if raw else None) for i, t in enumerate(inner.inputs)}
        stop = request.stop if request.HasField("stop") else len(blocks)
        for session in blocks[request.start : stop]:
            names = [o.name for o in session.get_outputs()]
            feeds = dict(zip(names, session.run(names, feeds), strict=True))
        got = {k: v for k, v in decode_response(response.response).items() if "/" not in k}
        return outputs_match(got, feeds)

    def garbage(self, payload: bytes) -> Outcome:
        _, outcome = self._send(self._infer, payload)
        return outcome

    def raw(self, method_and_payload: tuple[str, bytes]) -> Outcome:
        """Send request bytes to any of our methods; an OK ModelInfer answer is checked."""
        method, payload = method_and_payload
        if method not in self._calls:
            self._calls[method] = self._channel.unary_unary(method, request_serializer=None,
                                                            response_deserializer=None)
        reply, outcome = self._send(self._calls[method], payload)
        if reply is not None and method == MODEL_INFER:
            request = pb.ModelInferRequest.FromString(payload)  # the server parsed it, so this does
            outcome.wrong_answer = not self._right(request, pb.ModelInferResponse.FromString(reply))
        return outcome

    def still_right(self, name: str, seed: int = 0) -> bool:
        """A valid request gets the right answer (the server survived whatever came before)."""
        request, want = self.reference.valid_request(name, rows=2, seed=seed)
        reply, outcome = self._send(self._infer, request.SerializeToString())
        return reply is not None and outputs_match(decode_response(pb.ModelInferResponse.FromString(reply)), want)


def acceptable(outcome: Outcome) -> bool:
    """A proper answer: no UNKNOWN/INTERNAL for a client mistake, a bounded message, no wrong OK answer."""
    return (outcome.code not in FORBIDDEN and not outcome.wrong_answer
            and len(outcome.details.encode()) <= MAX_DETAILS_BYTES)


def metrics_bytes(port: int) -> int:
    """Size of the server's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return len(reply.read())


# ---------------------------------------------------------------- the long run


def run(address: str, reference: Reference, requests: int, seed: int = 0) -> dict[str, object]:
    """Send ``requests`` hostile requests (infer, chain, garbage and string fields in turn), checking a
    valid request after every 50; returns the status histogram and every unacceptable outcome."""
    codes: collections.Counter[str] = collections.Counter()
    bad: list[dict[str, str]] = []
    checks_failed = 0
    sent = 0
    longest = 0
    started = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        prober = Prober(channel, reference)
        strategies = [
            (infer_requests(reference), prober.infer),
            (chain_requests(reference), prober.chain),
            (garbage_payloads(reference), prober.garbage),
            (string_field_payloads(reference), prober.raw),
        ]
        share = [requests * 5 // 10, requests * 2 // 10, requests // 10]
        share.append(requests - sum(share))

        def judged(send: Callable[[object], Outcome]) -> Callable[[object], None]:
            def one(message: object) -> None:
                nonlocal sent, checks_failed, longest
                outcome = send(message)
                sent += 1
                codes[outcome.code.name] += 1
                longest = max(longest, len(outcome.details.encode()))
                if not acceptable(outcome) and len(bad) < 50:
                    bad.append({"code": outcome.code.name, "details": outcome.details[:300],
                                "wrong_answer": str(outcome.wrong_answer)})
                if sent % 50 == 0 and not prober.still_right(reference.names()[sent % len(reference.names())]):
                    checks_failed += 1

            return one

        for (strategy, send), count in zip(strategies, share, strict=True):
            hypothesis_settings = settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
                                           suppress_health_check=list(HealthCheck))
            hypothesis_settings(given(strategy)(judged(send)))()
        final_ok = all(prober.still_right(name) for name in reference.names())
    return {
        "requests": sent,
        "seconds": round(time.perf_counter() - started, 1),
        "status_codes": dict(codes.most_common()),
        "longest_status_message_bytes": longest,
        "unacceptable": bad,
        "valid_checks_failed": checks_failed,
        "final_valid_requests_right": final_ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--address", help="an already running server (default: start one on a free port)")
    parser.add_argument("--out", type=Path, help="write the JSON result here too")
    parser.add_argument("--skip", nargs="*", default=[], help="models known to be unavailable")
    args = parser.parse_args(argv)
    reference = Reference.load(args.models, frozenset(args.skip))
    if args.address:
        result = run(args.address, reference, args.requests)
    else:
        from layerserve.server.launcher import ServerProcess

        with ServerProcess(args.models, ["--log-level", "ERROR"]) as server:
            before = metrics_bytes(server.metrics_port)
            result = run(server.address, reference, args.requests)
            result["metrics_bytes"] = {"before": before, "after": metrics_bytes(server.metrics_port),
                                       "bound": METRICS_MAX_BYTES}
            result["server_alive"] = server.process.poll() is None
    emit(result, args.out)
    ok = not result["unacceptable"] and not result["valid_checks_failed"] and result["final_valid_requests_right"]
    ok = ok and result.get("metrics_bytes", {}).get("after", 0) <= METRICS_MAX_BYTES
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
