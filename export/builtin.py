"""Building a built-in model's repository: train, export, check, split, write.

Contract of :func:`build`: trains architecture ``name`` on the fixed digits split,
exports it with the dynamo exporter, measures export parity (max |torch - ONNX|
logits over the held-out set, must be <= 1e-4) and held-out accuracy *from the ONNX
file*, splits at layer granularity, checks the chain on the held-out set
(<= 1e-5), and writes ``<root>/<name>/1``. Raises BuildError when a check fails,
so a bad model is never written.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerserve.proto.repository_pb2 import ModelManifest, Provenance

from . import datasets
from .architectures import architecture
from .graph import load_model
from .onnx_export import export_onnx, onnx_logits
from .parity import chain_check
from .preprocessing import image_preprocessing
from .repository import write_repository
from .split import split
from .train import TrainConfig, predict_logits, seed_everything, train
from .versions import tool_versions

EXPORT_TOLERANCE = 1e-4
# The built-ins' chains reproduce their graphs to float32 rounding; hold them to it.
CHAIN_TOLERANCE = 1e-5


class BuildError(RuntimeError):
    """A built-in model failed one of its checks (accuracy, export parity, chain parity)."""


@dataclass(frozen=True)
class BuildOptions:
    """What to build and how strictly to check it."""

    config: TrainConfig = TrainConfig()
    heldout_fraction: float = 0.25
    min_accuracy: float = 0.97
    show_progress: bool = True


def build(name: str, root: Path, options: BuildOptions = BuildOptions()) -> ModelManifest:
    """Train, export, check, split and write built-in model ``name`` under ``root``."""
    arch = architecture(name)
    if not arch.trainable:
        raise BuildError(f"{name} is a benchmark-only architecture; export it with `layerserve export`")
    data = datasets.digits_split(options.heldout_fraction, seed=options.config.seed)
    seed_everything(options.config.seed)
    model = arch.build()
    result = train(model, data.train_images, data.train_labels, options.config, options.show_progress)
    proto = export_onnx(model, arch.input_shape)
    torch_logits = predict_logits(model, data.heldout_images)
    ort_logits = onnx_logits(proto, data.heldout_images)
    export_diff = float(np.max(np.abs(torch_logits - ort_logits)))
    if not export_diff <= EXPORT_TOLERANCE:
        raise BuildError(f"{name}: ONNX logits differ from torch by {export_diff:.3g} > {EXPORT_TOLERANCE:g}")
    accuracy = float(np.mean(ort_logits.argmax(axis=1) == data.heldout_labels))
    if accuracy < options.min_accuracy:
        raise BuildError(f"{name}: held-out accuracy {accuracy:.4f} < {options.min_accuracy}")
    split_result = split(load_model(proto), "layer")
    report = chain_check(proto, split_result, data.heldout_images, CHAIN_TOLERANCE)
    provenance = Provenance(
        architecture=arch.description,
        dataset=datasets.DATASET_DESCRIPTION,
        seed=options.config.seed,
        heldout_accuracy=accuracy,
        export_max_abs_diff=export_diff,
        chain_max_abs_diff=report.max_abs_diff,
        chain_max_rel_diff=report.max_rel_diff,
        tool_versions=tool_versions(),
        created=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        source=f"layerserve train {name}",
        granularity=split_result.granularity,
        training_epochs=result.epochs,
        train_samples=len(data.train_labels),
        heldout_samples=len(data.heldout_labels),
        weights=f"trained by layerserve train {name} (seed {options.config.seed}, {result.epochs} epochs)",
    )
    what = f"held-out split ({options.heldout_fraction:.0%}, seed {options.config.seed}) of load_digits, 1x32x32"
    return write_repository(
        root,
        name,
        proto,
        split_result,
        provenance,
        description=arch.description,
        labels=list(datasets.CLASS_NAMES),
        samples=(data.heldout_images, data.heldout_labels, what),
        # Light ink on a dark ground, grey levels in [0, 1], as the digits were trained.
        preprocessing=image_preprocessing(arch.input_shape, background="dark"),
    )
