"""Benchmark inputs: seeded requests for a served name, and the models the suite runs on.

``digits_cnn`` is the committed repository; ``resnet18_shaped`` (ResNet-18 layout,
3x224x224, random weights: speed only, never accuracy) is exported and split through
``layerserve.export`` into ``bench/out/models`` once and reused (never committed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layerserve.proto import grpc_service_pb2 as pb
from layerserve.proto import manifest as manifests
from layerserve.proto import tensors
from layerserve.proto.repository_pb2 import ModelManifest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "models"
BUILT = REPO_ROOT / "bench" / "out" / "models"


def model_root(name: str) -> Path:
    """The repository root serving ``name``: models/ for committed models, else built into bench/out/models.

    Building needs torch (``layerserve.export``); KeyError for an unknown architecture.
    """
    if (COMMITTED / name).is_dir():
        return COMMITTED
    if not (BUILT / name).is_dir() or not manifests.version_folders(BUILT / name):
        _build(name)
    return BUILT


def _build(name: str) -> None:
    import onnx

    from layerserve.export.architectures import architecture
    from layerserve.export.imported import split_to_repository
    from layerserve.export.onnx_export import export_onnx
    from layerserve.export.train import seed_everything

    arch = architecture(name)
    seed_everything(0)
    BUILT.mkdir(parents=True, exist_ok=True)
    source = BUILT.parent / f"{name}.onnx"
    onnx.save(export_onnx(arch.build(), arch.input_shape), str(source))
    split_to_repository(source, BUILT / name)


def manifest(root: Path, name: str) -> tuple[Path, ModelManifest]:
    """The latest version folder of ``name`` under ``root`` and its manifest."""
    folder = manifests.version_folders(root / name)[-1]
    return folder, manifests.read_manifest(folder)


def model_input(model: ModelManifest, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal float32 inputs of the full model, ``batch`` rows."""
    rng = np.random.default_rng(seed)
    return {
        spec.name: rng.standard_normal((batch, *[int(d) for d in spec.shape[1:]])).astype(np.float32)
        for spec in model.inputs
    }


def infer_request(name: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """A ModelInfer request for the served ``name`` with raw input contents."""
    request = pb.ModelInferRequest(model_name=name)
    for input_name, array in inputs.items():
        tensors.add_raw_input(request, input_name, array)
    return request
