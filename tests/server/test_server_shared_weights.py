"""Optimized copies share each weight once: the blocks' initializers point into the full graph's weights file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from layerserve.proto.manifest import read_manifest, version_folders
from layerserve.server import optimized, runtime, shared_weights

REPO = Path(__file__).resolve().parents[2]


def _external_places(graph: Path) -> dict[str, tuple[str, int, int]]:
    model = onnx.load(str(graph), load_external_data=False)
    places = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            places[tensor.name] = (info["location"], int(info.get("offset", 0)), int(info["length"]))
    return places


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    folder = version_folders(REPO / "models" / "digits_resnet")[-1]
    manifest = read_manifest(folder)
    sources = [folder / ref.path for ref in (manifest.full_model, *(block.file for block in manifest.blocks))]
    out = tmp_path_factory.mktemp("optimized")
    options = runtime.RuntimeOptions("cpu")
    assert optimized.prepare(out, sources, lambda: runtime.session_options(options)) == []
    return sources, [optimized.copy_path(out, source) for source in sources]


def test_every_block_weight_is_read_from_the_full_graphs_file(copies) -> None:
    _, (full, *blocks) = copies
    full_places = set(_external_places(full).values())
    full_file = {location for location, _, _ in full_places}
    assert len(full_file) == 1 and full_places
    block_places = [place for block in blocks for place in _external_places(block).values()]
    assert block_places, "digits_resnet's blocks have weights over the external-data threshold"
    assert set(block_places) <= full_places
    assert shared_weights.share_identical([full, *blocks]) == 0  # nothing left to share: idempotent


def test_the_copies_compute_what_the_originals_compute(copies) -> None:
    sources, made = copies
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    no_optimization = ort.SessionOptions()
    no_optimization.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    values = {"x": x}
    for source, copy in zip(sources[1:], made[1:], strict=True):  # the chain of blocks
        original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        shared = ort.InferenceSession(str(copy), no_optimization, providers=["CPUExecutionProvider"])
        feeds = {arg.name: values[arg.name] for arg in original.get_inputs()}
        want = original.run(None, feeds)
        got = shared.run(None, feeds)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        values = {out.name: value for out, value in zip(original.get_outputs(), want, strict=True)}
