"""The experiment: why run an image through every layer rather than only the last ones?

:func:`compare` runs, on labelled samples, the full graph, the client and server
chains (which must agree with it), the final blocks on the raw image (the server
refuses: its message is the result) and the final blocks after each fit adapter.
:func:`skip_curve` and :func:`skip_matrix` generalise the skip to every start
block and every (source, target) pair. Each returns a dataclass of plain numbers
that :mod:`layerserve.client.report` and the CLI render.

Metrics, all against the full graph's probabilities p (the path's q): the softmax of its
outputs, or the outputs as they are where the graph ends in its own Softmax (:func:`gives_probabilities`),
an integer answer the graph quantized itself read as its real values first (:func:`real_values`):
accuracy (argmax == label), agreement (argmax == full's argmax), mean
KL(p || q) with ``EPSILON`` inside the logs (so a refused class costs at most
~28 nats, not infinity), and mean top-1 confidence (max q).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from layerserve.proto.repository_pb2 import ModelManifest, Quantization
from layerserve.proto.tensors import numpy_dtype

from .api import LayerClient, Where, first_output
from .compression import EncodingCosts
from .errors import ServerError
from .fit import FITS, per_sample
from .fit import fit as fit_to

EPSILON = 1e-12
OnStep = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def as_logits(output: np.ndarray) -> np.ndarray:
    """``[N, classes]`` from a classifier's output: SqueezeNet-style ``[N, classes, 1, 1]`` and its channels-last
    form ``[N, 1, 1, classes]`` (a Keras or Flax fully convolutional classifier) are flattened.

    ValueError (one line) for an output that is not one score per class and sample.
    """
    output = np.asarray(output)
    if output.ndim > 2 and sum(d != 1 for d in output.shape[1:]) <= 1:
        output = output.reshape(output.shape[0], -1)
    if output.ndim != 2:
        raise ValueError(f"the model's output is {list(output.shape)}; comparing paths needs class scores [N, classes]")
    return output


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, classes]`` logits, computed stably in float64."""
    logits = as_logits(logits)
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# How far a row of a model's own probabilities may sum from 1 (FP16 outputs round to ~1e-3).
SUM_TOLERANCE = 2e-3


def real_values(output: np.ndarray, quantization: Quantization | None) -> np.ndarray:
    """An integer answer's real values, ``(value - zero point) * scale``, by the quantization its graph wrote
    (the manifest's ``TensorSpec.quantization``: a full-integer TFLite model's INT8 softmax); anything else as
    it is. Scoring the stored integers would take -128..127 for logits."""
    output = np.asarray(output)
    if quantization is None or quantization.scale <= 0 or output.dtype.kind not in "iu":
        return output
    return (output.astype(np.float64) - quantization.zero_point) * quantization.scale


def answer_quantizations(manifest: ModelManifest) -> dict[str, Quantization]:
    """The quantization of every output its graphs quantized themselves (the full graph's and each block's),
    by tensor name: what :func:`real_values` reads an answer by."""
    specs = [*manifest.outputs, *(spec for block in manifest.blocks for spec in block.outputs)]
    return {spec.name: spec.quantization for spec in specs if spec.HasField("quantization")}


def gives_probabilities(output: np.ndarray, quantization: Quantization | None = None) -> bool:
    """Whether a classifier's ``[N, classes]`` rows (real values) are already probabilities: a Softmax inside
    the graph, as Ultralytics' and Keras' classifiers export it (every entry in [0, 1], each row summing to 1;
    quantized rows within half a step per class of it)."""
    rows = np.asarray(as_logits(output), dtype=np.float64)
    tolerance = SUM_TOLERANCE + (rows.shape[1] * quantization.scale / 2 if quantization is not None else 0.0)
    return bool(rows.size and np.all(rows >= 0) and np.all(rows <= 1)
                and np.allclose(rows.sum(axis=1), 1.0, atol=tolerance))


def probabilities(output: np.ndarray, already: bool) -> np.ndarray:
    """Rows of ``output`` as probabilities: as they are when the model gives probabilities (``already``, from
    its full graph's answer: a softmax on top would flatten them towards uniform), else their softmax."""
    if not already:
        return softmax(output)
    rows = np.clip(np.asarray(as_logits(output), dtype=np.float64), 0.0, None)
    totals = rows.sum(axis=1, keepdims=True)
    return np.divide(rows, totals, out=np.full_like(rows, 1.0 / rows.shape[1]), where=totals > 0)


@dataclass
class PathResult:
    """One way of getting logits from the samples, scored against the labels and the full graph.

    A refused path has ``error`` (``"CODE: server's message"``) and no metrics.
    """

    name: str
    blocks: str
    fit: str | None = None
    error: str | None = None
    accuracy: float | None = None
    agreement: float | None = None
    kl: float | None = None
    confidence: float | None = None
    max_abs_diff: float | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, object]:
        keys = ("name", "blocks", "fit", "error", "accuracy", "agreement", "kl", "confidence", "max_abs_diff")
        return {key: getattr(self, key) for key in keys}


@dataclass
class SkipCurve:
    """Accuracy when the first ``skipped[k]`` blocks are skipped, per fit adapter (the image fitted to the next block)."""

    skipped: list[int]
    start_blocks: list[str]
    accuracy: dict[str, list[float]]

    def to_dict(self) -> dict[str, object]:
        return {"skipped": self.skipped, "start_blocks": self.start_blocks, "accuracy": self.accuracy}


@dataclass
class SkipMatrix:
    """``accuracy[i, j]``: source i fitted into block j, then run to the end.

    Source 0 is the image, source i > 0 the output of block i-1, so source i is
    block i's natural input: the diagonal is the unskipped network (nothing to
    fit), the upper triangle skips blocks i..j-1, the lower triangle is NaN.
    """

    fit: str
    sources: list[str]
    targets: list[str]
    accuracy: np.ndarray

    def to_dict(self) -> dict[str, object]:
        values = [[None if np.isnan(v) else float(v) for v in row] for row in self.accuracy]
        return {"fit": self.fit, "sources": self.sources, "targets": self.targets, "accuracy": values}


@dataclass
class CompareReport:
    """Everything the experiment measured; ``to_dict`` is what ``--json`` prints."""

    model: str
    samples: int
    start: int
    start_block: str
    block_names: list[str]
    class_names: list[str]
    chance: float
    paths: list[PathResult]
    skip_curve: SkipCurve | None = None
    skip_matrix: SkipMatrix | None = None
    # Each wire encoding's cost at each cut (client/compression.py).
    encodings: EncodingCosts | None = None
    # What the samples are, for titles: "held-out samples", "pictures from photos/".
    samples_label: str = "held-out samples"
    # The model's outputs, in order; every path is scored on the first (api.first_output).
    outputs: list[str] = field(default_factory=list)

    def path(self, name: str) -> PathResult:
        """The path called ``name``; KeyError otherwise."""
        for path in self.paths:
            if path.name == name:
                return path
        raise KeyError(f"no path {name!r} (paths: {[p.name for p in self.paths]})")

    def scored_on(self) -> str:
        """", scored on output 'logits' (the first of 2)" for a model with several outputs, else ""."""
        if len(self.outputs) < 2:
            return ""
        return f", scored on output {self.outputs[0]!r} (the first of {len(self.outputs)})"

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "samples": self.samples,
            "start": self.start,
            "start_block": self.start_block,
            "chance": self.chance,
            "samples_label": self.samples_label,
            "outputs": self.outputs,
            "paths": [p.to_dict() for p in self.paths],
            "skip_curve": self.skip_curve.to_dict() if self.skip_curve else None,
            "skip_matrix": self.skip_matrix.to_dict() if self.skip_matrix else None,
            "encodings": self.encodings.to_dict() if self.encodings else None,
        }


def score(name: str, blocks: str, logits: np.ndarray, full: np.ndarray, labels: np.ndarray, fit: str | None = None,
          quantization: Quantization | None = None) -> PathResult:
    """Score ``logits`` ``[N, classes]`` against ``labels`` ``[N]`` and the full graph's logits, both real values
    (:func:`real_values`) of an answer quantized by ``quantization`` where the model's is."""
    logits, full = as_logits(real_values(logits, quantization)), as_logits(real_values(full, quantization))
    already = gives_probabilities(full, quantization)
    p, q = probabilities(full, already), probabilities(logits, already)
    predictions = q.argmax(axis=1)
    # KL is never negative; a chain equal to the full graph gives rounding-sized terms of either sign.
    kl = np.maximum(np.sum(p * (np.log(p + EPSILON) - np.log(q + EPSILON)), axis=1), 0.0)
    return PathResult(
        name=name,
        blocks=blocks,
        fit=fit,
        accuracy=float(np.mean(predictions == labels)),
        agreement=float(np.mean(predictions == p.argmax(axis=1))),
        kl=float(np.mean(kl)),
        confidence=float(np.mean(q.max(axis=1))),
        max_abs_diff=float(np.max(np.abs(np.asarray(logits, np.float64) - np.asarray(full, np.float64)))),
        predictions=predictions,
    )


def most_common_answer(predictions: np.ndarray, class_names: Sequence[str]) -> str:
    """``"answers '1' for 100% of the samples"``: a broken path tends to say one class whatever the image."""
    counts = np.bincount(predictions, minlength=len(class_names))
    top = int(counts.argmax())
    return f"answers {class_names[top]!r} for {counts[top] / len(predictions):.0%} of the samples"


def compare_steps(fits: Sequence[str]) -> int:
    """How many times :func:`compare` calls ``on_step``."""
    return 4 + len(fits)


def compare(
    client: LayerClient,
    model: str,
    images: np.ndarray,
    labels: np.ndarray,
    start: int | None = None,
    fits: Sequence[str] = FITS,
    where: Where = "client",
    seed: int = 0,
    on_step: OnStep = _quiet,
) -> CompareReport:
    """The experiment's table on ``images`` ``[N, *input]`` with ``labels`` ``[N]``.

    Paths: the full graph; the client chain; the server chain; blocks from
    ``start`` (default: the last conv block) on the raw image, whose refusal is
    recorded as the path's ``error``; and the same blocks after each fit adapter
    (run ``where`` the caller says). A path that fails (the server refuses, an
    answer is not class scores) records its error and the others still run; only
    the full graph, every path's reference, must succeed (its ServerError is raised).
    A model with several outputs is scored on its first (the report's ``outputs`` lists them).
    """
    blocks = client.blocks(model)
    names = [b.name for b in blocks.blocks]
    start = blocks.final_conv_index() if start is None else blocks.index(start)
    labels = np.asarray(labels)
    every = f"{names[0]}..{names[-1]}"
    final = f"{names[start]}..{names[-1]}"

    full = as_logits(first_output(client.infer(blocks.full_model_name, images)))
    first = blocks.manifest.outputs[0].name if blocks.manifest.outputs else ""
    quantization = answer_quantizations(blocks.manifest).get(first)
    paths = [score("full graph", "model.onnx", full, full, labels, quantization=quantization)]
    on_step("full graph")

    def attempt(name: str, span: str, run: Callable[[], np.ndarray], fit: str | None = None) -> None:
        try:
            paths.append(score(name, span, run(), full, labels, fit=fit, quantization=quantization))
        except (ServerError, ValueError) as error:
            paths.append(PathResult(name, span, fit=fit, error=str(error)))
        on_step(name)

    for mode in ("client", "server"):
        attempt(f"{mode} chain", every, lambda mode=mode: client.chain(model, images, where=mode).scores)
    attempt("final only, raw image", final,
            lambda: client.final_only(model, images, fit=None, start=start, where=where).scores)
    for method in fits:
        attempt(f"final only, {method}", final, lambda method=method: client.final_only(
            model, images, fit=method, start=start, where=where, seed=seed).scores, fit=method)
    return CompareReport(
        model=model,
        samples=len(images),
        start=start,
        start_block=names[start],
        block_names=names,
        class_names=list(blocks.manifest.labels) or [str(i) for i in range(full.shape[1])],
        chance=1.0 / full.shape[1],
        paths=paths,
        outputs=[spec.name for spec in blocks.manifest.outputs],
    )


def skip_curve_steps(blocks: int, every: int, fits: Sequence[str]) -> int:
    """How many times :func:`skip_curve` calls ``on_step``."""
    return 1 + len(range(every, blocks, every)) * len(fits)


def skip_curve(
    client: LayerClient,
    model: str,
    images: np.ndarray,
    labels: np.ndarray,
    every: int = 1,
    fits: Sequence[str] = FITS,
    seed: int = 0,
    on_step: OnStep = _quiet,
) -> SkipCurve:
    """Accuracy with 0, every, 2*every, ... leading blocks skipped (the image fitted into the first block kept).

    Runs on the server (Chain). Skipping 0 blocks is the whole network, shared by every fit.
    """
    blocks = client.blocks(model)
    labels = np.asarray(labels)
    whole = float(np.mean(as_logits(client.chain(model, images, where="server").scores).argmax(1) == labels))
    on_step("skip 0")
    skipped = [0, *range(every, len(blocks), every)]
    accuracy: dict[str, list[float]] = {method: [whole] for method in fits}
    for k in skipped[1:]:
        spec = blocks.input_spec(k)
        target, dtype = per_sample(spec.shape), numpy_dtype(spec.datatype)
        for method in fits:
            fitted = fit_to(images, target, method, seed, dtype)
            logits = client.chain(model, fitted, start=k, where="server").scores
            accuracy[method].append(float(np.mean(as_logits(logits).argmax(1) == labels)))
            on_step(f"skip {k}, {method}")
    return SkipCurve(skipped=skipped, start_blocks=[blocks.blocks[k].name for k in skipped], accuracy=accuracy)


def skip_matrix_steps(blocks: int) -> int:
    """How many times :func:`skip_matrix` calls ``on_step``."""
    return 1 + blocks * (blocks + 1) // 2


def skip_matrix(
    client: LayerClient,
    model: str,
    images: np.ndarray,
    labels: np.ndarray,
    fit: str = "resize",
    seed: int = 0,
    on_step: OnStep = _quiet,
) -> SkipMatrix:
    """Feed each source (the image, then block i's output) fitted into every later block j; accuracy to the end.

    Block outputs come from one server chain that keeps them all.
    """
    blocks = client.blocks(model)
    labels = np.asarray(labels)
    n = len(blocks)
    sources = [np.asarray(images)]
    if n > 1:
        chained = client.chain(model, images, where="server", keep=range(n - 1))
        sources += [chained.kept_output(b.name) for b in blocks.blocks[: n - 1]]
    on_step("activations")
    accuracy = np.full((n, n), np.nan)
    for i, source in enumerate(sources):  # source i is the input of block i
        for j in range(i, n):
            spec = blocks.input_spec(j)
            fitted = fit_to(source, per_sample(spec.shape), fit, seed, numpy_dtype(spec.datatype))
            logits = client.chain(model, fitted, start=j, where="server").scores
            accuracy[i, j] = float(np.mean(as_logits(logits).argmax(1) == labels))
            on_step(f"source {i} -> block {j}")
    return SkipMatrix(
        fit=fit,
        sources=["image"] + [f"{b.name} out" for b in blocks.blocks[: n - 1]],
        targets=[b.name for b in blocks.blocks],
        accuracy=accuracy,
    )


def activations(client: LayerClient, model: str, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every block's output for one image ``[1, *input]`` (server chain keeping all), by block name."""
    n = len(client.blocks(model))
    result = client.chain(model, image, where="server", keep=range(n))
    return {block: result.kept_output(block) for block in result.kept}
