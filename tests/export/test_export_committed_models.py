"""The committed repositories (models/digits_cnn/1, models/digits_resnet/1) are intact and accurate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest, sha256_of
from layerserve.proto.repository_pb2 import ModelManifest

MODELS = Path(__file__).resolve().parents[2] / "models"
NAMES = ["digits_cnn", "digits_resnet"]


def _load(name: str) -> tuple[Path, ModelManifest]:
    folder = MODELS / name / "1"
    return folder, read_manifest(folder)


@pytest.mark.parametrize("name", NAMES)
def test_checksums_and_sizes_match_the_manifest(name: str) -> None:
    folder, manifest = _load(name)
    refs = [manifest.full_model, manifest.samples.file, manifest.weights, *(block.file for block in manifest.blocks)]
    for ref in refs:
        path = folder / ref.path
        assert path.stat().st_size == ref.size_bytes, ref.path
        assert sha256_of(path) == ref.sha256, ref.path
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert on_disk == sorted([*(r.path for r in refs), "manifest.json"])


@pytest.mark.parametrize("name", NAMES)
def test_every_weight_is_on_disk_once(name: str) -> None:
    import onnx

    folder, manifest = _load(name)
    assert manifest.weights.path == "blocks/weights.bin"
    full = onnx.load(str(folder / manifest.full_model.path), load_external_data=False)
    external = [t for t in full.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    stored = sum(int(dict((e.key, e.value) for e in t.external_data)["length"]) for t in external)
    # The full graph's weights are the file's content, once (plus alignment padding under 4 KiB each).
    assert stored <= manifest.weights.size_bytes < stored + 4096 * len(external)
    for block in manifest.blocks:
        graph = onnx.load(str(folder / block.file.path), load_external_data=False).graph
        inline = [t.name for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= 1024]
        assert not inline, (block.name, inline)
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                assert dict((e.key, e.value) for e in tensor.external_data)["location"] == "weights.bin"


@pytest.mark.parametrize("name", NAMES)
def test_manifest_describes_a_layer_chain(name: str) -> None:
    _, manifest = _load(name)
    names = [block.name for block in manifest.blocks]
    assert names[0] == "00_stem" and names[-1].endswith("_head") and len(names) == 5
    assert [block.index for block in manifest.blocks] == list(range(5))
    assert manifest.blocks[0].inputs[0].name == manifest.inputs[0].name == "x"
    assert list(manifest.inputs[0].shape) == [-1, 1, 32, 32]
    for before, after in zip(manifest.blocks, manifest.blocks[1:], strict=False):
        assert before.outputs[0] == after.inputs[0]
        assert after.inputs[0].shape[0] == -1
    assert manifest.blocks[-1].outputs[0] == manifest.outputs[0]
    assert sum(block.parameters for block in manifest.blocks) > 50_000
    assert all(block.flops > 0 for block in manifest.blocks)
    p = manifest.provenance
    assert p.heldout_accuracy >= 0.97 and p.export_max_abs_diff <= 1e-4 and p.chain_max_abs_diff <= 1e-5
    assert p.heldout_samples == manifest.samples.count >= 0.2 * 1797


def test_digits_cnn_head_expects_the_last_stage_activation() -> None:
    _, manifest = _load("digits_cnn")
    head = manifest.blocks[-1]
    assert (head.name, head.inputs[0].name, list(head.inputs[0].shape)) == ("04_head", "03_stage3_out", [-1, 128, 2, 2])


@pytest.mark.parametrize("name", NAMES)
def test_chain_of_committed_blocks_equals_the_full_graph_and_is_accurate(name: str) -> None:
    folder, manifest = _load(name)
    with np.load(folder / manifest.samples.file.path) as samples:
        images, labels = samples["images"], samples["labels"]
    assert images.dtype == np.float32 and images.shape[1:] == (1, 32, 32) and labels.dtype == np.int64
    full = cpu_session(str(folder / manifest.full_model.path))
    (logits,) = full.run(None, {manifest.inputs[0].name: images})
    current = images
    for block in manifest.blocks:
        onnx.checker.check_model(str(folder / block.file.path), full_check=True)
        session = cpu_session(str(folder / block.file.path))
        assert [i.name for i in session.get_inputs()] == [t.name for t in block.inputs]
        (current,) = session.run(None, {block.inputs[0].name: current})
        assert list(current.shape[1:]) == list(block.outputs[0].shape[1:])
    assert float(np.max(np.abs(current - logits))) <= 1e-5
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(manifest.provenance.heldout_accuracy)
