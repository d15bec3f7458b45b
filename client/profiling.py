"""Measure what the planner needs: every block on both endpoints, from the client's view and the server's.

For each endpoint and block ``k``, one Chain RPC over ``[k, k+1)`` carrying a real
activation (``rows`` rows, the tensor the block gets in a real run) is sent
``warmup`` times unrecorded, then ``repeats`` times; after each, ModelStatistics of
the model's chain endpoint says how long the server computed (``compute_infer``).
The block's time is the median of those server-side times; the rest of what the
client waited, minus what the link model says the link took (``link``, when the
endpoint is reached over one), is the RPC's own cost. The whole chain ``[0, n)`` is
measured the same way: a Chain call costs the server a fixed amount besides its
blocks' sessions (the chain loop, copying the answer), which the per-block times each
include once; ``(sum of blocks - whole chain) / (n - 1)`` separates it, so a chain over
several blocks is not charged it several times. The RPC costs (the blocks' and the
whole chain's) are fitted as ``rpc_seconds + seconds_per_byte * (request + answer bytes)``.

The result (:class:`~layerserve.client.planner.ModelProfile`) does not depend on
the link, so one profile serves any number of plans (``layerserve plan --profile``).
Both endpoints must serve the same model (same block names and tensors).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from layerserve.proto import encodings as wire
from layerserve.proto.pictures import sample_shape
from layerserve.proto.tensors import datatype_of, example_values, numpy_dtype

from .api import LayerClient, ModelBlocks
from .compression import cut_bytes, cut_datatypes, encoding_costs
from .errors import ServerError
from .link import Link
from .planner import FRAMING_BYTES, EndpointProfile, ModelProfile

OnStep = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def served_blocks(client: LayerClient, model: str, role: str) -> ModelBlocks:
    """ListBlocks at ``client``'s server; ServerError naming the endpoint (one line) when it fails."""
    try:
        return client.blocks(model)
    except ServerError as error:
        first = error.message.splitlines()[0] if error.message else ""
        raise ServerError(error.code, f"{role} endpoint {client.address}: {first}", error.rpc) from None


def check_same_model(near: ModelBlocks, far: ModelBlocks) -> None:
    """ValueError when the two endpoints serve different blocks under one model name."""
    def shape(found: ModelBlocks) -> list[tuple[str, list[str]]]:
        return [(b.name, [str(s) for s in found.output_specs(b.index)]) for b in found.blocks]

    if shape(near) != shape(far):
        raise ValueError(f"near and far serve different {near.manifest.name}: blocks "
                         f"{[b.name for b in near.blocks]} vs {[b.name for b in far.blocks]}")


def block_inputs(client: LayerClient, model: str, x: np.ndarray) -> list[np.ndarray]:
    """The tensor entering each block for input ``x``: ``x``, then each block's output (one server chain)."""
    blocks = client.blocks(model)
    count = len(blocks)
    run = client.chain(model, x, where="server", keep=range(count - 1))
    return [np.asarray(x), *(run.kept_output(b.name) for b in blocks.blocks[: count - 1])]


def _compute_ns(client: LayerClient, chain_name: str) -> int:
    stats = client.model_statistics(chain_name, address=client.address)
    return sum(s.inference_stats.compute_infer.ns for s in stats)


def _timed(client: LayerClient, model: str, chain_name: str, x: np.ndarray, start: int, stop: int, warmup: int,
           repeats: int) -> tuple[float, float]:
    """Median (client-view seconds, server compute seconds) of a Chain over ``[start, stop)``."""
    seen, compute = [], []
    before = _compute_ns(client, chain_name)
    for attempt in range(warmup + repeats):
        began = time.perf_counter()
        client.chain(model, x, start=start, stop=stop, where="server")
        waited = time.perf_counter() - began
        after = _compute_ns(client, chain_name)
        if attempt >= warmup:
            seen.append(waited)
            compute.append((after - before) / 1e9)
        before = after
    return statistics.median(seen), statistics.median(compute)


def measure_endpoint(
    client: LayerClient,
    model: str,
    inputs: Sequence[np.ndarray],
    link: Link | None = None,
    warmup: int = 3,
    repeats: int = 10,
    on_step: OnStep = _quiet,
) -> tuple[EndpointProfile, list[dict[str, float]]]:
    """Profile every block, and the whole chain, at ``client``'s server (module docstring); also returns
    per-block medians (client-view, compute and RPC seconds, payload bytes) for tables."""
    blocks = client.blocks(model)
    chain_name = blocks.chain_model_name
    count = len(blocks)

    def answer_bytes(index: int, rows: int) -> int:
        return sum(s.row_bytes() or 0 for s in blocks.output_specs(index)) * rows

    def rpc_seconds(waited: float, compute: float, request: int, answer: int) -> float:
        link_s = link.transfer_seconds(request + FRAMING_BYTES, answer + FRAMING_BYTES) if link else 0.0
        return waited - compute - link_s

    computes, rows, payloads, overheads = [], [], [], []
    for index, x in enumerate(inputs):
        waited, compute = _timed(client, model, chain_name, x, index, index + 1, warmup, repeats)
        on_step(f"{client.address} {blocks.blocks[index].name}")
        answer = answer_bytes(index, len(x))
        computes.append(compute)
        payloads.append(x.nbytes + answer)
        overheads.append(rpc_seconds(waited, compute, x.nbytes, answer))
        rows.append({"client_seconds": waited, "compute_seconds": compute, "rpc_seconds": overheads[-1],
                     "payload_bytes": payloads[-1]})
    per_call = 0.0
    if count > 1:
        waited, whole = _timed(client, model, chain_name, inputs[0], 0, count, warmup, repeats)
        answer = answer_bytes(count - 1, len(inputs[0]))
        per_call = min(max((sum(computes) - whole) / (count - 1), 0.0), min(computes))
        payloads.append(inputs[0].nbytes + answer)
        overheads.append(rpc_seconds(waited, whole, inputs[0].nbytes, answer))
    fixed, per_byte = fit_rpc_cost(payloads, overheads)
    blocks_only = tuple(c - per_call for c in computes)
    return EndpointProfile(client.address, blocks_only, fixed + per_call, per_byte), rows


def fit_rpc_cost(payloads: Sequence[int], overheads: Sequence[float]) -> tuple[float, float]:
    """``(fixed, per_byte)``, least squares of overhead on payload bytes, neither below 0.

    With payloads too alike to separate the two (small models), everything is fixed cost.
    """
    x, y = np.asarray(payloads, dtype=float), np.asarray(overheads, dtype=float)
    per_byte = 0.0
    if len(x) > 1 and np.ptp(x) > 0.25 * max(float(np.max(x)), 1.0):
        per_byte = max(float(np.polyfit(x, y, 1)[0]), 0.0)
    fixed = max(float(np.median(y - per_byte * x)), 0.0)
    return fixed, per_byte


def coding_seconds(x: np.ndarray, name: str, repeats: int = 5) -> float:
    """Median seconds to encode ``x`` as ``name`` and decode it back (the client's and the server's work)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        encoded, scale = wire.encode(np.asarray(x, dtype=np.float32), name)
        wire.decode(encoded, name, scale)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def profile_model(
    near: LayerClient,
    far: LayerClient,
    model: str,
    rows: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    link: Link | None = None,
    encodings: Sequence[str] = ("fp16", "int8"),
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    on_step: OnStep = _quiet,
) -> tuple[ModelProfile, dict[str, list[dict[str, float]]]]:
    """Profile ``model`` on both endpoints (``link``: the far one's, subtracted from its times).

    The activations come from the far endpoint's chain on ``images[:rows]`` (random
    normal inputs without images). With ``images``, every encoding's agreement (and
    accuracy with ``labels``) is measured at every cut on the far endpoint. Raises
    ServerError (naming the endpoint) when one does not answer or lacks the model,
    ValueError when they serve different blocks.
    """
    near_blocks = served_blocks(near, model, "near")
    far_blocks = served_blocks(far, model, "far")
    check_same_model(near_blocks, far_blocks)
    datatype = far_blocks.input_spec(0).datatype
    if images is not None and len(images) >= rows:
        x = np.ascontiguousarray(images[:rows], dtype=numpy_dtype(datatype))
    else:
        x = example_values(datatype, [rows, *sample_shape(far_blocks.input_spec(0).shape)], np.random.default_rng(0))
    inputs = block_inputs(far, model, x)
    on_step("activations")
    near_profile, near_rows = measure_endpoint(near, model, inputs, None, warmup, repeats, on_step)
    far_profile, far_rows = measure_endpoint(far, model, inputs, link, warmup, repeats, on_step)
    tensors = [*inputs, None]
    chosen = [e for e in encodings if e != "fp32"]
    # A tensor that is not FP32 travels as it is: no encoding, no coding time.
    encode = {e: tuple(0.0 if t is None or not wire.applies_to(datatype_of(t.dtype)) else coding_seconds(t, e)
                       for t in tensors) for e in chosen}
    agreement: dict[str, tuple[float | None, ...]] = {}
    accuracy: dict[str, tuple[float | None, ...]] = {}
    samples = 0
    if images is not None and chosen:
        costs = encoding_costs(far, model, images, labels, chosen, rows, on_step)
        samples = costs.samples
        agreement = {e: (*costs.agreement[e], None) for e in chosen}
        accuracy = {e: (*costs.accuracy[e], None) for e in chosen}
    profile = ModelProfile(
        model=model,
        rows=rows,
        block_names=tuple(b.name for b in far_blocks.blocks),
        cut_bytes=tuple(cut_bytes(far, model, rows)),
        cut_datatypes=tuple(cut_datatypes(far, model)),
        near=near_profile,
        far=far_profile,
        encode_seconds=encode,
        agreement=agreement,
        accuracy=accuracy,
        samples=samples,
    )
    return profile, {"near": near_rows, "far": far_rows}
