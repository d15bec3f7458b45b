"""Splitting an ONNX file from elsewhere (``layerserve split``) into a model repository.

``split_triton_repository`` (``layerserve split --triton REPO``) does the same for every
ONNX Runtime model of a Triton repository, writing ``blocks/`` and ``manifest.json`` into
each served version folder beside its model file, which it leaves as it is; the
server then serves the model's blocks and chain too (docs/server.md, "Triton repositories").

Contract of :func:`split_to_repository`: load ``source`` (refusing non-ONNX files,
graphs with several inputs and what ONNX Runtime cannot run; bringing old IR
versions, untyped tensors and fixed batch dimensions into shape, see
export/foreign.py and export/batch.py), split it, check the chain on seeded random
inputs (standard normal; at batch sizes 1 and 2 when the batch is dynamic, at the
fixed size otherwise; symbolic dimensions after the batch taken as 1), and write
``<out>/1``. No samples, no accuracy: the model is "imported".
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import onnx

from layerserve.proto import triton
from layerserve.proto.pictures import input_layout
from layerserve.proto.repository_pb2 import ModelManifest, Preprocessing, Provenance
from layerserve.proto.tensors import ONNX_ELEM_TYPES, TensorSpec, numpy_dtype

from .batch import declared_shape
from .conventions import exporter_defaults
from .errors import GraphRefused, SplitError
from .foreign import probe_input
from .graph import LoadedModel, load_model
from .layers import convolution_dimensions
from .parity import CHAIN_TOLERANCE, ChainReport, chain_checks, int8_activations
from .preprocessing import image_layout, image_preprocessing
from .repository import tensor_spec, write_repository
from .split import SplitResult, split

CHECK_SEED = 0


# Rows the chain check adds for a graph with INT8 QDQ activations (export/parity.py int8_activations).
QUANTIZED_CHECK_ROWS = 32


@dataclass(frozen=True)
class SplitOptions:
    """How to split: granularity (``layer``/``cut``), cut tensors (``at``), module depth (None: auto)."""

    granularity: str = "layer"
    at: tuple[str, ...] = ()
    depth: int | None = None
    make_dynamic: bool = True
    tolerance: float = CHAIN_TOLERANCE
    # The per-sample input shape to split at, for graphs with free dimensions past the batch.
    input_shape: tuple[int, ...] | None = None


def checked_split(model: LoadedModel, options: SplitOptions) -> tuple[SplitResult, ChainReport]:
    """Split ``model`` and check the chain at every batch size the model is checked at (the worst report).

    When that fails and ONNX Runtime cannot load the graph itself either, the refusal says so: the graph is
    the problem, not the block that met it first (jax2onnx at opset 17 wrote ReduceMean's axes as an input,
    and split blamed "block '03_conv'"; a dynamo export without its weights crashed in extraction)."""
    try:
        return _checked_split(model, options)
    except GraphRefused:
        raise  # already says so, with its own advice (a float64 model's)
    except Exception as error:
        reason = _runtime_refusal(model)
        if reason:
            raise GraphRefused(reason) from None
        raise error from None


def _runtime_refusal(model: LoadedModel) -> str:
    """Why ONNX Runtime will not load ``model``'s graph, or "" when it does."""
    from .runtime import describe_runtime_error, probe_session

    try:
        probe_session(model.proto.SerializeToString())
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types
        return describe_runtime_error(error)
    return ""


def _checked_split(model: LoadedModel, options: SplitOptions) -> tuple[SplitResult, ChainReport]:
    result = split(model, options.granularity, list(options.at) or None, options.depth)
    batches = [probe_input(model.proto, batch, CHECK_SEED)[1] for batch in model.check_sizes]
    if model.fixed_batch is None and int8_activations(model.proto):
        # ONNX Runtime's fused integer operators and the blocks' can differ by one step on some rows only (a
        # full-integer TFLite model: 19 of 32 rows, none of the 3 the check had read): more rows for these.
        batches.append(probe_input(model.proto, QUANTIZED_CHECK_ROWS, CHECK_SEED + 1)[1])
    reports = chain_checks(model.proto, result, batches, options.tolerance)
    return result, max(reports, key=lambda report: report.max_rel_diff)


def default_preprocessing(proto: onnx.ModelProto) -> Preprocessing | None:
    """What a split records when told nothing (export/preprocessing.py); an integer input holds pixels that
    the graph normalizes itself (an end-to-end export), so none is recorded for it."""
    shape = per_sample_shape(proto)
    elem = proto.graph.input[0].type.tensor_type.elem_type
    integer = numpy_dtype(ONNX_ELEM_TYPES.get(elem, "FP32")).kind in "iu"
    layout = image_layout(shape)
    if integer and layout is not None:
        channels = layout[0]
        return image_preprocessing(shape, mean=[0.0] * channels, std=[1.0] * channels)
    return image_preprocessing(shape)


def per_sample_shape(proto: onnx.ModelProto) -> list[int]:
    """The shape one picture fills (-1 for symbolic dimensions): the input's after the batch axis, the whole
    input's where it is one picture with no batch axis (proto/pictures.py), and ``[1, H, W]`` for a grey
    ``[H, W]`` sample that 2-D convolutions read (its preprocessing is a one-channel picture's; a signal
    ``[C, L]`` for 1-D convolutions stays as it is, no picture)."""
    dims = declared_shape(proto)
    layout = input_layout(dims)
    if layout is not None and not layout.batched:
        return dims
    if layout is not None and not layout.channel_axis and convolution_dimensions(proto.graph) == {2}:
        return [1, *dims[1:]]
    return dims[1:]


def split_to_repository(
    source: Path,
    out: Path,
    name: str | None = None,
    options: SplitOptions = SplitOptions(),
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
) -> ModelManifest:
    """Split ``source`` and write its repository version ``<out>/1``; SplitError when refused.

    ``preprocessing``: how pictures become the input (default: torchvision-style for image inputs).
    """
    model = load_model(source, options.make_dynamic, options.input_shape)
    result, report = checked_split(model, options)
    provenance = _provenance(source, model, result, report)
    implied = exporter_defaults(model.proto, per_sample_shape(model.proto))
    if implied is not None:
        if preprocessing is None:
            preprocessing = implied.preprocessing
            provenance.notes.append(implied.note)
        elif not labels and implied.labels:
            provenance.notes.append(f"{len(implied.labels)} class names from the graph's metadata")
        labels = labels or implied.labels
    out = Path(out)
    return write_repository(
        out.parent,
        name or out.name,
        model.proto,
        result,
        provenance,
        description=f"imported from {Path(source).name}",
        labels=labels,
        preprocessing=preprocessing or default_preprocessing(model.proto),
        fixed_batch=model.fixed_batch,
        merge_requests=not model.rows_interact,
        batched=model.batched,
    )


def _provenance(source: Path, model: LoadedModel, result: SplitResult, report: ChainReport) -> Provenance:
    from .versions import tool_versions

    return Provenance(
        architecture="imported",
        chain_max_abs_diff=report.max_abs_diff,
        chain_max_rel_diff=report.max_rel_diff,
        tool_versions=tool_versions(),
        created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        source=str(source),
        granularity=result.granularity,
        notes=[*model.notes, *([f"chain checked at {report.tolerance:.2g} of the output's scale: narrower than FP32 "
                                 "tensors cross the cuts"] if report.tolerance > CHAIN_TOLERANCE else [])],
    )


def split_triton_repository(
    repository: Path, options: SplitOptions = SplitOptions(make_dynamic=False), models: tuple[str, ...] = ()
) -> list[tuple[str, str, ModelManifest | None, str]]:
    """Split every version a Triton repository serves (``models``: only these), beside its model file.

    Returns (model, version, manifest or None, note) per version, and per model we do not serve
    (None, with the one-line reason the server would give). The batch stays as the file has it
    (``make_dynamic`` False), so the blocks take what config.pbtxt declares. A model that cannot be
    split gets None and the reason too: the first such model ended the whole command, unnamed, with
    nothing written for the models after it.
    """
    done: list[tuple[str, str, ModelManifest | None, str]] = []
    for folder in sorted(Path(repository).iterdir()):
        if not folder.is_dir() or not triton.is_triton_model(folder) or (models and folder.name not in models):
            continue
        try:
            config = triton.read_config(folder)
            reason = triton.refusal(config, folder.name)
        except triton.ConfigError as error:
            reason = str(error)
        if reason is not None:
            done.append((folder.name, "", None, reason))
            continue
        for version_dir in triton.served_versions(folder, config):
            source = version_dir / triton.model_file(config)
            try:
                model = load_model(source, options.make_dynamic)
                # what the server would refuse the model for: nothing is written for it
                triton.served_io(config, source.name, [_spec(i) for i in model.proto.graph.input],
                                 [_spec(o) for o in model.proto.graph.output])
                result, report = checked_split(model, options)
            except triton.ConfigError as error:
                done.append((folder.name, version_dir.name, None, str(error)))
                continue
            except SplitError as error:  # the server still serves the file whole; the other models go on
                done.append((folder.name, version_dir.name, None, f"not split, served whole: {error}"))
                continue
            manifest = write_repository(
                folder.parent, folder.name, model.proto, result, _provenance(source, model, result, report),
                description=f"Triton model {folder.name}, split beside {source.name}",
                preprocessing=default_preprocessing(model.proto),
                fixed_batch=model.fixed_batch, version=version_dir.name, beside=source.name, batched=model.batched,
            )
            done.append((folder.name, version_dir.name, manifest, f"{len(manifest.blocks)} blocks"))
    return done


def _spec(info: onnx.ValueInfoProto) -> TensorSpec:
    return TensorSpec.from_proto(tensor_spec(info))
