"""PyTorch -> ONNX with the dynamo exporter: dynamic batch, named input and output.

Contract of :func:`export_onnx`: the returned ModelProto has exactly one input
(``input_name``, float32, first dimension the symbolic ``batch``) and one output
(``output_name``), carries the exporter's module-scope metadata on its nodes
(``pkg.torch.onnx.name_scopes``), and passes ``onnx.checker`` with full checks.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings

import numpy as np
import onnx
import torch
from torch import nn

INPUT_NAME = "x"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> onnx.ModelProto:
    """Export ``model`` (eval mode) for inputs ``[batch, *input_shape]``."""
    model.eval()
    example = (torch.zeros(2, *input_shape),)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=4096)
    # The exporter narrates every step on stdout and warns about its own internals; torch.export logs its
    # failures (a 30-line FX graph for a data-dependent ``if``) before raising what the caller reports in one line.
    exporter_log = logging.getLogger("torch")
    level = exporter_log.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.CRITICAL)
        try:
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={next(iter(_forward_arg_names(model))): {0: batch}},
                verbose=False,
            )
        finally:
            exporter_log.setLevel(level)
    proto = program.model_proto
    _strip_stack_traces(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


# Stack traces name absolute source paths: the exported bytes would depend on where
# the checkout lives. Module scopes (what block naming reads) stay.
_DROPPED_METADATA = ("pkg.torch.onnx.stack_trace",)


def _strip_stack_traces(proto: onnx.ModelProto) -> None:
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def _forward_arg_names(model: nn.Module) -> list[str]:
    return [name for name in inspect.signature(model.forward).parameters if name != "self"]


def onnx_logits(proto: onnx.ModelProto, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run ``proto`` on ONNX Runtime's CPU provider over ``images``, batch by batch."""
    from .runtime import cpu_session

    session = cpu_session(proto.SerializeToString())
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)
