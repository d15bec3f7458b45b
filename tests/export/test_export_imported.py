"""Foreign-shaped models (Inception- and DenseNet-like concat branches, TorchScript-era exporter) and the split CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from layerserve.cli.main import main
from layerserve.export.cuts import crossing_tensors, single_tensor_cuts
from layerserve.export.foreign import probe_input
from layerserve.export.graph import load_model
from layerserve.export.parity import chain_check
from layerserve.export.runtime import cpu_session
from layerserve.export.split import split
from layerserve.proto.manifest import read_manifest


def _foreign_model(path: Path) -> Path:
    """A small Inception/DenseNet-shaped CNN, exported the way model-zoo files were (TorchScript exporter)."""
    import torch
    from torch import nn

    class Inception(nn.Module):
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.b1 = nn.Conv2d(cin, 4, 1)
            self.b3 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
            self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 4, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(torch.cat([self.b1(x), self.b3(x), self.pool(x)], 1))

    class Dense(nn.Module):
        def __init__(self, cin: int, growth: int = 4, layers: int = 2) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Conv2d(cin + i * growth, growth, 3, padding=1) for i in range(layers))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = [x]
            for layer in self.layers:
                features.append(torch.relu(layer(torch.cat(features, 1))))
            return torch.cat(features, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.mixed = Inception(8)
            self.dense = Dense(12)
            self.classifier = nn.Linear(20, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.dense(self.mixed(self.stem(x)))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    net = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            keep_initializers_as_inputs=True, opset_version=13,
        )
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _foreign_model(tmp_path_factory.mktemp("foreign") / "inception_dense.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["cut", "layer"])
def test_split_cli_on_a_foreign_concat_model(foreign: Path, tmp_path: Path, granularity: str) -> None:
    out = tmp_path / "inception_dense"
    assert main(["split", str(foreign), "--out", str(out), "--granularity", granularity]) == 0
    manifest = read_manifest(out / "1")
    assert manifest.provenance.architecture == "imported"
    assert manifest.provenance.chain_max_abs_diff <= 1e-5
    names = [b.name for b in manifest.blocks]
    if granularity == "layer":
        assert [n.split("_", 1)[1] for n in names] == ["stem", "mixed", "dense", "classifier"]
    else:
        assert len(names) > 4
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    (expected,) = cpu_session(str(out / "1" / "model.onnx")).run(None, {"input": x})
    current = x
    for block in manifest.blocks:
        (current,) = cpu_session(str(out / "1" / block.file.path)).run(None, {block.inputs[0].name: current})
    assert float(np.max(np.abs(current - expected))) <= 1e-5


@pytest.mark.slow
def test_each_cut_of_a_foreign_model_splits_alone_with_parity(foreign: Path) -> None:
    model = load_model(foreign)
    cuts = single_tensor_cuts(model)
    # Inside the Inception and dense blocks every tensor has a sibling branch: no cut there.
    assert not any(cut.producer().name.startswith(("/mixed/b", "/mixed/pool", "/dense/layers")) for cut in cuts)
    _, x = probe_input(model.proto, 2)
    for cut in cuts:
        assert crossing_tensors(model, cut) == []
        assert chain_check(model.proto, split(model, at=[cut.name]), x).max_abs_diff <= 1e-5


def test_split_cli_refuses_a_file_that_is_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("hello, I am text\n")
    assert main(["split", str(path), "--out", str(tmp_path / "m")]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_export_then_split_cli_with_explicit_cuts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "digits_resnet.onnx"
    assert main(["export", "digits_resnet", "--out", str(source)]) == 0
    model = load_model(source)
    add = next(node for node in model.graph if node.op_type == "Add")
    inside = add.inputs[0].name  # the residual branch just before the skip joins it
    out = tmp_path / "resnet_at"
    assert main(["split", str(source), "--out", str(out), "--at", inside]) == 2
    assert f"tensor {inside!r} is not a single-tensor cut" in capsys.readouterr().err
    joined = add.outputs[0].name
    assert main(["split", str(source), "--out", str(out), "--at", joined, "--name", "resnet_at"]) == 0
    manifest = read_manifest(out / "1")
    assert manifest.name == "resnet_at" and manifest.provenance.granularity == "at"
    # Each block spans several modules, and its name says which (it said only the last: stage1, head).
    assert [b.name for b in manifest.blocks] == ["00_stem_to_stage1", "01_stage2_to_head"]
    assert manifest.blocks[1].inputs[0].name == "00_stem_to_stage1_out"


@pytest.mark.slow
def test_layer_granularity_without_scopes_gives_one_block_per_weighted_layer(foreign: Path) -> None:
    import onnx

    proto = onnx.load(str(foreign))
    for node in proto.graph.node:
        node.name = ""
    model = load_model(proto)
    result = split(model, "layer")
    assert [b.name for b in result.blocks] == ["00_conv", "01_conv", "02_conv", "03_gemm"]
    assert chain_check(model.proto, result, probe_input(model.proto, 2)[1]).max_abs_diff <= 1e-5
