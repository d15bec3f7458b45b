"""The planner's choice on synthetic profiles: pure functions, no server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from layerserve.client import Link, LinkError, Placement, Plan
from layerserve.client.planner import FRAMING_BYTES, EndpointProfile, ModelProfile, estimate, plan
from layerserve.client.profiling import fit_rpc_cost

MS = 1e-3
NEAR, FAR = "near:1", "far:2"


def profile(near_ms: list[float], far_ms: list[float], cut_bytes: list[int], rpc_ms: float = 1.0,
            agreement: dict[str, list[float | None]] | None = None) -> ModelProfile:
    """A model of len(near_ms) blocks; agreement per encoding for cuts 0..n-1 (cut n gets None)."""
    names = tuple(f"{i:02d}_b{i}" for i in range(len(near_ms)))
    return ModelProfile(
        model="m", rows=1, block_names=names, cut_bytes=tuple(cut_bytes),
        near=EndpointProfile(NEAR, tuple(t * MS for t in near_ms), rpc_ms * MS, 0.0),
        far=EndpointProfile(FAR, tuple(t * MS for t in far_ms), rpc_ms * MS, 0.0),
        encode_seconds={e: (0.0,) * (len(names) + 1) for e in (agreement or {})},
        agreement={e: (*values, None) for e, values in (agreement or {}).items()},
    )


# Neurosurgeon's shape: a big input, activations that shrink, a slow near and a fast far.
SHRINKING = dict(near_ms=[40, 40, 40, 40], far_ms=[4, 4, 4, 4], cut_bytes=[600_000, 300_000, 20_000, 5_000, 4_000])


def test_a_slow_link_keeps_everything_near() -> None:
    chosen = plan(profile(**SHRINKING), Link.parse("100kbit/s,100ms"), NEAR, FAR)
    assert chosen.best.cut == 4 and chosen.describe(chosen.best) == "all near"


def test_a_fast_link_sends_everything_far() -> None:
    chosen = plan(profile(**SHRINKING), Link.parse("1Gbit/s,1ms"), NEAR, FAR)
    assert chosen.best.cut == 0 and chosen.describe(chosen.best) == "all far"


def test_a_middling_link_cuts_where_the_activation_is_small() -> None:
    # all near 161 ms; all far 2 + 240 + 18 ms; after block 1: 81 + 2 + 8 + 10 ms: the cut in the middle wins.
    chosen = plan(profile(**SHRINKING), Link.parse("20Mbit/s,2ms"), NEAR, FAR)
    assert chosen.best.cut == 2 and chosen.describe(chosen.best) == "after 01_b1"
    assert chosen.best.seconds == min(e.seconds for e in chosen.estimates)
    assert [e.cut for e in chosen.estimates] == [0, 1, 2, 3, 4]  # fp32 only unless asked, every cut listed


def test_the_prediction_is_the_sum_of_its_parts() -> None:
    link = Link.parse("8Mbit/s,10ms")  # 1 byte per microsecond
    e = estimate(profile(**SHRINKING), link, 2, "fp32")
    assert e.near_seconds == pytest.approx((40 + 40 + 1) * MS)
    assert e.link_bytes == 20_000 + 4_000 + 2 * FRAMING_BYTES
    assert e.link_seconds == pytest.approx(10 * MS + e.link_bytes * 1e-6)
    assert e.far_seconds == pytest.approx((4 + 4 + 1) * MS)
    assert e.seconds == pytest.approx(e.near_seconds + e.link_seconds + e.far_seconds)


def test_compression_wins_when_it_agrees_and_is_refused_when_it_does_not() -> None:
    measured = {"fp16": [1.0, 1.0, 1.0, 1.0], "int8": [0.999, 0.95, 0.999, 0.999]}
    slow = Link.parse("2Mbit/s,5ms")
    chosen = plan(profile(**SHRINKING, agreement=measured), slow, NEAR, FAR, encodings=("fp16", "int8"))
    assert (chosen.best.cut, chosen.best.encoding) == (2, "int8")
    refused = {(e.cut, e.encoding): e.refused for e in chosen.estimates if e.refused}
    assert refused == {(1, "int8"): "agreement 95.0% < 99.0%"}
    strict = plan(profile(**SHRINKING, agreement=measured), slow, NEAR, FAR, encodings=("fp16", "int8"),
                  min_agreement=0.9995)
    assert strict.best.encoding == "fp16"


def test_unmeasured_compression_is_refused_unless_the_floor_is_zero() -> None:
    unmeasured = {"int8": [None, None, None, None]}
    slow = Link.parse("2Mbit/s,5ms")
    chosen = plan(profile(**SHRINKING, agreement=unmeasured), slow, NEAR, FAR, encodings=("int8",))
    assert chosen.best.encoding == "fp32"
    assert all("not measured" in e.refused for e in chosen.estimates if e.encoding == "int8")
    anything = plan(profile(**SHRINKING, agreement=unmeasured), slow, NEAR, FAR, encodings=("int8",), min_agreement=0)
    assert anything.best.encoding == "int8"


def test_objective_bytes_offloads_where_the_fewest_bytes_cross() -> None:
    chosen = plan(profile(**SHRINKING), Link.parse("1Gbit/s,1ms"), NEAR, FAR, objective="bytes")
    assert chosen.best.cut == 3 and chosen.best.link_bytes == min(e.link_bytes for e in chosen.estimates if e.cut < 4)


def test_a_plan_runs_as_a_placement_and_survives_json() -> None:
    measured = {"int8": [1.0, 1.0, 1.0, 1.0]}
    chosen = plan(profile(**SHRINKING, agreement=measured), Link.parse("2Mbit/s,5ms"), NEAR, FAR,
                  encodings=("int8",))
    assert chosen.placement() == Placement.parse(f"0-1={NEAR},2-3={FAR}@int8")
    assert str(chosen.placement(chosen.estimates[0])) == f"0-3={FAR}"
    assert str(chosen.placement(chosen.estimates[-1])) == f"0-3={NEAR}"
    again = Plan.from_dict(json.loads(json.dumps(chosen.to_dict())))
    assert again == chosen and again.placement() == chosen.placement()
    saved = profile(**SHRINKING, agreement=measured)
    assert ModelProfile.from_dict(json.loads(json.dumps(saved.to_dict()))) == saved


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="objective expects one of latency, bytes, got 'energy'"):
        plan(profile(**SHRINKING), Link.parse("1Gbit/s,1ms"), NEAR, FAR, objective="energy")
    with pytest.raises(ValueError, match="encodings expect some of fp32, fp16, int8, got \\['zstd'\\]"):
        plan(profile(**SHRINKING), Link.parse("1Gbit/s,1ms"), NEAR, FAR, encodings=("zstd",))
    with pytest.raises(ValueError, match="cut_bytes expects 5 entries"):
        profile(near_ms=[1, 1, 1, 1], far_ms=[1, 1, 1, 1], cut_bytes=[1, 2])


@pytest.mark.parametrize(("text", "rate", "rtt"), [
    ("20Mbit/s,40ms", 20e6, 0.040), ("1Gbit/s,1ms", 1e9, 0.001), ("1Mbps, 50ms", 1e6, 0.050),
    ("2.5MB/s,0.5s", 20e6, 0.5), ("500kbit/s,250us", 5e5, 250e-6),
])
def test_links_parse(text: str, rate: float, rtt: float) -> None:
    link = Link.parse(text)
    assert link.bits_per_second == pytest.approx(rate) and link.rtt_seconds == pytest.approx(rtt)
    assert Link.parse(str(link)) == link
    assert link.transfer_seconds(1000, 0) == pytest.approx(rtt + 8000 / rate)


@pytest.mark.parametrize(("text", "message"), [
    ("20Mbit/s", "link expects RATE,RTT such as 20Mbit/s,40ms, got '20Mbit/s'"),
    ("20Mbit,40ms", "link rate expects a number and one of bit/s, kbit/s, Mbit/s, Gbit/s, B/s, kB/s, MB/s, GB/s, "
                    "got '20Mbit'"),
    ("20Mb/s,40ms", "got '20Mb/s'"),
    ("20Mbit/s,forty", "link round-trip time expects a number and one of us, ms, s, got 'forty'"),
    ("0bit/s,1ms", "link rate must be > 0"),
    ("x" * 500, "..."),
])
def test_bad_links_are_one_line_naming_expected_and_got(text: str, message: str) -> None:
    with pytest.raises(LinkError) as caught:
        Link.parse(text)
    assert message in str(caught.value) and "\n" not in str(caught.value) and len(str(caught.value)) < 200


def test_rpc_cost_fit() -> None:
    fixed, per_byte = fit_rpc_cost([1_000, 2_000_000, 4_000_000], [0.001 + 1e-9 * b for b in (1_000, 2_000_000, 4_000_000)])
    assert fixed == pytest.approx(0.001) and per_byte == pytest.approx(1e-9)
    # payloads too alike to tell a per-byte cost from noise: all of it is fixed
    assert fit_rpc_cost([4000, 4100], [0.002, 0.0001]) == (pytest.approx(0.00105), 0.0)


def test_a_cut_that_is_not_fp32_is_only_sent_as_it_is() -> None:
    """A quantized model's INT8 activations: no encoding applies there, so fp16 and int8 are no candidates at
    those cuts (and a profile with no datatypes, as written before the field, treats every cut as FP32)."""
    base = profile(**SHRINKING, agreement={"fp16": [1.0] * 4, "int8": [1.0] * 4})
    quantized = replace(base, cut_datatypes=("FP32", "INT8", "INT8", "FP32", "FP32"))
    chosen = plan(quantized, Link.parse("20Mbit/s,2ms"), NEAR, FAR, encodings=("fp16", "int8"))
    offered = {(e.cut, e.encoding) for e in chosen.estimates}
    assert {(1, "fp32"), (2, "fp32"), (0, "fp16"), (3, "int8")} <= offered
    assert not {(1, "fp16"), (1, "int8"), (2, "fp16"), (2, "int8")} & offered
    assert estimate(quantized, Link.parse("20Mbit/s,2ms"), 1, "fp16").link_bytes == estimate(
        quantized, Link.parse("20Mbit/s,2ms"), 1, "fp32").link_bytes
    assert len(plan(base, Link.parse("20Mbit/s,2ms"), NEAR, FAR, encodings=("fp16", "int8")).estimates) == 13
    assert ModelProfile.from_dict(json.loads(json.dumps(quantized.to_dict()))) == quantized
    with pytest.raises(ValueError, match="cut_datatypes expects 5 entries"):
        replace(base, cut_datatypes=("FP32",))
