"""A real, tiny model repository for server tests, built with onnx.helper.

``tiny_cnn``: x FP32 [-1,1,8,8] -> 00_stem (Conv 1->4, Relu) -> h1 [-1,4,8,8]
-> 01_stage1 (Conv 4->8 stride 2, Relu) -> h2 [-1,8,4,4]
-> 02_head (GlobalAveragePool, Flatten, Gemm 8->10) -> logits [-1,10].
The full graph is the three blocks' nodes in one graph, so running the blocks in
order reproduces it. The manifest goes through layerserve.proto.manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from layerserve.proto import manifest as manifests
from layerserve.proto.repository_pb2 import Block, FileRef, ModelManifest, TensorSpec

INPUT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class _Block:
    name: str
    nodes: list
    initializers: list
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[str, tuple[int, ...]]]
    flops: int


def _blocks(seed: int) -> list[_Block]:
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    stem = _Block(
        "00_stem",
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["h1"], name="relu1")],
        [weight("w1", 4, 1, 3, 3), weight("b1", 4)],
        [("x", (-1, 1, 8, 8))], [("h1", (-1, 4, 8, 8))], 2 * 4 * 9 * 64,
    )
    stage = _Block(
        "01_stage1",
        [helper.make_node("Conv", ["h1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
         helper.make_node("Relu", ["c2"], ["h2"], name="relu2")],
        [weight("w2", 8, 4, 3, 3), weight("b2", 8)],
        [("h1", (-1, 4, 8, 8))], [("h2", (-1, 8, 4, 4))], 2 * 8 * 36 * 16,
    )
    head = _Block(
        "02_head",
        [helper.make_node("GlobalAveragePool", ["h2"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc")],
        [weight("w3", 10, 8), weight("b3", 10)],
        [("h2", (-1, 8, 4, 4))], [("logits", (-1, 10))], 2 * 80,
    )
    return [stem, stage, head]


def _value(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    dims = ["batch" if d == -1 else d for d in shape]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _save(folder: Path, relative: str, name: str, nodes: list, inits: list, inputs: list, outputs: list) -> FileRef:
    graph = helper.make_graph(nodes, name, [_value(*i) for i in inputs], [_value(*o) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return FileRef(path=relative, sha256=manifests.sha256_of(path), size_bytes=path.stat().st_size)


def _spec(name: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name=name, datatype="FP32", shape=shape)


def build(root: Path, name: str = "tiny_cnn", version: str = "1", seed: int = 0,
          max_batch_size: int = 64, max_queue_delay_us: int = 2000) -> Path:
    """Write ``root/name/version`` (model.onnx, blocks/NN_*.onnx, manifest.json); returns the folder."""
    folder = Path(root) / name / version
    blocks = _blocks(seed)
    full = _save(folder, "model.onnx", name, [n for b in blocks for n in b.nodes],
                 [i for b in blocks for i in b.initializers], blocks[0].inputs, blocks[-1].outputs)
    manifest = ModelManifest(
        name=name, version=version, description="tiny test CNN built with onnx.helper", full_model=full,
        inputs=[_spec(*i) for i in blocks[0].inputs], outputs=[_spec(*o) for o in blocks[-1].outputs],
        labels=[str(d) for d in range(10)], input_bytes_per_sample=4 * int(np.prod(INPUT_SHAPE)),
    )
    manifest.serving.max_batch_size = max_batch_size
    manifest.serving.dynamic_batching = True
    manifest.serving.max_queue_delay_us = max_queue_delay_us
    for index, block in enumerate(blocks):
        ref = _save(folder, f"blocks/{block.name}.onnx", block.name, block.nodes, block.initializers,
                    block.inputs, block.outputs)
        out_elems = int(np.prod(block.outputs[0][1][1:]))
        manifest.blocks.append(Block(
            index=index, name=block.name, file=ref,
            inputs=[_spec(*i) for i in block.inputs], outputs=[_spec(*o) for o in block.outputs],
            parameters=sum(int(np.prod(i.dims)) for i in block.initializers), flops=block.flops,
            output_bytes_per_sample=4 * out_elems, op_types=list(dict.fromkeys(n.op_type for n in block.nodes)),
            first_node=block.nodes[0].name, last_node=block.nodes[-1].name,
        ))
    manifests.write_manifest(manifest, folder)
    return folder


def build_repository(root: Path) -> Path:
    """The test repository: tiny_cnn versions 1 and 2 (different weights), and broken_cnn whose
    block file no longer matches its manifest's sha256 (must be UNAVAILABLE while the rest serve)."""
    build(root, "tiny_cnn", "1", seed=1)
    build(root, "tiny_cnn", "2", seed=2)
    broken = build(root, "broken_cnn", "1", seed=3)
    path = broken / "blocks" / "01_stage1.onnx"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # same size, one weight byte changed
    path.write_bytes(bytes(data))
    return Path(root)
