"""Where to cut a model between a near and a far endpoint: the planner's math, pure and small.

Neurosurgeon's decision (Kang et al., ASPLOS 2017) over a measured :class:`ModelProfile`:
cut ``k`` runs blocks ``[0, k)`` on the near endpoint (one Chain RPC from the client,
which sits next to it) and ``[k, n)`` on the far one (one Chain RPC over the link).
Cut 0 is all-far, cut ``n`` all-near. For every cut and every wire encoding of the
tensor that crosses (proto/encodings.py) the predicted latency is

    near  = sum(near compute [0, k)) + near RPC cost(input + activation k bytes)     (k > 0)
    link  = RTT + (activation k at the encoding + answer + framing) * 8 / rate          (k < n)
    far   = sum(far compute [k, n)) + far RPC cost(wire + answer bytes) + encode/decode time

where an endpoint's RPC cost is ``rpc_seconds + seconds_per_byte * bytes``
(client/profiling.py fits both). ``best`` minimises latency; or, with objective
``bytes``, the bytes sent over the link among the cuts that use the far endpoint (all-near
sends none, so it would always win; ``bytes`` answers "where to cut when the far side must
run the tail", e.g. over a metered link), latency breaking ties. A compressed encoding is a candidate only when its
measured agreement with FP32 reaches ``min_agreement``: the plan weighs bytes
against accuracy instead of trading one silently for the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from layerserve.proto.encodings import ENCODINGS, applies_to

from .link import Link
from .placement import BlockRange, Placement

Objective = Literal["latency", "bytes"]
OBJECTIVES: tuple[str, ...] = ("latency", "bytes")
# Bytes a Chain request or answer carries besides its tensor: HTTP/2 and gRPC framing, names, shapes.
FRAMING_BYTES = 400


@dataclass(frozen=True)
class EndpointProfile:
    """What an endpoint costs: per-block compute and one RPC's cost beyond compute and the link.

    ``block_seconds[i]``: block i's compute for one request of the profile's rows (the
    server's ModelStatistics); ``rpc_seconds + seconds_per_byte * payload`` is what the
    client waits on top of it (protobuf, gRPC, the server's decode and validation).
    """

    address: str
    block_seconds: tuple[float, ...]
    rpc_seconds: float
    seconds_per_byte: float

    def run_seconds(self, start: int, stop: int, payload_bytes: int) -> float:
        """One Chain RPC over blocks ``[start, stop)`` moving ``payload_bytes`` (request + answer)."""
        return sum(self.block_seconds[start:stop]) + self.rpc_seconds + self.seconds_per_byte * payload_bytes


@dataclass(frozen=True)
class ModelProfile:
    """Everything the planner needs, measured once; independent of the link (so it can be re-planned).

    ``cut_bytes[k]``: bytes of the tensor entering block k per request (``cut_bytes[0]``
    is the input, ``cut_bytes[n]`` the model's output), FP32 unless ``cut_datatypes[k]`` says
    otherwise; an encoding applies only to an FP32 cut (empty: every cut is FP32, as profiles
    written before the field). ``encode_seconds[e][k]``: encoding
    the tensor at cut k as ``e`` and decoding it back. ``agreement[e][k]``: the share of
    samples whose argmax is unchanged when cut k's tensor travels as ``e`` (None: not
    measured). ``accuracy`` likewise against labels, when there were labels.
    """

    model: str
    rows: int
    block_names: tuple[str, ...]
    cut_bytes: tuple[int, ...]
    near: EndpointProfile
    far: EndpointProfile
    encode_seconds: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    agreement: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)
    accuracy: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)
    samples: int = 0
    cut_datatypes: tuple[str, ...] = ()

    def encodable(self, cut: int) -> bool:
        """Whether a wire encoding changes what crosses ``cut`` (its tensor is FP32)."""
        return not self.cut_datatypes or applies_to(self.cut_datatypes[cut])

    def __post_init__(self) -> None:
        count = len(self.block_names)
        if len(self.cut_bytes) != count + 1:
            raise ValueError(f"cut_bytes expects {count + 1} entries (one per cut), got {len(self.cut_bytes)}")
        if self.cut_datatypes and len(self.cut_datatypes) != count + 1:
            raise ValueError(f"cut_datatypes expects {count + 1} entries (one per cut) or none, "
                             f"got {len(self.cut_datatypes)}")
        for side in (self.near, self.far):
            if len(side.block_seconds) != count:
                raise ValueError(f"{side.address} profile expects {count} block times, got {len(side.block_seconds)}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelProfile:
        """The inverse of :meth:`to_dict` (what ``layerserve plan --json`` printed)."""
        def endpoint(value: Mapping[str, object]) -> EndpointProfile:
            return EndpointProfile(str(value["address"]), tuple(value["block_seconds"]), float(value["rpc_seconds"]),
                                   float(value["seconds_per_byte"]))

        def per_cut(value: object) -> dict[str, tuple]:
            return {str(k): tuple(v) for k, v in dict(value or {}).items()}

        return cls(str(data["model"]), int(data["rows"]), tuple(data["block_names"]), tuple(data["cut_bytes"]),
                   endpoint(data["near"]), endpoint(data["far"]), per_cut(data.get("encode_seconds")),
                   per_cut(data.get("agreement")), per_cut(data.get("accuracy")), int(data.get("samples", 0)),
                   tuple(data.get("cut_datatypes") or ()))


@dataclass(frozen=True)
class Estimate:
    """One candidate: cut ``k`` with the crossing tensor sent as ``encoding``, and its predicted cost."""

    cut: int
    encoding: str
    near_seconds: float
    link_seconds: float
    far_seconds: float
    link_bytes: int
    agreement: float | None = None
    refused: str | None = None  # why the planner may not pick it

    @property
    def seconds(self) -> float:
        return self.near_seconds + self.link_seconds + self.far_seconds

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "seconds": self.seconds}


@dataclass(frozen=True)
class Plan:
    """Every candidate's prediction and the chosen one; :meth:`placement` runs it."""

    model: str
    near: str
    far: str
    link: Link
    objective: str
    rows: int
    block_names: tuple[str, ...]
    estimates: tuple[Estimate, ...]
    best: Estimate

    def placement(self, estimate: Estimate | None = None) -> Placement:
        """The Placement that runs ``estimate`` (default: the best): ``[0, k)`` near, ``[k, n)`` far."""
        chosen = estimate or self.best
        count = len(self.block_names)
        ranges = []
        if chosen.cut > 0:
            ranges.append(BlockRange(0, chosen.cut - 1, self.near))
        if chosen.cut < count:
            ranges.append(BlockRange(chosen.cut, count - 1, self.far, chosen.encoding))
        return Placement(tuple(ranges))

    def describe(self, estimate: Estimate) -> str:
        """``after 02_stage2 (int8)``, ``all near``, ``all far (fp16)``."""
        if estimate.cut == len(self.block_names):
            return "all near"
        where = "all far" if estimate.cut == 0 else f"after {self.block_names[estimate.cut - 1]}"
        return where if estimate.encoding == "fp32" else f"{where} ({estimate.encoding})"

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model, "near": self.near, "far": self.far, "link": str(self.link),
            "objective": self.objective, "rows": self.rows, "block_names": list(self.block_names),
            "estimates": [e.to_dict() for e in self.estimates],
            "best": {"cut": self.best.cut, "encoding": self.best.encoding},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Plan:
        """The inverse of :meth:`to_dict`; KeyError or ValueError for a document that is not a plan."""
        fields = ("cut", "encoding", "near_seconds", "link_seconds", "far_seconds", "link_bytes", "agreement",
                  "refused")
        estimates = tuple(Estimate(**{k: e.get(k) for k in fields}) for e in data["estimates"])
        wanted = data["best"]
        best = next((e for e in estimates if (e.cut, e.encoding) == (wanted["cut"], wanted["encoding"])), None)
        if best is None:
            raise ValueError(f"plan names best cut {wanted} but lists no such estimate")
        return cls(str(data["model"]), str(data["near"]), str(data["far"]), Link.parse(str(data["link"])),
                   str(data["objective"]), int(data["rows"]), tuple(data["block_names"]), estimates, best)


def estimate(profile: ModelProfile, link: Link, cut: int, encoding: str) -> Estimate:
    """The predicted cost of one candidate (module docstring); no refusal is decided here."""
    count = len(profile.block_names)
    if not 0 <= cut <= count:
        raise ValueError(f"cut expects 0..{count}, got {cut}")
    input_bytes, output_bytes = profile.cut_bytes[0], profile.cut_bytes[count]
    if cut == count:
        near = profile.near.run_seconds(0, count, input_bytes + output_bytes)
        return Estimate(cut, "fp32", near, 0.0, 0.0, 0)
    near = profile.near.run_seconds(0, cut, input_bytes + profile.cut_bytes[cut]) if cut > 0 else 0.0
    wire = ENCODINGS[encoding].wire_bytes(profile.cut_bytes[cut]) if profile.encodable(cut) else profile.cut_bytes[cut]
    request, answer = wire + FRAMING_BYTES, output_bytes + FRAMING_BYTES
    coding = profile.encode_seconds.get(encoding, ())[cut] if encoding != "fp32" else 0.0
    far = profile.far.run_seconds(cut, count, wire + output_bytes) + (coding or 0.0)
    agreement = profile.agreement.get(encoding, (None,) * (count + 1))[cut] if encoding != "fp32" else 1.0
    return Estimate(cut, encoding, near, link.transfer_seconds(request, answer), far, request + answer, agreement)


def plan(
    profile: ModelProfile,
    link: Link,
    near: str,
    far: str,
    objective: Objective = "latency",
    encodings: Sequence[str] = ("fp32",),
    min_agreement: float = 0.99,
) -> Plan:
    """Every cut at every encoding in ``encodings`` (cut n only as fp32: nothing crosses), and the best
    (module docstring).

    ValueError for an unknown objective or encoding. A compressed candidate whose
    agreement is unmeasured or below ``min_agreement`` is listed with ``refused`` set
    and never chosen; fp32 is always a candidate.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective expects one of {', '.join(OBJECTIVES)}, got {objective!r}")
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        raise ValueError(f"encodings expect some of {', '.join(ENCODINGS)}, got {unknown}")
    count = len(profile.block_names)
    chosen = list(dict.fromkeys(["fp32", *encodings]))
    # A cut that is not FP32 travels as it is: its only candidate is fp32.
    candidates = [estimate(profile, link, cut, e) for cut in range(count) for e in chosen
                  if e == "fp32" or profile.encodable(cut)]
    candidates.append(estimate(profile, link, count, "fp32"))
    candidates = [_judged(c, min_agreement) for c in candidates]
    allowed = [c for c in candidates if c.refused is None]
    if objective == "latency":
        best = min(allowed, key=lambda c: (c.seconds, c.link_bytes))
    else:
        best = min((c for c in allowed if c.cut < count), key=lambda c: (c.link_bytes, c.seconds))
    return Plan(profile.model, near, far, link, objective, profile.rows, profile.block_names, tuple(candidates), best)


def _judged(candidate: Estimate, min_agreement: float) -> Estimate:
    if candidate.encoding == "fp32" or min_agreement <= 0:
        return candidate
    if candidate.agreement is None:
        reason = "agreement with fp32 not measured (no samples)"
    elif candidate.agreement < min_agreement:
        reason = f"agreement {candidate.agreement:.1%} < {min_agreement:.1%}"
    else:
        return candidate
    return Estimate(**{**asdict(candidate), "refused": reason})
