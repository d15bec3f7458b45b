"""``layerserve export --model FILE.py:NAME``: a user's own PyTorch model, as docs/bring-your-own-cnn.md shows it,
and every refusal of export and split as one line with what to do."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from layerserve.cli.main import main
from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "docs" / "examples" / "my_cnn.py"


def _run(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def _example_model(seed: int):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("my_cnn_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    return module.MyCNN().eval()


@pytest.mark.slow
def test_the_documented_example_exports_with_module_names_and_pytorch_parity(tmp_path: Path) -> None:
    out = tmp_path / "models" / "my_cnn"
    assert _run("export", "--model", f"{EXAMPLE}:MyCNN", "--input-shape", "3,224,224", "--out", str(out)) == 0
    manifest = read_manifest(out / "1")
    assert [b.name for b in manifest.blocks] == ["00_stem", "01_layer1", "02_layer2", "03_layer3", "04_pool", "05_fc"]
    assert manifest.inputs[0].shape == [-1, 3, 224, 224]
    assert manifest.provenance.weights.startswith("untrained: seeded random initialisation (seed 0)")
    assert "untrained" in manifest.description
    assert manifest.preprocessing.crop_height == 224 and manifest.preprocessing.resize == 256
    assert list(manifest.preprocessing.mean) == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.slow
def test_weights_are_loaded_and_the_export_matches_pytorch(tmp_path: Path) -> None:
    import torch

    trained = _example_model(seed=7)
    weights = tmp_path / "my_cnn.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, weights)  # a checkpoint, as trainers write them
    out = tmp_path / "models" / "mine"
    code = _run("export", "--model", f"{EXAMPLE}:MyCNN", "--input-shape", "3,224,224", "--out", str(out),
                "--weights", str(weights), "--labels", ",".join(f"class{i}" for i in range(10)))
    assert code == 0
    manifest = read_manifest(out / "1")
    assert manifest.provenance.weights.startswith("state_dict my_cnn.pt sha256 ")
    assert list(manifest.labels)[:2] == ["class0", "class1"]
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = trained(torch.from_numpy(x)).numpy()
    (got,) = cpu_session(str(out / "1" / "model.onnx")).run(None, {"x": x})
    assert float(np.max(np.abs(got - expected))) <= 1e-4 * max(1.0, float(np.max(np.abs(expected))))
    current = x
    for block in manifest.blocks:
        (current,) = cpu_session(str(out / "1" / block.file.path)).run(None, {block.inputs[0].name: current})
    assert float(np.max(np.abs(current - expected))) <= 1e-4 * max(1.0, float(np.max(np.abs(expected))))


@pytest.mark.slow
def test_depth_two_opens_every_top_level_module(tmp_path: Path) -> None:
    out = tmp_path / "fine"
    assert _run("export", "--model", f"{EXAMPLE}:MyCNN", "--input-shape", "3,224,224", "--out", str(out),
                "--depth", "2") == 0
    names = [b.name.split("_", 1)[1] for b in read_manifest(out / "1").blocks]
    assert {"layer1_0", "layer1_1", "layer3_0", "layer3_1"} <= set(names), names


def _one_line_refusal(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_export_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    out = str(tmp_path / "x")
    line = _one_line_refusal(capsys, "export", "--model", f"{EXAMPLE}:Nope", "--input-shape", "3,224,224", "--out", out)
    assert "has no 'Nope' (it defines" in line and "MyCNN" in line
    line = _one_line_refusal(capsys, "export", "--model", f"{EXAMPLE}:conv_bn", "--input-shape", "3,224,224", "--out", out)
    assert "calling it without arguments failed" in line
    line = _one_line_refusal(capsys, "export", "--model", f"{EXAMPLE}:MyCNN", "--input-shape", "1,28,28", "--out", out)
    assert "fails on input [2,1,28,28]" in line and "check --input-shape" in line
    state = _example_model(seed=0).state_dict()
    state["bogus.weight"] = state.pop("fc.bias")
    state["fc.weight"] = torch.zeros(5, 32)
    torch.save(state, tmp_path / "wrong.pt")
    line = _one_line_refusal(capsys, "export", "--model", f"{EXAMPLE}:MyCNN", "--input-shape", "3,224,224",
                             "--out", out, "--weights", str(tmp_path / "wrong.pt"))
    assert "wrong.pt does not match" in line
    assert "missing keys fc.bias" in line and "unexpected keys bogus.weight" in line
    assert "shape mismatches fc.weight [5, 32] vs [10, 32]" in line
    line = _one_line_refusal(capsys, "export", "--model", "no_such_file.py:Net", "--input-shape", "3,8,8", "--out", out)
    assert "no such file no_such_file.py" in line
    line = _one_line_refusal(capsys, "export", "--out", out)
    assert "give either a built-in NAME or --model FILE.py:NAME" in line


def _graph(path: Path, nodes: list, inputs: list, outputs: list, opsets: list | None = None) -> Path:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=opsets or [helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_split_refusals_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    unknown_op = _graph(tmp_path / "custom.onnx", [helper.make_node("Frobnicate", ["image"], ["scores"], domain="acme")],
                        [image], [scores], [helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    line = _one_line_refusal(capsys, "split", str(unknown_op), "--out", str(tmp_path / "m1"))
    assert "ONNX Runtime cannot run the graph" in line and "Frobnicate" in line
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])
    tokens = _graph(tmp_path / "tokens.onnx", [helper.make_node("Cast", ["ids"], ["scores"], to=TensorProto.FLOAT)],
                    [ids], [scores])
    line = _one_line_refusal(capsys, "split", str(tokens), "--out", str(tmp_path / "m2"))
    assert "input 'ids' is INT64" in line and "one input is an image: floating point, or UINT8" in line
    second = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 3, 8, 8])
    two = _graph(tmp_path / "two.onnx", [helper.make_node("Add", ["image", "mask"], ["scores"])], [image, second], [scores])
    line = _one_line_refusal(capsys, "split", str(two), "--out", str(tmp_path / "m3"))
    assert "the graph has 2 inputs ('image', 'mask'); splitting needs exactly one image input (the server still " \
        "serves such a graph whole from a Triton model repository: <model>/config.pbtxt beside <model>/1/model.onnx)" \
        in line
    line = _one_line_refusal(capsys, "split", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "m4"))
    assert "missing.onnx: no such file" in line


def test_a_model_torch_export_cannot_trace_is_refused_with_its_reason(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """torch.onnx wraps torch.export's failure in a TorchExportError whose first line is "Failed to export the model
    with torch.export. \\x1b[96mThis is step 1/3\\x1b[0m ... Next steps:": the one line said only that, with the
    terminal's colour codes, after torch's own 30-line log for a data-dependent ``if``."""
    source = tmp_path / "branchy.py"
    source.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = nn.Conv2d(3, 4, 3)\n\n"
        "    def forward(self, x):\n        y = self.conv(x)\n"
        "        if bool(y.mean() > 0):\n            return y.flatten(1)\n        return -y.flatten(1)\n\n"
        "def scripted():\n    return torch.jit.script(Branchy())\n"
    )
    line = _one_line_refusal(capsys, "export", "--model", f"{source}:scripted", "--input-shape", "3,8,8",
                             "--out", str(tmp_path / "m"))
    assert "ValueError: Exporting a ScriptModule is not supported" in line and "\x1b[" not in line, line
    line = _one_line_refusal(capsys, "export", "--model", f"{source}:Branchy", "--input-shape", "3,8,8",
                             "--out", str(tmp_path / "m"))
    assert "step 1/3" not in line and "\x1b[" not in line and "data-dependent" in line, line
