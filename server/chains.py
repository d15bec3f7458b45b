"""A model's chain of blocks: which graph runs each block of a chain, and running it.

A chain ``[start, stop)`` runs each block's plain graph (the one its block endpoint serves),
except across a native seam (server/seams.py) whose tensor the client does not keep: there
both blocks run the variant that hands on ONNX Runtime's blocked tensor, and the two layout
changes are skipped. Kept outputs and the chain's own ends are always plain NCHW.

Which seams are native is settled once, at load, on a probe input. For each seam, the first
block's variant that gives its output blocked is made without a shape there and run once on
that block's input, which tells the blocked tensor's channel count (padded to a vector width
ONNX Runtime picks for this CPU); then every variant is made declaring it. The
probe runs through the plain chain and through native plans that use every variant, and the
seams are used only when every result is bit-identical to the plain chain's. Otherwise (an
onnxruntime that lays tensors out in a way not foreseen here, a graph the checks in
server/seams.py pass but should not) the chain runs the plain graphs, with one log line.

The chain of every block with nothing kept (what ``<model>.chain`` serves) then runs as one
session: the graphs above composed into one (server/composed.py), used only when it answers the
probe bit for bit as the plain chain does, and the weights its session would pack for itself stay
under composed.PACKABLE_MAX. Other ranges, and chains that keep a block, run block by block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from layerserve.proto.tensors import example_values, numpy_dtype

from . import composed, runtime, seams
from .bound_chains import BoundChains, small_batch
from .errors import bounded

log = logging.getLogger(__name__)

PROBE_BATCH = 2
# The chain of every block is composed (server/composed.py) unless its session could pack more than
# composed.PACKABLE_MAX of weights into a copy of its own. Composing pays at batch 1 where Run calls are a
# large part of a run (digits_cnn's chain extra compute 62-79 -> 12-18 us) and at large batches, where one
# session plans the seams' tensors (ResNet-18's chain at batch 64, 1.08 -> 1.03x the full graph):
# docs/BENCHMARKS.md, "Issue 12: which chains to compose".

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BlockChain:
    """The blocks of one model version, with the variants of those at native seams.

    ``variants`` maps (block index, native input, native output) to the graph; ``native`` holds
    each seam k (between block k and block k+1) whose variants passed the probe.
    """

    blocks: list[runtime.Graph]
    variants: dict[tuple[int, bool, bool], runtime.Graph] = field(default_factory=dict)
    native: frozenset[int] = frozenset()
    # Every block composed into one session (server/composed.py): the chain of all blocks, nothing kept.
    whole: runtime.Graph | None = None

    def graphs(self, start: int, stop: int, keep: Sequence[int] = ()) -> list[runtime.Graph]:
        """The graphs that run blocks ``[start, stop)`` when the blocks in ``keep`` return their outputs."""
        joined = {seam for seam in self.native if start <= seam < stop - 1 and seam not in keep}
        chosen = []
        for index in range(start, stop):
            native_in, native_out = index - 1 in joined, index in joined
            chosen.append(self.variants[index, native_in, native_out] if native_in or native_out
                          else self.blocks[index])
        return chosen

    bound: BoundChains = field(default_factory=BoundChains, compare=False)

    def run(
        self, feeds: Mapping[str, np.ndarray], start: int = 0, stop: int | None = None, keep: Sequence[int] = ()
    ) -> tuple[Outputs, dict[int, Outputs]]:
        """Run blocks ``[start, stop)``: the last one's outputs, and each kept block's by its index."""
        stop = len(self.blocks) if stop is None else stop
        whole = self.whole if start == 0 and stop == len(self.blocks) and not keep else None
        graphs = [whole] if whole is not None else self.graphs(start, stop, keep)
        positions = [index - start for index in keep]
        if graphs and small_batch(feeds):
            outputs, kept = self.bound.run((start, stop, tuple(sorted(keep))), graphs, feeds, positions)
        else:
            outputs, kept = runtime.chain(graphs, feeds, positions)
        return outputs, {start + index: values for index, values in kept.items()}


def build(blocks: list[runtime.Graph], options: runtime.RuntimeOptions) -> BlockChain:
    """The chain of ``blocks``: with native seams where their optimized copies allow, and every block
    composed into one session, each where the probe agrees with the plain blocks."""
    plain = BlockChain(list(blocks))
    if (not (options.native_seams or options.composed_chain) or len(blocks) < 2
            or any(block.optimized is None for block in blocks)):
        return plain
    feeds = _probe_input(blocks[0])
    if isinstance(feeds, str):  # expected of some graphs (free image sizes): not worth a warning
        log.info("chain runs its blocks as loaded: no probe input",
                 extra={"fields": {"graph": blocks[0].path.name, "reason": feeds}})
        return plain
    try:
        # The plain chain's answers, every block kept: what the native plans and the composed graph must
        # reproduce, and each block's own input for learning the seams' blocked shapes.
        reference = plain.run(feeds, keep=range(len(blocks)))
    except Exception as error:  # noqa: BLE001 - a model that cannot run its own probe runs as loaded
        log.warning("chain runs its blocks as loaded: the probe failed",
                    extra={"fields": {"graph": blocks[0].path.name, "reason": _reason(error)}})
        return plain
    chain = _joined(plain, options, feeds, reference) if options.native_seams else plain
    return _composed(chain, options, feeds, reference[0]) if options.composed_chain else chain


def _reason(error: Exception) -> str:
    return bounded(f"{type(error).__name__}: {' '.join(str(error).split())}", 300)


def _joined(plain: BlockChain, options: runtime.RuntimeOptions, feeds: dict[str, np.ndarray],
            reference: tuple[Outputs, dict[int, Outputs]]) -> BlockChain:
    """``plain`` with native seams where both sides convert layout and the probe agrees; else ``plain``."""
    blocks = plain.blocks
    sides = [seams.sides(block.optimized) for block in blocks]
    candidates = frozenset(seam for seam in range(len(blocks) - 1)
                           if sides[seam].output is not None and sides[seam].output == sides[seam + 1].input)
    if not candidates:
        return plain
    try:
        channels = _blocked_channels(blocks, candidates, options, feeds, reference[1])
        chain = BlockChain(list(blocks), _variants(blocks, candidates, options, channels), candidates)
        refused = _probe(chain, feeds, reference)
    except Exception as error:  # noqa: BLE001 - no room for a variant, or ONNX Runtime refusing one
        refused = _reason(error)
    if refused:
        log.warning("chain runs without native seams: the probe failed",
                    extra={"fields": {"graph": blocks[0].path.name, "reason": refused}})
        return plain
    return chain


def _composed(chain: BlockChain, options: runtime.RuntimeOptions, feeds: dict[str, np.ndarray],
              want: Outputs) -> BlockChain:
    """``chain`` with its blocks composed into one session (server/composed.py) for the chain of every
    block with nothing kept, when the weights that session could pack stay under composed.PACKABLE_MAX
    and it answers the probe bit for bit as the plain chain did."""
    name = chain.blocks[0].path.name
    try:
        path = composed.compose([graph.optimized for graph in chain.graphs(0, len(chain.blocks))])
        packable = composed.packable_bytes(path)
        if packable > composed.PACKABLE_MAX:
            log.info("chain runs block by block: one session more would pack a copy of its weights in every worker",
                     extra={"fields": {"graph": name, "packable_mib": round(packable / 2**20, 1)}})
            return chain
        whole = runtime.Graph(chain.blocks[0].path, options, prepared=path)
        got = whole.run(feeds)
        same = got.keys() == want.keys() and all(np.array_equal(array, got[key]) for key, array in want.items())
        refused = "" if same else "its answer differs from the blocks' on the probe input"
    except Exception as error:  # noqa: BLE001 - a graph this cannot join, or ONNX Runtime refusing it
        refused = _reason(error)
    if refused:
        log.warning("chain runs block by block: the composed graph was refused",
                    extra={"fields": {"graph": name, "reason": refused}})
        return chain
    # Bound chains are cached by range: a fresh cache, so none of the probe's per-block ones answers for it.
    return replace(chain, whole=whole, bound=BoundChains())


def _variants(blocks: list[runtime.Graph], joined: frozenset[int], options: runtime.RuntimeOptions,
              channels: dict[str, int] | None = None) -> dict[tuple[int, bool, bool], runtime.Graph]:
    """A session for each variant of each block that a chain over the ``joined`` seams can ask for;
    ``channels``: the seams' blocked channel counts (server/seams.py ``variant``)."""
    made = {}
    for index, block in enumerate(blocks):
        for native_in, native_out in ((True, False), (False, True), (True, True)):
            if (native_in and index - 1 not in joined) or (native_out and index not in joined):
                continue
            path = seams.variant(block.optimized, native_in, native_out, channels)
            made[index, native_in, native_out] = runtime.Graph(block.path, options, prepared=path)
    return made


def _blocked_channels(blocks: list[runtime.Graph], joined: frozenset[int], options: runtime.RuntimeOptions,
                      feeds: dict[str, np.ndarray], kept: dict[int, Outputs]) -> dict[str, int]:
    """The channel count of the blocked tensor at each ``joined`` seam: block k's variant that gives its
    output blocked, made without a shape there, run on block k's input from the plain chain (``feeds``,
    then ``kept``, each block's outputs). The vector width ONNX Runtime pads channels to is its own
    choice for this CPU. A seam whose tensor differs from its plain shape in more than the channels
    gets no entry (its variants then declare no shape)."""
    values, found = dict(feeds), {}
    for index, block in enumerate(blocks):
        if index in joined:
            unshaped = runtime.Graph(block.path, options, prepared=seams.variant(block.optimized, False, True))
            outputs = unshaped.run({spec.name: values[spec.name] for spec in unshaped.inputs})
            for spec in block.outputs:
                shape = outputs[spec.name].shape
                if len(shape) == len(spec.shape) >= 2 and all(
                        want < 0 or want == got for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True))
                        if axis != 1):
                    found[spec.name] = int(shape[1])
        values.update(kept[index])
    return found


def _probe_input(block: runtime.Graph) -> dict[str, np.ndarray] | str:
    """A deterministic input for ``block`` at batch PROBE_BATCH (proto.tensors.example_values: pixel values
    for an integer image), or why none can be made."""
    feeds = {}
    rng = np.random.default_rng(0)
    for spec in block.inputs:
        shape = [PROBE_BATCH if position == 0 and dim < 0 else dim for position, dim in enumerate(spec.shape)]
        if any(dim < 0 for dim in shape) or numpy_dtype(spec.datatype).kind not in "fiu":
            return f"input {spec.name!r} is not a tensor of numbers with a fixed shape past the batch"
        feeds[spec.name] = example_values(spec.datatype, shape, rng)
    return feeds


def _probe(chain: BlockChain, feeds: dict[str, np.ndarray], reference: tuple[Outputs, dict[int, Outputs]]) -> str:
    """Why the native plans of ``chain`` cannot be trusted on ``feeds`` ("" when they agree with
    ``reference``, the plain chain's answers with every block kept). The plans: nothing kept (every
    seam joined), then every other seam kept, both ways round, so each variant runs at least once.
    """
    seams_in_order = sorted(chain.native)
    want, want_kept = reference
    for keep in ((), seams_in_order[0::2], seams_in_order[1::2]):
        got, got_kept = chain.run(feeds, keep=keep)
        checks = [(want, got), *((want_kept[index], got_kept[index]) for index in keep)]
        for expected, actual in checks:
            for name, array in expected.items():
                if not np.array_equal(array, actual[name]):
                    return f"output {name!r} differs with blocks {list(keep)} kept"
    return ""
