"""Graphs exported with free height and width (``dynamic_axes`` past the batch), both exporters: ``layerserve
split`` refuses them in one line naming --input-shape, and splits them at the size it gives; the split model
answers as the original file does at that size, served."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from layerserve.cli.main import main
from layerserve.client import LayerClient
from layerserve.export.runtime import cpu_session
from layerserve.proto.manifest import read_manifest
from layerserve.server.launcher import ServerProcess

EXPORTS = ("torchscript", "dynamo")


def _free_size_cnn(path: Path, how: str) -> Path:
    """A fully convolutional CNN with a global pool (so any image size runs), exported with free H and W."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)),
    ).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if how == "dynamo":
            batch = torch.export.Dim("batch", max=64)
            height, width = (torch.export.Dim(name, min=8, max=512) for name in ("height", "width"))
            torch.onnx.export(net, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=True,
                              dynamic_shapes=({0: batch, 2: height, 3: width},))
        else:
            torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["image"],
                              output_names=["scores"], dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}})
    return path


@pytest.fixture(scope="module", params=EXPORTS)
def free_size(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _free_size_cnn(tmp_path_factory.mktemp("free") / f"free_{request.param}.onnx", request.param)


def test_split_refuses_free_image_sizes_in_one_line_naming_the_flag(free_size: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "layerserve.cli.main", "split", str(free_size), "--out",
                           str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "free dimensions past the batch" in lines[0] and "--input-shape 3,224,224" in lines[0]
    assert not (tmp_path / "m").exists()


def test_an_input_shape_that_contradicts_the_graph_is_refused(free_size: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["split", str(free_size), "--out", str(tmp_path / "m"), "--input-shape", "1,32,32"]) == 2
    assert "--input-shape 1,32,32 does not fit input" in capsys.readouterr().err
    assert main(["split", str(free_size), "--out", str(tmp_path / "m"), "--input-shape", "3,32"]) == 2


def test_split_at_the_given_size_serves_the_original_answers(free_size: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "free"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["split", str(free_size), "--out", str(out), "--input-shape", "3,40,48"]) == 0
    manifest = read_manifest(out / "1")
    assert list(manifest.inputs[0].shape) == [-1, 3, 40, 48]
    assert manifest.input_bytes_per_sample == 3 * 40 * 48 * 4
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 48)).astype(np.float32)
    original = cpu_session(str(free_size))
    want = original.run(None, {original.get_inputs()[0].name: x})[0]
    with ServerProcess(tmp_path / "models", extra_args=["--metrics-port", "-1"]) as server, \
            LayerClient(server.address) as client:
        for where in ("full", "server", "client"):
            got = client.infer_array("free", x) if where == "full" else client.chain("free", x, where=where).output
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
