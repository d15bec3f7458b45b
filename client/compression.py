"""What each wire encoding costs at each cut: bytes saved, agreement and accuracy lost, on real samples.

For cut ``k`` (the tensor entering block ``k``; cut 0 is the input) and encoding ``e``,
the FP32 tensor at the cut is sent to a server as ``e`` (proto/encodings.py; the
server decodes it) and blocks ``[k, n)`` run there; the logits (a model's first output)
are scored against the FP32 chain's (agreement: same argmax) and against the labels when
there are any. A cut whose tensor is not FP32 (UINT8 pixels, a quantized model's INT8
activations) travels as it is under every encoding: its bytes are its own and nothing is lost.
Requests carry ``rows`` rows, as the plan will send them: INT8's per-tensor scale
spans a request's rows, so its cost depends on how many travel together. The
``compare`` report and the split-computing planner both read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from layerserve.proto.encodings import ENCODINGS, applies_to
from layerserve.proto.tensors import numpy_dtype

from .api import LayerClient
from .placement import BlockRange, Placement

OnStep = Callable[[str], None]
# Samples whose activations at every cut are held at once (a 224x224 ResNet-50 keeps ~7 MB per sample).
CHUNK = 16


@dataclass
class EncodingCosts:
    """``agreement[e][k]``, ``accuracy[e][k]`` (None without labels) and ``bytes_per_request[e][k]`` for cuts
    ``k`` in ``0..n-1`` (cut ``n``, all near, sends nothing); ``fp32_accuracy``: the reference's own."""

    model: str
    samples: int
    rows: int
    block_names: list[str]
    encodings: list[str]
    agreement: dict[str, list[float]]
    accuracy: dict[str, list[float | None]]
    bytes_per_request: dict[str, list[int]]
    fp32_accuracy: float | None
    # The datatype of the tensor at each cut; an encoding applies only where it is FP32.
    cut_datatypes: list[str] = field(default_factory=list)

    def encodable(self, cut: int) -> bool:
        """Whether an encoding changes what crosses ``cut`` (its tensor is FP32)."""
        return encodable(self.cut_datatypes, cut)

    def cut_names(self) -> list[str]:
        """``input`` then ``<block> out`` for the tensor entering each block; a tensor no encoding
        applies to says so (``input (UINT8, sent as it is)``)."""
        names = ["input", *(f"{name} out" for name in self.block_names[:-1])]
        return [name if self.encodable(cut) else f"{name} ({self.cut_datatypes[cut]}, sent as it is)"
                for cut, name in enumerate(names)]

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def cut_bytes(client: LayerClient, model: str, rows: int) -> list[int]:
    """Bytes per request crossing each cut ``0..n`` as the model holds them (FP32 for most), from the
    manifest: the input, then each block's output."""
    manifest = client.blocks(model).manifest
    return [rows * manifest.input_bytes_per_sample, *(rows * b.output_bytes_per_sample for b in manifest.blocks)]


def cut_datatypes(client: LayerClient, model: str) -> list[str]:
    """The datatype of the tensor at each cut ``0..n``: the input's, then each block's (first) output's."""
    manifest = client.blocks(model).manifest
    return [manifest.inputs[0].datatype, *(b.outputs[0].datatype for b in manifest.blocks)]


def encodable(datatypes: Sequence[str], cut: int) -> bool:
    """Whether a wire encoding applies at ``cut``: its tensor is FP32 (an empty list: every cut is)."""
    return not datatypes or applies_to(datatypes[cut])


def encoding_costs(
    client: LayerClient,
    model: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    encodings: Sequence[str] = ("fp16", "int8"),
    rows: int = 1,
    on_step: OnStep | None = None,
) -> EncodingCosts:
    """Score every (cut, encoding) on ``images`` at the client's server (module docstring).

    ValueError for an unknown encoding; ServerError when a run fails.
    """
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        raise ValueError(f"encodings expect some of {', '.join(ENCODINGS)}, got {unknown}")
    blocks = client.blocks(model)
    count = len(blocks)
    sizes = cut_bytes(client, model, rows)
    datatypes = cut_datatypes(client, model)
    dtype = numpy_dtype(blocks.input_spec(0).datatype)
    saved, client.batch_size = client.batch_size, rows
    agree = {e: np.zeros(count) for e in encodings}
    right = {e: np.zeros(count) for e in encodings}
    reference_right = 0
    try:
        for begin in range(0, len(images), CHUNK):
            x = np.asarray(images[begin : begin + CHUNK], dtype=dtype)
            run = client.chain(model, x, where="server", keep=range(count - 1))
            reference = run.scores.reshape(len(x), -1).argmax(1)
            truth = None if labels is None else np.asarray(labels[begin : begin + CHUNK])
            reference_right += 0 if truth is None else int(np.sum(reference == truth))
            tensors = [x, *(run.kept_output(b.name) for b in blocks.blocks[: count - 1])]
            for cut, tensor in enumerate(tensors):
                for name in encodings:
                    if not encodable(datatypes, cut):  # sent as it is: the fp32 chain's own answer
                        predicted = reference
                    else:
                        placement = Placement((BlockRange(cut, count - 1, client.address, name),))
                        out = client.chain(model, tensor, start=cut, where="server", placement=placement).scores
                        predicted = out.reshape(len(x), -1).argmax(1)
                    agree[name][cut] += np.sum(predicted == reference)
                    right[name][cut] += 0 if truth is None else np.sum(predicted == truth)
            if on_step is not None:
                on_step(f"samples {begin + len(x)}/{len(images)}")
    finally:
        client.batch_size = saved
    total = max(len(images), 1)
    return EncodingCosts(
        model=model,
        samples=len(images),
        rows=rows,
        block_names=[b.name for b in blocks.blocks],
        encodings=list(encodings),
        agreement={e: [float(v / total) for v in agree[e]] for e in encodings},
        accuracy={e: [None if labels is None else float(v / total) for v in right[e]] for e in encodings},
        bytes_per_request={e: [ENCODINGS[e].wire_bytes(b) if encodable(datatypes, cut) else b
                               for cut, b in enumerate(sizes[:count])] for e in ("fp32", *encodings)},
        fp32_accuracy=None if labels is None else reference_right / total,
        cut_datatypes=datatypes[:count],
    )
