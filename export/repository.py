"""Writing a model repository version folder (layout in docs/model-repository.md).

Contract of :func:`write_repository`: ``<root>/<name>/<version>/`` ends up holding
exactly ``model.onnx``, ``blocks/NN_name.onnx`` (one per block, nothing stale),
``blocks/weights.bin`` (every weight once, read by the full graph and the blocks as
ONNX external data: export/weights.py), ``samples.npz`` when samples are given, and
``manifest.json`` describing them with sha256 checksums. Files are written
byte-for-byte reproducibly (the npz archive carries fixed timestamps), so retraining
with the same seed yields the same files.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx

from layerserve.proto.manifest import sha256_of, write_manifest
from layerserve.proto.repository_pb2 import (
    Block,
    FileRef,
    ModelManifest,
    Preprocessing,
    Provenance,
    SampleSet,
    ServingConfig,
    TensorSpec,
)
from layerserve.proto.tensors import ONNX_ELEM_TYPES

from .graph import NCHWC_NOTE
from .layers import WEIGHTED_OPS
from .split import SplitResult
from .stats import bytes_per_sample, flops_per_sample, parameter_count, quantized_outputs
from .weights import share_weights

VERSION = "1"
WEIGHTS_FILE = "blocks/weights.bin"
SERVING_DEFAULTS = ServingConfig(max_batch_size=64, dynamic_batching=True, max_queue_delay_us=500)


def serving_config(fixed_batch: int | None, merge_requests: bool = True) -> ServingConfig:
    """The defaults, or for a fixed-batch model Triton's "no batching": max_batch_size 0, nothing merged.
    ``merge_requests`` False: a dynamic batch whose rows change each other's answers, never merged."""
    if fixed_batch is None:
        config = ServingConfig(**{field.name: value for field, value in SERVING_DEFAULTS.ListFields()})
        config.dynamic_batching = merge_requests
        return config
    return ServingConfig(max_batch_size=0, dynamic_batching=False)


def tensor_spec(info: onnx.ValueInfoProto, quantization: tuple[float, int] | None = None) -> TensorSpec:
    """A manifest TensorSpec for an ONNX graph input/output (-1 for symbolic dimensions); ``quantization``
    ``(scale, zero point)`` for an integer output the graph quantized itself (stats.quantized_outputs)."""
    tensor_type = info.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    spec = TensorSpec(name=info.name, datatype=ONNX_ELEM_TYPES[tensor_type.elem_type], shape=shape)
    if quantization is not None:
        spec.quantization.scale, spec.quantization.zero_point = quantization
    return spec


def output_specs(graph: onnx.GraphProto) -> list[TensorSpec]:
    """The manifest TensorSpecs of a graph's outputs, with the quantization of those it quantized itself."""
    quantized = quantized_outputs(graph)
    return [tensor_spec(output, quantized.get(output.name)) for output in graph.output]


def _carries_batch(info: onnx.ValueInfoProto, fixed_batch: int | None) -> bool:
    """Whether a boundary tensor's first dimension is the batch: symbolic, or the fixed batch. A graph that
    squeezes its batch of 1 away answers ``[10]``, one sample of 10 values, not 10 samples."""
    dims = info.type.tensor_type.shape.dim
    return not dims or not dims[0].HasField("dim_value") or dims[0].dim_value == fixed_batch


def file_ref(version_dir: Path, path: Path) -> FileRef:
    """A FileRef for ``path``, relative to the version folder."""
    return FileRef(path=path.relative_to(version_dir).as_posix(), sha256=sha256_of(path), size_bytes=path.stat().st_size)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``images`` float32 [N,1,H,W] and ``labels`` int64 [N] as a reproducible .npz."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array, dtype in (("images", images, np.float32), ("labels", labels, np.int64)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_repository(
    root: Path,
    name: str,
    full: onnx.ModelProto,
    result: SplitResult,
    provenance: Provenance,
    description: str = "",
    labels: list[str] | None = None,
    samples: tuple[np.ndarray, np.ndarray, str] | None = None,
    version: str = VERSION,
    preprocessing: Preprocessing | None = None,
    fixed_batch: int | None = None,
    beside: str | None = None,
    merge_requests: bool = True,
    batched: bool = True,
) -> ModelManifest:
    """Write model, blocks, samples and manifest under ``root/name/version``; returns the manifest.

    ``fixed_batch``: the only batch size the graph takes (None: any), which decides the serving defaults, with
    ``merge_requests`` (False: dynamic batching off, for a graph whose rows change each other's answers).
    ``batched`` False: the input has no batch dimension (export/batch.py), so one sample is the whole input.
    ``beside``: the full graph is this file already in the version folder (a Triton repository's
    ``model.onnx``), left as it is; only ``blocks/`` and the manifest are (re)written next to it.
    """
    version_dir = Path(root) / name / version
    if beside is None:
        if version_dir.exists():
            shutil.rmtree(version_dir)
    else:
        shutil.rmtree(version_dir / "blocks", ignore_errors=True)
    (version_dir / "blocks").mkdir(parents=True)
    full_path = version_dir / (beside or "model.onnx")
    block_paths = [version_dir / "blocks" / f"{block.name}.onnx" for block in result.blocks]
    # Copies: the weights move out of the graphs written, not out of the caller's.
    graphs = [*zip((b.proto for b in result.blocks), block_paths, strict=True)]
    written = [(_copy(proto), path) for proto, path in ([] if beside else [(full, full_path)]) + graphs]
    weights_path = version_dir / WEIGHTS_FILE
    share_weights(written, weights_path)
    for proto, path in written:
        onnx.save(proto, str(path))
    manifest = ModelManifest(
        name=name,
        version=version,
        description=description,
        full_model=file_ref(version_dir, full_path),
        inputs=[tensor_spec(i) for i in full.graph.input],
        outputs=output_specs(full.graph),
        provenance=provenance,
        labels=labels or [],
        serving=serving_config(fixed_batch, merge_requests),
        input_bytes_per_sample=bytes_per_sample(full.graph.input[0], batched and _carries_batch(full.graph.input[0],
                                                                                                  fixed_batch)),
    )
    if preprocessing is not None:
        manifest.preprocessing.CopyFrom(preprocessing)
    if weights_path.stat().st_size:
        manifest.weights.CopyFrom(file_ref(version_dir, weights_path))
    else:
        weights_path.unlink()
    for block, path in zip(result.blocks, block_paths, strict=True):
        graph = block.proto.graph
        manifest.blocks.append(
            Block(
                index=block.index,
                name=block.name,
                file=file_ref(version_dir, path),
                inputs=[tensor_spec(i) for i in graph.input],
                outputs=output_specs(graph),
                parameters=parameter_count(block.proto),
                flops=flops_per_sample(block.proto),
                output_bytes_per_sample=sum(bytes_per_sample(o, batched and _carries_batch(o, fixed_batch))
                                            for o in graph.output),
                op_types=list(dict.fromkeys(node.op_type for node in graph.node)),
                first_node=block.first_node,
                last_node=block.last_node,
            )
        )
    heavy = heaviest_block_note(manifest, {block.name for block in result.blocks if _several_layers(block.proto)})
    if heavy:
        manifest.provenance.notes.append(heavy)
    if samples is not None:
        images, sample_labels, what = samples
        path = version_dir / "samples.npz"
        save_samples(path, images, sample_labels)
        manifest.samples.CopyFrom(SampleSet(file=file_ref(version_dir, path), count=len(sample_labels), description=what))
    write_manifest(manifest, version_dir)
    return manifest


# A block holding more of the model's FLOPs than this is worth a word: the split could not go finer there.
HEAVY_BLOCK_SHARE = 0.6


def heaviest_block_note(manifest: ModelManifest, several: set[str]) -> str:
    """A note when one of several blocks holds most of the FLOPs and could have been finer (a NASNet's cells
    each read the two before them; a detector's neck and head; a U-Net's decoder), else "". ``several``: the
    blocks holding more than one layer or a join of branches (:func:`_several_layers`); a block that is one
    heavy layer (a 1-D CNN's wide Conv1d) is as fine as a split goes, and saying otherwise misled."""
    total = sum(block.flops for block in manifest.blocks)
    if len(manifest.blocks) < 2 or not total:
        return ""
    heaviest = max(manifest.blocks, key=lambda block: block.flops)
    share = heaviest.flops / total
    if share <= HEAVY_BLOCK_SHARE or heaviest.name not in several:
        return ""
    why = ("ONNX Runtime's channel-blocked layout runs through it" if NCHWC_NOTE in manifest.provenance.notes
           else "a skip connection or a branch crosses every point inside it")
    return (f"block {heaviest.name} holds {share:.0%} of the FLOPs: no single tensor separates its layers ({why}); "
            "--granularity cut lists every cut there is")


def _several_layers(block: onnx.ModelProto) -> bool:
    """Whether ``block`` holds more than one weighted layer, or a node joining two tensors computed from its
    inputs (a skip connection or branches meeting): what a finer split would have separated. A tensor
    computed from the inputs' shape alone (jax2onnx's ``Reshape(x, Shape(x) ...)``) joins nothing."""
    dependent = {value.name for value in block.graph.input}
    shapes: set[str] = set()  # computed from the inputs' shapes only (Shape, then arithmetic): not a branch
    layers = 0
    for node in block.graph.node:
        reads = {name for name in node.input if name in dependent}
        if not reads:
            continue
        dependent.update(node.output)
        if node.op_type in ("Shape", "Size") or reads <= shapes:
            shapes.update(node.output)
            continue
        layers += node.op_type in WEIGHTED_OPS
        if len(reads - shapes) > 1 or layers > 1:
            return True
    return False
