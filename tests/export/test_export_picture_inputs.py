"""Which inputs split reads as pictures, and how it sizes one without a batch dimension (proto/pictures.py,
export/batch.py), on files exported as users write these models."""

from __future__ import annotations

from pathlib import Path

import foreign_graphs
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from layerserve.export.graph import load_model
from layerserve.export.imported import per_sample_shape, split_to_repository


def test_a_signal_for_1d_convolutions_is_no_picture(tmp_path: Path) -> None:
    source = foreign_graphs.signal_conv1d(tmp_path / "ecg.onnx")
    manifest = split_to_repository(source, tmp_path / "repo" / "ecg")
    assert list(manifest.inputs[0].shape) == [-1, 12, 100]
    assert not manifest.HasField("preprocessing")  # not "resize to 12x100, L" for an ECG's twelve leads


def test_a_grey_sample_without_channel_axis_is_sized_as_one_channel(tmp_path: Path) -> None:
    model = load_model(foreign_graphs.grey_without_channel_axis(tmp_path / "grey.onnx"))
    assert model.batched and model.fixed_batch is None
    assert per_sample_shape(model.proto) == [1, 28, 28]


def test_an_input_without_batch_dimension_is_one_sample(tmp_path: Path) -> None:
    model = load_model(foreign_graphs.one_picture_hwc(tmp_path / "one.onnx"))
    assert not model.batched and model.fixed_batch == 32  # served fixed: requests are [32, 32, 3] as they are
    assert per_sample_shape(model.proto) == [32, 32, 3]
    note = model.notes[-1]
    assert note.startswith("batch none: the input [32,32,3] is one sample with no batch dimension (no output has "
                           "32 rows: [1,10]); each request is one [32,32,3] sample, never merged"), note



def test_a_fixed_batch_its_outputs_drop_is_still_a_batch(tmp_path: Path) -> None:
    """Only an input that reads as one picture is taken for one: a detector-like graph at a fixed batch of 4
    whose answer loses the batch (a score over everything) keeps "fixed at 4"."""
    weight = numpy_helper.from_array(np.full((2, 3, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["features"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceMax", ["features"], ["best"], keepdims=0)], "pooled",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [4, 3, 8, 8])],
        [helper.make_tensor_value_info("best", TensorProto.FLOAT, [])], initializer=[weight])
    path = tmp_path / "pooled.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = load_model(path)
    assert model.batched and model.fixed_batch == 4
    assert model.notes[-1].startswith("batch fixed at 4"), model.notes


def test_an_answer_without_batch_axis_is_sized_whole(tmp_path: Path) -> None:
    manifest = split_to_repository(foreign_graphs.batch_of_one_squeezed(tmp_path / "squeezed.onnx"),
                                   tmp_path / "repo" / "squeezed")
    assert list(manifest.inputs[0].shape) == [1, 3, 16, 16] and list(manifest.outputs[0].shape) == [10]
    assert manifest.input_bytes_per_sample == 3 * 16 * 16 * 4
    assert manifest.blocks[-1].output_bytes_per_sample == 10 * 4  # one sample of 10 values, not 10 samples
